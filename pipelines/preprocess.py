"""Preprocessing flow: ingest (raw -> data/interim) then the quality gate (data/interim -> data/processed).

The tasks call the same stage functions as the CLI and ``dvc.yaml`` (``soilmoisture.stages.ingest`` and
``soilmoisture.stages.validate``). A failing expectation suite fails the ``validate`` task, and with it the
flow: nothing downstream is published and the previous ``data/processed`` stays as it was.

Run it: ``python -m pipelines.preprocess --params params.yaml [--set data.source=remedhus]``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from soilmoisture import config, stages
from soilmoisture.config import Params
from soilmoisture.errors import SoilMoistureError

log = logging.getLogger(__name__)

# Offline by default: no telemetry (STACK-NOTES); a user's explicit setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

IO_RETRIES = 2
IO_RETRY_DELAY_S = 2.0


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient IO trouble only: a platform error (bad data, bad config, failed gate) will not heal."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # result not retrievable: treat as transient
        exc = e
    return not isinstance(exc, SoilMoistureError)


# Params are passed in memory and never cached: every run re-reads the files it depends on.
@task(name="ingest", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S, retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE)
def ingest_task(params: Params) -> dict[str, Any]:
    """Raw sources -> ``paths.interim`` (daily.parquet, probes.parquet, ingest_report.json); the summary and
    every excluded probe go to the flow run's log (Prefect's run logger, visible in the UI)."""
    report = stages.ingest(params)
    logger = get_run_logger()
    logger.info("ingest: %d probes x %d days (%d SSM days; %d frozen days removed, %d flagged SSM days, "
                "%d sigma0 outliers removed, %d probes excluded) -> %s", report["probes"], report["days"],
                report["ssm_days"], report["frozen_days_removed"], report["ssm_flagged_days"],
                report["sigma0_outliers_removed"], len(report["probes_excluded"]), params.paths.interim)
    for ex in report["probes_excluded"]:
        logger.warning("probe %s excluded: %s", ex["probe_id"], ex["reason"])
    return report


@task(name="validate", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S,
      retry_condition_fn=retry_on_io_error, cache_policy=NO_CACHE)
def validate_task(params: Params) -> dict[str, Any]:
    """Great Expectations gate; publishes ``paths.interim`` to ``paths.processed`` only when every check passes."""
    summary = stages.validate(params)
    get_run_logger().info("quality gate passed: %d expectations; data docs: %s",
                          summary["expectations_passed"], summary["data_docs"])
    return summary


@flow(name="preprocess", log_prints=False)
def preprocess_flow(params_path: str = "params.yaml", overrides: dict | None = None,
                    skip_ingest: bool = False) -> dict[str, Any]:
    """Ingest then validate/publish; returns the gate summary. ``skip_ingest`` re-checks an existing interim."""
    params = config.load(params_path, overrides)   # fails before any task on a bad parameter
    if not skip_ingest:
        ingest_task(params)
    # Task calls in a flow run sequentially and raise on failure: a failed ingest never reaches the gate.
    return validate_task(params)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.preprocess``: one flow run; platform errors print one line, exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.preprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (repeatable)")
    parser.add_argument("--skip-ingest", action="store_true", help="validate the existing data/interim only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = dict(config.parse_override(o) for o in args.overrides)
        preprocess_flow(args.params, overrides or None, skip_ingest=args.skip_ingest)
    except SoilMoistureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from soilmoisture.cli import os_error_line

        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
