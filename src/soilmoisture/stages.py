"""One function per pipeline stage. The CLI (`soilmoisture <stage>`), `dvc.yaml` and the Prefect
flows in `pipelines/` are thin callers of these. Each takes the parsed :class:`Params` and reads
only its own sections; heavy libraries are imported inside, so `soilmoisture --help` stays fast.
"""
from __future__ import annotations

import logging
from typing import Any

from soilmoisture.config import Params

log = logging.getLogger(__name__)


def simulate(params: Params) -> None:
    """Generate the simulated study area under ``paths.raw`` (and its truth under ``paths.truth``)."""
    from soilmoisture.simulate import run

    run(params)


def ingest(params: Params) -> None:
    """Read every raw source and write the harmonised tables to ``paths.interim`` (not yet checked)."""
    from soilmoisture.harmonise import run

    run(params)


def validate(params: Params) -> dict[str, Any]:
    """Run the Great Expectations gate on ``paths.interim``; publish to ``paths.processed`` only on success.

    Returns the gate's summary (counts, per-expectation results, data-docs path); raises QualityGateError.
    """
    from soilmoisture.quality.gate import run

    return run(params)


def describe(params: Params) -> None:
    """The thesis' exploratory figures (3.2.6) from the processed table, into ``paths.reports``/describe."""
    from soilmoisture.evaluate.describe import run

    run(params)


def train(params: Params) -> Any:
    """Leave-one-probe-out (or known-site) protocol, every fold an MLflow child run; final model registered."""
    from soilmoisture.protocol.run import run

    return run(params)
