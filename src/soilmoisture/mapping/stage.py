"""The ``map`` stage: the registered mappable model, the region's sources, the COG + quicklooks, and the
validation against the truth (simulated area) logged to MLflow (docs/maps.md)."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from soilmoisture.config import Params
from soilmoisture.errors import DataError
from soilmoisture.mapping.inputs import aoi_window, open_sources
from soilmoisture.mapping.predict import MapModel, check_mappable
from soilmoisture.mapping.products import make_map, quicklook_days, quicklooks

log = logging.getLogger(__name__)


def model_uri(params: Params) -> str:
    """``models:/<map.model or <prefix>-mappable>@<map.alias>``."""
    from soilmoisture import tracking

    name = params.map.model or tracking.registered_model_name(params.tracking.registered_model_prefix, "mappable")
    return f"models:/{name}@{params.map.alias}"


def load_map_model(uri: str) -> MapModel:
    """The registered model (Keras network + features + normalisation, see model/predictor.py) for maps."""
    from soilmoisture.model.predictor import load_predictor

    pred = load_predictor(uri)
    check_mappable(pred.features, uri)
    cell = str(pred.meta.get("cell", "lstm"))
    if cell != "lstm":
        raise DataError(uri, f"maps support LSTM models only (model cell {cell!r})", field="cell")
    return MapModel([np.asarray(w, np.float32) for w in pred.model.get_weights()], list(pred.features),
                    np.asarray(pred.mean, np.float32), np.asarray(pred.std, np.float32), name=uri, meta=dict(pred.meta))


def output_path(params: Params) -> Path:
    m = params.map
    return params.path(params.paths.maps) / m.region / f"ssm_{m.start.replace('-', '')}_{m.end.replace('-', '')}.tif"


def run(params: Params) -> Path:
    """The ``map`` stage: daily SSM COG of ``map.region`` for ``map.start..map.end`` with the registered model,
    quicklooks and (where the truth exists, i.e. the simulated area) validation logged to MLflow."""
    import mlflow

    from soilmoisture import tracking

    m, ing = params.map, params.ingest
    tracking.configure(params)
    uri = model_uri(params)
    model = load_map_model(uri)
    raw = params.path(params.paths.raw)
    src = open_sources(raw, m.region, sigma0_units=ing.sigma0_units, s2_mask_probability=ing.s2_mask_probability)
    truth = params.path(params.paths.truth) / f"{m.region}_ssm.tif"
    out = output_path(params)
    t0 = time.perf_counter()
    try:
        aoi = aoi_window(src.grid, m.bbox)
        res = make_map(model, src, out, start=m.start, end=m.end, warmup_start=params.data.start,
                       stat_range=(params.data.start, params.data.end), window_px=m.window_px, aoi=aoi,
                       truth=truth if truth.is_file() else None, sigma0_zscore=ing.sigma0_zscore,
                       sigma0_max=ing.sigma0_max, vi_max_gap_days=ing.vi_max_gap_days, dry_day_mm=ing.dry_day_mm,
                       runner=params.runner)
        looks = quicklooks(out, src, out.parent / "quicklooks",
                           quicklook_days(res.dates, {d for d, _ in src.s1}))
    finally:
        src.close()
    total = time.perf_counter() - t0
    n_px = int(res.window.width * res.window.height)
    log.info("map %s: %d x %d px x %d days in %.1f s (%s) -> %s", m.region, res.window.width, res.window.height,
             len(res.dates), total, ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()), out)

    exp = tracking.ensure_experiment(params, "maps")
    tags = {tracking.TAG_KIND: "map", tracking.TAG_SOURCE: params.data.source, "region": m.region, "model_uri": uri,
            tracking.TAG_GIT_COMMIT: tracking.git_commit(params.root)}
    with mlflow.start_run(experiment_id=exp, run_name=f"map-{m.region}-{m.start}-{m.end}", tags=tags):
        mlflow.log_params({"region": m.region, "start": m.start, "end": m.end, "window_px": m.window_px,
                           "warmup_start": params.data.start, "model_uri": uri, "features": ",".join(model.features),
                           "bbox": json.dumps(m.bbox), "pixels": n_px})
        mlflow.log_metrics({"seconds_total": total, **{f"seconds_{k}": v for k, v in res.seconds.items()},
                            "pixel_days_per_second": n_px * len(res.dates) / max(total, 1e-9)})
        for p in looks:
            mlflow.log_artifact(str(p), "quicklooks")
        if res.validation is not None:
            summary = res.validation.summary()
            by_day, by_lc = res.validation.by_day(), res.validation.by_landcover()
            mlflow.log_metrics({k: v for k, v in summary.items() if np.isfinite(v)})
            for i, row in enumerate(by_day.itertuples(index=False)):
                mlflow.log_metrics({f"day_{k}": float(getattr(row, k)) for k in ("mae", "ubrmse", "spatial_r", "bias")
                                    if np.isfinite(getattr(row, k))}, step=i)
            for row in by_lc.itertuples(index=False):
                for k in ("mae", "ubrmse_temporal", "spatial_r"):
                    v = float(getattr(row, k))
                    if np.isfinite(v):
                        mlflow.log_metric(f"lc{row.landcover_code}_{k}", v)
            for name, df in (("validation_by_day.csv", by_day), ("validation_by_landcover.csv", by_lc)):
                p = out.parent / name
                tmp = p.with_name(f".{name}.tmp")
                df.to_csv(tmp, index=False)
                os.replace(tmp, p)
                mlflow.log_artifact(str(p), "validation")
            p = out.parent / "validation.json"
            tmp = p.with_name(".validation.json.tmp")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, p)
            log.info("map validation vs truth: MAE %.4f, ubRMSE (temporal) %.4f, spatial r %.3f",
                     summary["mae"], summary["ubrmse_temporal_mean"], summary["spatial_r_mean"])
    return out


__all__ = ["load_map_model", "model_uri", "output_path", "run"]
