"""The quality gate: validate ``paths.interim`` with Great Expectations; publish to ``paths.processed`` on success.

Fail closed: the tables reach ``data/processed`` (and so any model) only when every expectation passes.
Publishing writes a temporary folder beside ``processed/`` and swaps it in, so a failure at any point
leaves the previous ``processed/`` untouched. The GX project is a *file* context rooted at
``<project root>/expectations`` (suites, validation definitions and the checkpoint are committed; results
and data docs live in ``expectations/gx/uncommitted/``, git-ignored by GX's own ``.gitignore``).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from soilmoisture.config import Params
from soilmoisture.errors import DataError, QualityGateError
from soilmoisture.outputs import ensure_writable, verify
from soilmoisture.quality.docs import make_offline
from soilmoisture.quality.suites import (SUITES, GateSettings, build_checks, frames_to_validate, summarise,
                                         to_suites)

log = logging.getLogger(__name__)

DAILY_FILE = "daily.parquet"
PROBES_FILE = "probes.parquet"
INGEST_REPORT_FILE = "ingest_report.json"
SUMMARY_FILE = "quality_summary.json"
DATASOURCE = "interim"
BATCH_DEFINITION = "whole_table"
CHECKPOINT = "quality_gate"


def settings_from_params(params: Params) -> GateSettings:
    """The values the gate reads from ``data``, ``ingest`` and ``quality``."""
    q = params.quality
    return GateSettings(start=params.data.start, end=params.data.end, sigma0_max=params.ingest.sigma0_max,
                        ssm_flag_threshold=q.ssm_flag_threshold, ssm_flag_mostly=q.ssm_flag_mostly,
                        ecv_sm_max=q.ecv_sm_max, drop_flagged_ssm=q.drop_flagged_ssm)


# --- Great Expectations context ------------------------------------------------------------------
def _quiet_gx() -> None:
    """GX logs its whole configuration at INFO on every call; the gate reports what matters itself."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def open_context(context_root: Path) -> Any:
    """The GX file context under ``context_root/gx`` (created if absent), progress bars off (quiet)."""
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context_root = Path(context_root)
    context_root.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(context_root))
    bars = ctx.variables.progress_bars
    if isinstance(bars, dict):  # as read back from great_expectations.yml
        bars = ProgressBarsConfig(**bars)
    if bars is None or bars.globally is not False or bars.metric_calculations is not False:
        # STACK-NOTES: GX draws tqdm bars for every metric unless told not to; saved once in the yml.
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        ctx.variables.save()
    return ctx


def _get_or_add(getter: Any, adder: Any, name: str) -> Any:
    try:
        return getter(name)
    except (LookupError, ValueError, KeyError) as e:  # GX raises different classes for "not found"
        log.debug("creating GX object %s (%s)", name, type(e).__name__)
        return adder(name)


def register(ctx: Any, suites: dict[str, Any]) -> dict[str, Any]:
    """Suites, one dataframe asset and validation definition per table, idempotently; returns name -> definition.

    ``add_or_update`` with deterministic expectation ids keeps the committed JSON stable across re-runs;
    the data source and assets are fetched when they exist so their ids do not change either.
    """
    import great_expectations as gx

    try:
        ds = ctx.data_sources.get(DATASOURCE)
    except (KeyError, ValueError, LookupError):
        ds = ctx.data_sources.add_pandas(DATASOURCE)
    definitions = {}
    for name in SUITES:
        wanted = [e.id for e in suites[name].expectations]
        suite = ctx.suites.add_or_update(suites[name])
        if [e.id for e in suite.expectations] != wanted:
            # A brand-new suite gets random ids from GX; put the deterministic ones back (no churn later).
            for exp, eid in zip(suite.expectations, wanted):
                exp.id = eid
            suite = ctx.suites.add_or_update(suite)
        asset = _get_or_add(ds.get_asset, ds.add_dataframe_asset, name)
        batch = _get_or_add(asset.get_batch_definition, asset.add_batch_definition_whole_dataframe, BATCH_DEFINITION)
        definitions[name] = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}_gate", data=batch, suite=suite))
    return definitions


