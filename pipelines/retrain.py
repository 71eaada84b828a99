"""Scheduled retraining flow: landing scenes -> gate -> challenger -> champion/challenger decision -> promotion.

Each step of :mod:`soilmoisture.retrain` is a task; the IO steps (scan, stage, compare, commit, promote)
retry ``retrain.io_retries`` times, but a platform error (bad data, failed gate, bad config) is never
retried. Every run leaves one MLflow run of kind ``retrain`` (experiment ``soilmoisture/<source>/retrain``)
with the scene list, each step's duration, the linked quality and protocol runs, the decision and its
numbers. Rules and limits: docs/retrain.md.

Run once:   ``python -m pipelines.retrain run [--params params.yaml] [--set key=value ...]``
Serve:      ``python -m pipelines.retrain serve``  (deployment ``retrain/<retrain.deployment>``, cron
            ``retrain.cron``; blocks, polls the Prefect API and runs the flow on schedule)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines.preprocess import retry_on_io_error
from soilmoisture import config, retrain, tracking
from soilmoisture.config import Params
from soilmoisture.errors import DataError, QualityGateError, SoilMoistureError

log = logging.getLogger(__name__)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

FLOW_NAME = "retrain"


def _io(fn: Any, name: str) -> Any:
    """A task that retries transient IO trouble (the retry count is set per run from ``retrain.io_retries``)."""
    return task(fn, name=name, retry_condition_fn=retry_on_io_error, cache_policy=NO_CACHE)


def _plain(fn: Any, name: str) -> Any:
    return task(fn, name=name, cache_policy=NO_CACHE)


def _scan(params: Params) -> list[retrain.LandingFile]:
    """Classify the landing folder's files (complete scenes are accepted, the rest waits)."""
    return retrain.scan_landing(params.path(params.paths.landing), params.path(params.paths.raw),
                                params.retrain.min_age_seconds)


scan_task = _io(_scan, "scan-landing")
stage_task = _io(retrain.stage, "stage")
gate_task = _io(retrain.ingest_and_gate, "ingest-and-gate")           # IO trouble retries; bad data fails at once
train_task = _plain(retrain.train_challenger, "train-challenger")
compare_task = _io(retrain.compare, "compare")
commit_task = _io(retrain.commit_data, "commit-data")
promote_task = _io(retrain.promote, "promote")


def _with_retries(t: Any, params: Params) -> Any:
    return t.with_options(retries=params.retrain.io_retries, retry_delay_seconds=params.retrain.io_retry_delay_seconds)


@flow(name=FLOW_NAME, log_prints=False)
def retrain_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict[str, Any]:
    """One retraining round; returns the decision record (also logged to MLflow)."""
    logger = get_run_logger()
    params_file = Path(params_path).resolve()
    params = config.load(params_file, overrides)      # a bad parameter stops before any work
    try:
        with retrain.exclusive(params.root):
            return _retrain(params, params_file)
    except retrain.Busy as e:
        logger.warning("%s: this run does nothing", e)
        return {"decision": "busy", "reason": str(e)}


