"""The ``map`` stage: the registered mappable model and its provenance, the interval from the protocol run's
held-out residuals, the region's sources, the product in ``map.format`` + quicklooks + STAC, and the validation
against the truth (simulated area) logged to MLflow (docs/maps.md)."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from soilmoisture.config import Params
from soilmoisture.errors import DataError
from soilmoisture.mapping.formats import Provenance, product_path
from soilmoisture.mapping.inputs import aoi_window, open_sources
from soilmoisture.mapping.predict import MapModel, check_mappable
from soilmoisture.mapping.products import make_map

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
    if str(pred.meta.get("target", "absolute")) == "anomaly":
        raise DataError(uri, "the model predicts anomalies (protocol.target: anomaly) whose level comes from "
                             "per-probe inputs; maps need a model trained with protocol.target: absolute", field="target")
    cell = str(pred.meta.get("cell", "lstm"))
    if cell != "lstm":
        raise DataError(uri, f"maps support LSTM models only (model cell {cell!r})", field="cell")
    return MapModel([np.asarray(w, np.float32) for w in pred.model.get_weights()], list(pred.features),
                    np.asarray(pred.mean, np.float32), np.asarray(pred.std, np.float32), name=uri, meta=dict(pred.meta))


def output_path(params: Params) -> Path:
    """The product of ``map.format`` (a file, or the folder of cog-daily / zarr) under ``paths.maps/<region>``."""
    m = params.map
    return product_path(params.path(params.paths.maps) / m.region, m.start, m.end, m.format)


def interval_offsets(model: MapModel, coverage: float | None) -> tuple[tuple[float, float], str, str]:
    """((q_lo, q_hi) m3/m3, method, protocol run id) of the map's prediction interval, or NaNs and the reason.

    The registered model is one network (trained on all probes), not an ensemble, so the repeats' ensemble
    interval of the protocol does not exist at a pixel. What does exist is the split-conformal rule of
    ``protocol/ensemble.py`` and, in the protocol run that trained the model, every fold model's residuals
    (observed - predicted) on its *held-out test probe* (``results/predictions.parquet``): a single network on a
    site it never saw, which is what a map pixel is. Their conformal quantiles give a constant-width interval
    (validated against the truth on the simulated area: ``interval_coverage``).
    """
    nan = (float("nan"), float("nan"))
    if coverage is None:
        return nan, "none (map.interval: null)", ""
    rid = str(model.meta.get("protocol_run_id") or "")
    if not rid:
        return nan, "none (the model metadata names no protocol run)", ""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking
    from soilmoisture.protocol.ensemble import residual_bounds

    client = MlflowClient()
    try:
        mode = client.get_run(rid).data.params.get("protocol.mode", "unseen_site")
        if mode != "unseen_site":
            return nan, f"none (protocol run {rid} is {mode}: its residuals are not those of unseen sites)", rid
        local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=tracking.ART_PREDICTIONS)
    except mlflow.exceptions.MlflowException as e:
        log.warning("no interval for the map: protocol run %s has no predictions (%s)", rid, str(e).splitlines()[0])
        return nan, f"none (protocol run {rid} has no held-out predictions)", rid
    pr = pd.read_parquet(local)
    # protocol.method network: ssm_pred also uses the other probes' same-day readings, which a pixel does not
    # have; the satellite-only prediction of the same fold model (what the map computes) is kept beside it.
    col = "baseline_satellite_model" if "baseline_satellite_model" in pr.columns else "ssm_pred"
    resid = (pr["ssm"] - pr[col]).to_numpy(float)
    q = residual_bounds(resid, coverage)
    n = int(np.isfinite(resid).sum())
    if not np.all(np.isfinite(q)):
        return nan, f"none (only {n} held-out residuals in protocol run {rid})", rid
    return q, (f"split-conformal on {n} held-out test-probe residuals of protocol run {rid} "
               "(leave-one-probe-out; constant width)"), rid


def provenance(params: Params, uri: str, model: MapModel) -> Provenance:
    """The registered model's name, version, alias and run, the code version, the input days and the interval."""
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    name, alias = uri.removeprefix("models:/").split("@", 1)
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
        version, run_id = str(mv.version), str(mv.run_id or "")
    except Exception as e:  # noqa: BLE001 - load_map_model already succeeded; provenance names what it can
        log.warning("model version of %s not found (%s)", uri, str(e).splitlines()[0])
        version, run_id = "", ""
    q, method, prid = interval_offsets(model, params.map.interval)
    return Provenance(name, version, alias, run_id, uri, tracking.git_commit(params.root), params.data.start,
                      params.map.end, params.map.region, tuple(model.features),
                      params.map.interval if params.map.interval is not None else float("nan"), q, method, prid)


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
    prov = provenance(params, uri, model)
    if not prov.has_interval:
        log.warning("map without interval layers: %s", prov.interval_method)
    network = None
    if m.method == "network":   # the region's probes inform every pixel (mapping/network.py)
        import dataclasses

        import pandas as pd

        from soilmoisture.mapping import network as mnet

        series = pd.date_range(min(pd.Timestamp(params.data.start), pd.Timestamp(m.start)), m.end, freq="D")
        first = len(series) - len(pd.date_range(m.start, m.end, freq="D"))
        network = mnet.build(params, src.grid, series, first, model.meta, m.interval)
        if prov.has_interval:
            prov = dataclasses.replace(prov, interval_method=(
                "network: Gaussian-process SD of the probes' interpolated anomaly x the pixel's spread, "
                f"normal {m.interval:.0%} band (narrow near probes, wide far from them)"))
    t0 = time.perf_counter()
    try:
        aoi = aoi_window(src.grid, m.bbox)
        res = make_map(model, src, out, start=m.start, end=m.end, warmup_start=params.data.start,
                       stat_range=(params.data.start, params.data.end), window_px=m.window_px, aoi=aoi,
                       truth=truth if truth.is_file() else None, sigma0_zscore=ing.sigma0_zscore,
                       sigma0_max=ing.sigma0_max, vi_max_gap_days=ing.vi_max_gap_days, dry_day_mm=ing.dry_day_mm,
                       runner=params.runner, fmt=m.format, provenance=prov, quicklook_folder=out.parent / "quicklooks",
                       network=network)
        looks = res.quicklooks
    finally:
        src.close()
    stac_items: list[Path] = []
    if m.stac:
        from soilmoisture.mapping.stac import ITEMS_DIR, make_items, write_catalog

        items = make_items(res, prov)
        write_catalog(out.parent, m.region, items)
        stac_items = [out.parent / ITEMS_DIR / f"{it.id}.json" for it in items]
    total = time.perf_counter() - t0
    n_px = int(res.window.width * res.window.height)
    log.info("map %s: %d x %d px x %d days in %.1f s (%s) -> %s", m.region, res.window.width, res.window.height,
             len(res.dates), total, ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()), out)

    exp = tracking.ensure_experiment(params, "maps")
    tags = {tracking.TAG_KIND: "map", tracking.TAG_SOURCE: params.data.source, "region": m.region, "model_uri": uri,
            tracking.TAG_GIT_COMMIT: tracking.git_commit(params.root)}
    with mlflow.start_run(experiment_id=exp, run_name=f"map-{m.region}-{m.start}-{m.end}", tags=tags):
        if network is not None:
            mlflow.log_params({"network_w": network.w, "network_lam": network.lam,
                               "network_shares": network.shares_source[:500],
                               "network_probes": len(network.pool.level)})
        mlflow.log_params({"method": m.method, "region": m.region, "start": m.start, "end": m.end, "window_px": m.window_px,
                           "format": m.format, "interval": m.interval, "interval_method": prov.interval_method[:500],
                           "model_version": prov.model_version, "model_run_id": prov.model_run_id,
                           "warmup_start": params.data.start, "model_uri": uri, "features": ",".join(model.features),
                           "bbox": json.dumps(m.bbox), "pixels": n_px})
        mlflow.log_metrics({"seconds_total": total, **{f"seconds_{k}": v for k, v in res.seconds.items()},
                            "pixel_days_per_second": n_px * len(res.dates) / max(total, 1e-9)})
        for p in looks:
            mlflow.log_artifact(str(p), "quicklooks")
        if len(stac_items) <= 50:   # cog-daily: an item per day; the collection lists them all anyway
            for p in stac_items:
                mlflow.log_artifact(str(p), "stac")
        if prov.has_interval:
            mlflow.log_metrics({"interval_q_lo": prov.interval_offsets[0], "interval_q_hi": prov.interval_offsets[1],
                                "interval_nominal": float(m.interval)})
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
            tables = [("validation_by_day.csv", by_day), ("validation_by_landcover.csv", by_lc)]
            if network is not None:   # how far the network's information carries
                by_dist = network.validation.table()
                tables.append(("validation_by_distance.csv", by_dist))
                for row in by_dist.itertuples(index=False):
                    key = row.distance_km.replace(">", "gt").replace("-", "_").replace(".", "p")
                    mlflow.log_metrics({f"dist{key}_mae_network": row.mae_network,
                                        f"dist{key}_mae_satellite": row.mae_satellite})
            for name, df in tables:
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
