"""The ``evaluate`` stage: the latest finished protocol run -> product comparison, figures, report.

Finds the latest FINISHED parent protocol run of ``variant.name`` / ``data.source`` / ``protocol.mode``
in MLflow, downloads its predictions, joins ECV_SM and CSM from the processed daily table, builds the
thesis' tables (B1, 4, Fig. 22) and figures (22-27), compares variants (paired Wilcoxon on per-probe
MAE) and writes everything to the run under ``comparison/`` and to ``paths.reports``:
``report.html`` (self-contained) and ``evaluate/`` (PNG, CSV, ``metrics.json``), both replaced atomically.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from soilmoisture import tracking
from soilmoisture.config import Params
from soilmoisture.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
OUT_DIR = "evaluate"


def _filter(source: str, mode: str, variant: str | None = None) -> str:
    f = (f"tags.{tracking.TAG_KIND} = 'protocol' and tags.{tracking.TAG_SOURCE} = '{source}' and "
         f"tags.{tracking.TAG_MODE} = '{mode}' and attributes.status = 'FINISHED'")
    return f + (f" and tags.{tracking.TAG_VARIANT} = '{variant}'" if variant else "")


def latest_protocol_runs(client: Any, experiment_id: str, source: str, mode: str) -> dict[str, Any]:
    """variant -> its latest FINISHED parent protocol run (MLflow Run) for this data source and mode."""
    runs = client.search_runs([experiment_id], filter_string=_filter(source, mode),
                              order_by=["attributes.start_time DESC"], max_results=1000)
    out: dict[str, Any] = {}
    for r in runs:
        out.setdefault(r.data.tags.get(tracking.TAG_VARIANT, ""), r)
    return out


def _download_parquet(client: Any, run_id: str, artifact: str, folder: Path) -> pd.DataFrame:
    """One Parquet artifact of a run, read into a frame (DataError naming the run and artifact)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, artifact, str(folder))
    except Exception as e:  # MlflowException / OSError: say which run and artifact
        raise DataError(f"runs:/{run_id}/{artifact}", f"cannot download the artifact: {str(e).splitlines()[0]}") \
            from None
    return pd.read_parquet(local)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap a fully written folder into place: the old one is renamed away first, then removed."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def run(params: Params) -> Path:
    """Evaluate the latest protocol run of the configured variant; returns the path of ``report.html``."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from soilmoisture.evaluate import compare as cmp
    from soilmoisture.evaluate import figures as figs
    from soilmoisture.evaluate import report as rep
    from soilmoisture.protocol.run import processed_data_hash, read_processed

    variant, source, mode = params.variant.name, params.data.source, params.protocol.mode
    uri = tracking.configure(params)
    client = MlflowClient(uri)
    exp_name = tracking.experiment_name(source)
    exp = client.get_experiment_by_name(exp_name)
    latest = latest_protocol_runs(client, exp.experiment_id, source, mode) if exp is not None else {}
    if variant not in latest:
        raise DataError(f"{tracking.mask_url(uri)} experiment {exp_name}",
                        f"no FINISHED protocol run of variant {variant!r} in mode {mode!r}; run "
                        f"`soilmoisture train --set variant.name={variant}` first", field="variant.name")
    main = latest[variant]
    rid = main.info.run_id
    log.info("evaluating protocol run %s (variant %s, %s, %s)", rid, variant, source, mode)

    processed = params.path(params.paths.processed)
    daily, probes = read_processed(processed)
    warnings: list[str] = []
    run_hash = main.data.tags.get(tracking.TAG_DATA_HASH, "unknown")
    now_hash = processed_data_hash(params.root, processed)
    if run_hash != now_hash:
        msg = (f"The processed data changed since protocol run {rid} (its {tracking.TAG_DATA_HASH} {run_hash}, "
               f"now {now_hash}): products are joined from the current data; re-run `soilmoisture train`.")
        log.warning("%s", msg)
        warnings.append(msg)

    reports = params.path(params.paths.reports)
    reports.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".evaluate-dl-", dir=reports) as dl:
        predictions = _download_parquet(client, rid, tracking.ART_PREDICTIONS, Path(dl))
        # Other variants on the same data and mode: their per-probe MAE for Table B1 and the Wilcoxon test.
        mae_by_variant: dict[str, pd.Series] = {}
        for name, r in sorted(latest.items()):
            if name == variant:
                continue
            if r.data.tags.get(tracking.TAG_DATA_HASH) != run_hash:
                log.info("variant %s skipped in the comparison: its run %s used other data", name, r.info.run_id)
                continue
            pp = _download_parquet(client, r.info.run_id, tracking.ART_PER_PROBE, Path(dl) / name)
            mae_by_variant[name] = pp.assign(probe_id=pp["probe_id"].astype(str)).set_index("probe_id")["mae"]

    paired = cmp.paired_frame(predictions, daily, probes)
    by_probe = cmp.compare(paired, ["probe_id"])
    by_landcover = cmp.compare(paired, ["landcover_name"])
    by_region = cmp.compare(paired, ["region"])
    overall = cmp.compare(paired, [])
    cover = cmp.coverage(paired)
    b1 = cmp.table_b1(by_probe, paired, variant, mae_by_variant)
    wil = None
    sentences: list[str] = []
    if mae_by_variant:
        own = by_probe[(by_probe["days"] == "all") & (by_probe["estimator"] == cmp.MODEL)].set_index("probe_id")["mae"]
        wil = cmp.wilcoxon_variants({variant: own, **mae_by_variant})
        sentences = [cmp.wilcoxon_sentence(row) for _, row in wil.iterrows()]
    probe = params.evaluate.figures_probe
    if probe is not None and probe not in set(paired["probe_id"]):
        raise ConfigError("evaluate.figures_probe", f"probe {probe!r} is not among the run's test probes "
                                                    f"({', '.join(sorted(set(paired['probe_id'])))})")
    probe = probe or cmp.median_mae_probe(by_probe)

    work = Path(tempfile.mkdtemp(prefix=f".{OUT_DIR}.", dir=reports))
    os.chmod(work, 0o755)  # mkdtemp makes 0700; the published folder should read like any other
    try:
        fig_paths = figs.write_figures(paired, daily, overall, by_region, probe, variant, work)
        tables = {"by_probe.csv": by_probe, "by_landcover.csv": by_landcover, "by_region.csv": by_region,
                  "overall.csv": overall, "table_b1.csv": b1, "coverage.csv": cover}
        if wil is not None:
            tables["wilcoxon_variants.csv"] = wil
        for name, df in tables.items():
            _atomic_csv(df, work / name)
        flat = cmp.flat_metrics(overall, cover)
        summary = {"run_id": rid, "variant": variant, "data_source": source, "mode": mode,
                   "figures_probe": probe, "metrics": flat,
                   "wilcoxon": [] if wil is None else wil.to_dict(orient="records")}
        (work / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
        info = {"data source": source, "mode": mode, "engine": main.data.tags.get(tracking.TAG_ENGINE, "?"),
                "processed data (md5)": run_hash, "git commit": main.data.tags.get(tracking.TAG_GIT_COMMIT, "?"),
                "run name": main.info.run_name or "", "tracking store": tracking.mask_url(uri),
                "test probes": str(paired["probe_id"].nunique()),
                "repeats": str(predictions["repeat"].nunique() if "repeat" in predictions else 1)}
        html_text = rep.build_html(rep.ReportInput(
            run_id=rid, variant=variant, run_info=info, headline=cmp.headline(overall, variant), coverage=cover,
            by_region=by_region, by_landcover=by_landcover, table_b1=b1,
            figures={n: (p, figs.FIGURES[n]) for n, p in fig_paths.items()}, params=dict(main.data.params),
            wilcoxon=wil, wilcoxon_sentences=sentences, verdict=cmp.verdict(overall, variant), warnings=warnings,
            figures_probe=probe))
        rep.write_html(html_text, work / REPORT_NAME)

        # MLflow first (the run keeps the comparison even if the local swap below fails), then the files.
        client.log_artifacts(rid, str(work), tracking.ART_COMPARISON_DIR)
        now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        metrics = [Metric(tracking.comparison_metric(k), v, now, 0) for k, v in flat.items()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000])
        report_path = reports / REPORT_NAME
        os.replace(work / REPORT_NAME, report_path)
        _replace_dir(work, reports / OUT_DIR)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    log.info("evaluation of run %s written to %s and logged under %s/", rid, report_path,
             tracking.ART_COMPARISON_DIR)
    return report_path
