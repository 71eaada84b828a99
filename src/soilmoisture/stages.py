"""One function per pipeline stage. The CLI (`soilmoisture <stage>`), `dvc.yaml` and the Prefect
flows in `pipelines/` are thin callers of these. Each takes the parsed :class:`Params` and reads
only its own sections; heavy libraries are imported inside, so `soilmoisture --help` stays fast.
"""
from __future__ import annotations

import logging
from typing import Any

from soilmoisture.config import Params

log = logging.getLogger(__name__)


def _preflight(params: Params, stage: str) -> None:
    """Fail before any work when a backend the stage needs (MLflow, Optuna storage) does not answer."""
    from soilmoisture.backends import preflight

    preflight(params, stage)


def simulate(params: Params) -> None:
    """Generate the simulated study area under ``paths.raw`` (and its truth under ``paths.truth``)."""
    from soilmoisture.simulate import run

    run(params)


def ingest(params: Params) -> dict[str, Any]:
    """Read every raw source and write the harmonised tables to ``paths.interim`` (not yet checked).

    Returns the ingest report (the counts of ``ingest_report.json``)."""
    from soilmoisture.harmonise import run

    return run(params)


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
    """Leave-one-probe-out (or known-site) protocol, every fold an MLflow child run; final model registered.

    With ``model.from_tuning: true`` the tuned keys of ``model`` come from ``tune.best_params_path``.
    """
    from soilmoisture.protocol.run import run

    _preflight(params, "train")
    if params.model.from_tuning:
        from soilmoisture.protocol.tune import apply_best

        params = apply_best(params)
    run_id = run(params)
    _write_train_metrics(params, run_id)
    return run_id


def _write_train_metrics(params: Params, run_id: str) -> None:
    """``reports/train/metrics.json``: the parent run's aggregate metrics, for `dvc metrics show/diff`."""
    import json
    import os

    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    tracking.configure(params)
    run = MlflowClient().get_run(run_id)
    out = params.path(params.paths.reports) / "train" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"run_id": run_id, "variant": params.variant.name, "data_source": params.data.source,
           "mode": params.protocol.mode, "metrics": dict(sorted(run.data.metrics.items()))}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)


def tune(params: Params) -> dict[str, Any]:
    """Optuna search (thesis 3.3.1) on LOO validation probes; writes ``tune.best_params_path`` and a summary."""
    from soilmoisture.protocol.tune import run

    _preflight(params, "tune")
    return run(params)


def map_(params: Params) -> Any:
    """Daily SSM maps (COG + quicklooks) of ``map.region`` with the registered model; validated on the simulated area."""
    from soilmoisture.mapping import run

    _preflight(params, "map")
    return run(params)


maps = map_  # the CLI calls stages.<name>; "map" would shadow the builtin, so the stage is map_ / maps


def evaluate(params: Params) -> Any:
    """Model vs ECV_SM vs CSM vs baselines for the latest protocol run: tables, figures, HTML report."""
    from soilmoisture.evaluate.stage import run

    return run(params)