def write_suites(context_root: Path, settings: GateSettings) -> Path:
    """Create/refresh the committed GX project (suites, assets, validation definitions) without validating.

    Returns ``context_root/gx``. Used to regenerate ``expectations/`` after a parameter change.
    """
    ctx = open_context(context_root)
    _checkpoint(ctx, register(ctx, to_suites(build_checks(settings))))
    return Path(context_root) / "gx"


def _checkpoint(ctx: Any, definitions: dict[str, Any]) -> Any:
    """The gate's checkpoint (one per project; it records which definitions a run used)."""
    import great_expectations as gx

    return ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=CHECKPOINT, validation_definitions=list(definitions.values()),
        actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20}))


def docs_index(context_root: Path) -> Path:
    """Where GX writes the data docs (HTML) of this context."""
    return Path(context_root) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def validate_tables(daily: pd.DataFrame, probes: pd.DataFrame, settings: GateSettings,
                    context_root: Path) -> dict[str, Any]:
    """Run every suite on the tables (nothing is written outside ``context_root``); returns the summary.

    Data docs are rebuilt on every run, pass or fail; the summary's ``data_docs`` names their index page.
    """
    _quiet_gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    checks = build_checks(settings)
    frames = frames_to_validate(daily, probes, settings)
    ctx = open_context(context_root)
    definitions = register(ctx, to_suites(checks))
    checkpoint = _checkpoint(ctx, definitions)
    run_id = RunIdentifier(run_name="quality_gate", run_time=datetime.datetime.now(datetime.timezone.utc))
    raw: dict[str, dict[str, Any]] = {}
    for name, vd in definitions.items():
        # Each table is its own batch: validation definitions run separately, docs are built once below.
        result = vd.run(batch_parameters={"dataframe": frames[name]}, checkpoint_id=checkpoint.id, run_id=run_id,
                        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20})
        for r in result.results:
            info = r.exception_info or {}
            exc = info.get("exception_message") if info.get("raised_exception") else None
            raw[r.expectation_config.meta["check"]] = {"success": bool(r.success), "result": dict(r.result or {}),
                                                       "exception": exc}
    # Render only this run's pages (plus the index): rebuilding every stored result grows with history.
    store = ctx.validation_results_store
    keys = [k for k in store.list_keys() if getattr(k, "run_id", None) == run_id]
    ctx.build_data_docs(resource_identifiers=keys + [ExpectationSuiteIdentifier(name=n) for n in SUITES])
    # GX's pages load their CSS/JS from CDNs and build the index with jQuery: make them work offline.
    gx_dir = Path(context_root) / "gx"
    make_offline(docs_index(context_root).parent, gx_dir / "uncommitted" / "validations", list(SUITES))
    summary = summarise(checks, raw, frames)
    summary["data_docs"] = str(docs_index(context_root))
    return summary


# --- file IO ---------------------------------------------------------------------------------------
def read_interim(interim: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any] | None]:
    """The interim daily and probes tables and the ingest report (None if absent)."""
    tables = []
    for name in (DAILY_FILE, PROBES_FILE):
        path = interim / name
        if not path.is_file():
            raise DataError(path, "interim table not found; run `soilmoisture ingest` first")
        try:
            tables.append(pd.read_parquet(path))
        except Exception as e:  # pyarrow raises many types for a damaged file
            raise DataError(path, f"cannot read parquet: {e}") from None
    report_path = interim / INGEST_REPORT_FILE
    report = None
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(report_path, f"is not valid JSON: {e}") from None
    # The report is ingest's manifest: tables that are not the ones it lists are a mixed set of two runs.
    verify(interim, report, INGEST_REPORT_FILE)
    return tables[0], tables[1], report