def _retrain(params: Params, params_file: Path) -> dict[str, Any]:
    """The steps of one round, under the project's retraining lock."""
    logger = get_run_logger()
    retrain.remove_stale_staging(params)
    tag = retrain.run_tag()
    rid = retrain.start_record(params, tag)
    detail: dict[str, Any] = {"run": tag, "margin_mae": params.retrain.margin_mae}
    st = None
    try:
        t0 = time.perf_counter()
        files = _with_retries(scan_task, params)(params)
        retrain.log_scenes(params, rid, files)
        retrain.drop_duplicates(files)
        landing = params.path(params.paths.landing)
        bad = [f for f in files if f.status == "rejected"]       # e.g. zero-filled: that file alone goes
        if bad:
            retrain.set_aside(landing, bad, tag)
            detail["set_aside"] = {f.rel: f.reason for f in bad}
        accepted = [f for f in files if f.status == "accepted"]
        retrain.log_step(params, rid, "scan", time.perf_counter() - t0)
        detail["scenes"] = [f.rel for f in accepted]
        detail["left_in_landing"] = [f.rel for f in files if f.status == "incomplete"]
        if not accepted:
            logger.info("no new complete scenes in %s (%d left for a later run): nothing to do",
                        params.paths.landing, len(detail["left_in_landing"]))
            retrain.finish_record(params, rid, "no_new_scenes", detail)
            return {"decision": "no_new_scenes", **detail}

        data_end = retrain.new_data_end(params.data.end, accepted)
        detail["data_end"] = data_end
        t0 = time.perf_counter()
        st = _with_retries(stage_task, params)(params, accepted, tag)
        sparams = retrain.staged_params(params, st, data_end)
        while True:
            try:
                summary = _with_retries(gate_task, params)(sparams)
                break
            except (DataError, QualityGateError) as e:
                one = retrain.staged_scene(st, accepted, e.path) if isinstance(e, DataError) else None
                if one is not None and len(accepted) > 1:
                    # The reader named one new scene: set it aside alone, ingest the others again.
                    retrain.set_aside(landing, [one], tag, e.problem)
                    detail.setdefault("set_aside", {})[one.rel] = e.problem
                    retrain.unstage(st, one)
                    accepted = [f for f in accepted if f is not one]
                    detail["scenes"] = [f.rel for f in accepted]
                    data_end = detail["data_end"] = retrain.new_data_end(params.data.end, accepted)
                    sparams = retrain.staged_params(params, st, data_end)
                    continue
                where = retrain.reject(landing, accepted, tag, str(e))
                detail["rejected_to"] = str(where)
                retrain.finish_record(params, rid, "rejected", {**detail, "reason": str(e)}, failed=str(e))
                raise
        rep = summary.get("ingest_report") or {}
        logger.info("ingest of the staged data: %s probes x %s days, %s impossible sigma0 masked, %d probes excluded",
                    rep.get("probes"), rep.get("days"), (rep.get("sigma0_impossible_masked") or {}).get("probe_pixels"),
                    len(rep.get("probes_excluded") or []))
        retrain.log_step(params, rid, "gate", time.perf_counter() - t0,
                         **{tracking.TAG_QUALITY_RUN: str(summary.get("mlflow_run_id", "-"))})

        champion = retrain.current_champion(params)
        t0 = time.perf_counter()
        challenger_run = train_task(sparams, params.data.end)
        version = retrain.registered_version(params, challenger_run)
        retrain.log_step(params, rid, "train", time.perf_counter() - t0,
                         **{tracking.TAG_CHALLENGER_RUN: challenger_run,
                            tracking.TAG_CHAMPION_RUN: champion.run_id if champion else "-"})

        t0 = time.perf_counter()
        comp = _with_retries(compare_task, params)(params, champion, challenger_run, sparams)
        decision = retrain.decide(comp.champion_mae, comp.challenger_mae, params.retrain.margin_mae)
        detail.update(champion_version=champion.version if champion else None, challenger_version=version,
                      champion_mae=comp.champion_mae, challenger_mae=comp.challenger_mae,
                      improvement=decision.improvement, n_matched_probes=comp.n_probes,
                      n_matched_days=comp.n_days, comparison=comp.note, reason=decision.reason,
                      old_days=comp.old_days)
        retrain.log_step(params, rid, "compare", time.perf_counter() - t0)
        logger.info("decision: %s (%s)", decision.outcome, decision.reason)

        t0 = time.perf_counter()
        detail.update(_with_retries(commit_task, params)(params, params_file, st, data_end, tag, accepted))
        retrain.log_step(params, rid, "commit", time.perf_counter() - t0)
        if decision.promote:
            _with_retries(promote_task, params)(params, version)
        retrain.tag_version(params, version, decision.outcome)
        retrain.finish_record(params, rid, decision.outcome, detail)
        return {"decision": decision.outcome, **detail}
    except BaseException as e:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking.tracking_uri(params)).get_run(rid)
        if run.info.status == "RUNNING":   # not already closed as "rejected"
            retrain.finish_record(params, rid, "failed", detail, failed=f"{type(e).__name__}: {e}")
        raise
    finally:
        if st is not None:
            retrain.cleanup(st)


def build_deployment(params_path: str | Path = "params.yaml", overrides: dict | None = None) -> Any:
    """The scheduled deployment ``retrain/<retrain.deployment>`` (cron ``retrain.cron``, absolute params path)."""
    path = Path(params_path).resolve()
    params = config.load(path, overrides)
    return retrain_flow.to_deployment(
        name=params.retrain.deployment, cron=params.retrain.cron, concurrency_limit=1,
        parameters={"params_path": str(path), "overrides": overrides or None},
        description="Retrain on new Sentinel scenes from the landing folder; champion/challenger promotion "
                    "(docs/retrain.md)", tags=["soilmoisture", "retrain"])


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.retrain run|serve``; platform errors print one line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "serve"], help="run once now, or serve the scheduled deployment")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = dict(config.parse_override(o) for o in args.overrides) or None
        if args.command == "run":
            result = retrain_flow(args.params, overrides)
            print(f"retrain: {result['decision']}")
        else:
            from prefect import serve

            serve(build_deployment(args.params, overrides))
    except SoilMoistureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