def _report_count(report: dict[str, Any] | None, key: str) -> int | None:
    """An integer count from the ingest report (top level or under 'counts'), if it gives one."""
    if not report:
        return None
    for node in (report, report.get("counts") or {}):
        if isinstance(node, dict) and isinstance(node.get(key), (int, float)) and not isinstance(node.get(key), bool):
            return int(node[key])
    return None


def data_rule_counts(daily: pd.DataFrame, report: dict[str, Any] | None) -> dict[str, int]:
    """Counts reported to MLflow: flagged SSM days, frozen days and sigma0 outliers removed (report wins)."""
    def col_sum(col: str) -> int:
        return int(daily[col].fillna(False).astype(bool).sum()) if col in daily else 0

    flagged = int((daily["ssm_flag_gt50"].fillna(False).astype(bool) & daily["ssm"].notna()).sum()) \
        if {"ssm_flag_gt50", "ssm"} <= set(daily.columns) else 0
    frozen = _report_count(report, "frozen_days_removed")
    outliers = _report_count(report, "sigma0_outliers_removed")
    return {"flagged_ssm_days": flagged,
            "frozen_days_removed": frozen if frozen is not None else col_sum("frozen"),
            "sigma0_outliers_removed": outliers if outliers is not None else col_sum("sigma0_outlier")}


def drop_flagged(daily: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A copy with flagged SSM set to NaN (quality.drop_flagged_ssm) and how many values were dropped."""
    mask = daily["ssm_flag_gt50"].fillna(False).astype(bool) & daily["ssm"].notna()
    out = daily.copy()
    out.loc[mask, "ssm"] = float("nan")
    return out, int(mask.sum())


def publish(processed: Path, files: dict[str, Path | pd.DataFrame | bytes]) -> None:
    """Replace ``processed/`` by a folder holding exactly ``files`` (name -> source file, frame or bytes).

    Everything is written into a temporary folder beside ``processed`` first and swapped in with two
    renames; if anything fails the previous ``processed/`` is restored (or was never touched).
    """
    processed = Path(processed)
    processed.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = processed.parent / f".{processed.name}.tmp-{tag}"
    old = processed.parent / f".{processed.name}.old-{tag}"
    try:
        tmp.mkdir()
        for name, src in files.items():
            dst = tmp / name
            if isinstance(src, pd.DataFrame):
                src.to_parquet(dst, index=False)
            elif isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)  # byte copy: unchanged tables keep their hash
        if processed.exists():
            os.replace(processed, old)
        try:
            os.replace(tmp, processed)
        except OSError:
            if old.exists():
                os.replace(old, processed)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_and_publish(interim: Path, processed: Path, context_root: Path, settings: GateSettings) -> dict[str, Any]:
    """Validate ``interim`` and, only if every expectation passes, publish it to ``processed``.

    Returns the summary (counts, per-check results, data-docs path). Raises QualityGateError naming each
    failing check with counts and example rows; ``processed`` is then left exactly as it was.
    """
    interim, processed = Path(interim), Path(processed)
    daily, probes, report = read_interim(interim)
    summary = validate_tables(daily, probes, settings, context_root)
    summary.update(data_rule_counts(daily, report))
    summary["ssm_dropped"] = 0
    if not summary["success"]:
        for line in summary["failures"]:
            log.error("quality gate: %s", line)
        log.error("quality gate failed: %d of %d expectations; data docs: %s", summary["expectations_failed"],
                  summary["expectations_failed"] + summary["expectations_passed"], summary["data_docs"])
        err = QualityGateError(summary["failures"], summary["data_docs"])
        err.summary = summary  # type: ignore[attr-defined]  # read by run() for MLflow
        raise err
    files: dict[str, Path | pd.DataFrame | bytes] = {DAILY_FILE: interim / DAILY_FILE, PROBES_FILE: interim / PROBES_FILE}
    if settings.drop_flagged_ssm:
        # DESIGN data rules: questionable SSM (> threshold) is flagged and reported; this parameter drops it.
        files[DAILY_FILE], summary["ssm_dropped"] = drop_flagged(daily)
    if report is not None:
        files[INGEST_REPORT_FILE] = interim / INGEST_REPORT_FILE
    # The published summary omits machine-specific paths so the folder's hash depends on the data only.
    published = {k: v for k, v in summary.items() if k != "data_docs"}
    files[SUMMARY_FILE] = (json.dumps(published, indent=2, sort_keys=True, default=str) + "\n").encode()
    publish(processed, files)
    log.info("quality gate passed (%d expectations); published %s; data docs: %s", summary["expectations_passed"],
             processed, summary["data_docs"])
    return summary


# --- stage entry point -----------------------------------------------------------------------------
def run(params: Params, context_root: Path | None = None) -> dict[str, Any]:
    """Stage ``validate``: gate ``paths.interim`` into ``paths.processed``, logged to MLflow (kind=quality).

    ``context_root`` defaults to ``<project root>/expectations``; tests pass a temporary copy.
    """
    import mlflow

    from soilmoisture import tracking

    context_root = Path(context_root) if context_root is not None else params.root / "expectations"
    # publish() writes beside paths.processed: a read-only folder fails here, before the checks run.
    ensure_writable(params.path(params.paths.processed).parent, "the folder of paths.processed")
    settings = settings_from_params(params)
    experiment_id = tracking.ensure_experiment(params, "quality")
    with mlflow.start_run(experiment_id=experiment_id, run_name="quality-gate") as active:
        mlflow.set_tags({tracking.TAG_KIND: "quality", tracking.TAG_SOURCE: params.data.source,
                         tracking.TAG_GIT_COMMIT: tracking.git_commit(params.root)})
        mlflow.log_params({"data.start": settings.start, "data.end": settings.end,
                           "ingest.sigma0_max": settings.sigma0_max,
                           "quality.ssm_flag_threshold": settings.ssm_flag_threshold,
                           "quality.ssm_flag_mostly": settings.ssm_flag_mostly,
                           "quality.ecv_sm_max": settings.ecv_sm_max,
                           "quality.drop_flagged_ssm": settings.drop_flagged_ssm})
        mlflow.log_dict(tracking.masked_params(params.to_dict()), tracking.ART_CONFIG)   # the resolved configuration, with every run
        try:
            summary = check_and_publish(params.path(params.paths.interim), params.path(params.paths.processed),
                                        context_root, settings)
        except QualityGateError as e:
            _log_summary(getattr(e, "summary", None))
            mlflow.set_tag(tracking.TAG_FAILURE, str(e)[:5000])
            mlflow.end_run(status="FAILED")
            raise
        except Exception as e:
            mlflow.set_tag(tracking.TAG_FAILURE, f"{type(e).__name__}: {e}"[:5000])
            mlflow.end_run(status="FAILED")
            raise
        _log_summary(summary)
        summary["mlflow_run_id"] = active.info.run_id
    return summary


def _log_summary(summary: dict[str, Any] | None) -> None:
    """Metrics, the summary JSON and the data-docs folder into the active MLflow run."""
    import mlflow

    from soilmoisture import tracking

    if not summary:
        return
    mlflow.log_metrics({name: float(summary.get(name, 0)) for name in tracking.QUALITY_METRICS})
    mlflow.log_dict({k: v for k, v in summary.items() if k != "data_docs"}, f"{tracking.ART_QUALITY_DIR}/summary.json")
    docs = Path(summary["data_docs"]).parent
    if docs.is_dir():
        mlflow.log_artifacts(str(docs), f"{tracking.ART_QUALITY_DIR}/data_docs")


if __name__ == "__main__":  # regenerate the committed suites: python -m soilmoisture.quality.gate [params.yaml]
    import sys

    from soilmoisture import config

    logging.basicConfig(level=logging.INFO)
    _params = config.load(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    log.info("suites written to %s", write_suites(_params.root / "expectations", settings_from_params(_params)))
