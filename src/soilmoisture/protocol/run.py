"""The ``train`` stage: fold plans -> engine -> predictions -> metrics, every fold an MLflow child run.

One parent run per protocol run (experiment per data source, ``tracking.ensure_experiment``), tagged with
variant, data source, mode, engine, git commit and the processed data's hash, holding the flattened
parameters, the per-probe metrics table, all predictions and the aggregate metrics. One nested child per
(test probe, repeat) holds that fold's metrics, baselines and learning curve. The final model of the
variant (all probes) is logged and registered with its normalisation statistics and feature list.
Logging goes through ``MlflowClient.log_batch`` so hundreds of children take seconds, not minutes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture import tracking
from soilmoisture.config import Params
from soilmoisture.errors import DataError, ProtocolError
from soilmoisture.protocol import baselines as bl
from soilmoisture.protocol.folds import FoldPlan, norm_stats, plan_final, plan_known_site, plan_unseen_site

log = logging.getLogger(__name__)

MLFLOW_PARENT = "mlflow.parentRunId"


# --- small pure helpers ----------------------------------------------------------------------------
def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters -> {"a.b.c": "value"} for MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def processed_data_hash(root: Path, processed: Path) -> str:
    """The processed data's DVC md5 (``<processed>.dvc`` or dvc.lock), else an md5 of its parquet files."""
    import yaml

    dvc_file = processed.with_name(processed.name + ".dvc")
    if dvc_file.is_file():
        for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
            if out.get("md5"):
                return str(out["md5"])
    lock = root / "dvc.lock"
    if lock.is_file():
        rel = os.path.relpath(processed, root)
        for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
            for out in stage.get("outs", []) or []:
                if os.path.normpath(str(out.get("path", ""))) == os.path.normpath(rel) and out.get("md5"):
                    return str(out["md5"])
    h = hashlib.md5()
    for f in sorted(processed.glob("*.parquet")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def known_site_targets(y: np.ndarray, dates: pd.DatetimeIndex, split_date: str) -> tuple[np.ndarray, np.ndarray]:
    """Known site: (y_train with every day from ``split_date`` on set NaN, bool (T,) of those evaluated days)."""
    eval_days = np.asarray(dates >= pd.Timestamp(split_date))
    if not eval_days.any() or eval_days.all():
        raise ProtocolError(f"protocol.split_date {split_date} is outside the data range "
                            f"{dates[0].date()}..{dates[-1].date()}: nothing to train on or to predict")
    y_train = y.copy()
    y_train[:, eval_days] = np.nan  # the predicted period is hidden from training
    return y_train, eval_days


def get_engine(name: str, cell: str) -> tuple[Any, str]:
    """The engine module for ``protocol.engine``. ``native`` falls back to ``jax`` (with a warning) when its
    kernel cannot be built here (no C compiler); ``jax`` falls back to ``keras`` where it cannot run."""
    from soilmoisture.model import keras_engine

    if name == "keras":
        return keras_engine, "keras"
    if name == "native":
        from soilmoisture.model import native_build, native_engine

        if cell in native_engine.SUPPORTED_CELLS:
            ok, why = native_build.available()
            if ok:
                return native_engine, "native"
            log.warning("protocol.engine is 'native' but its kernel cannot be built here (%s); using the jax "
                        "engine", why)
        else:
            log.warning("the native engine does not support model.cell=%r", cell)
    try:
        from soilmoisture.model import jax_engine
    except ModuleNotFoundError as e:
        if e.name != "soilmoisture.model.jax_engine":
            raise
        log.warning("protocol.engine is %r but soilmoisture.model.jax_engine is missing; using the keras engine",
                    name)
        return keras_engine, "keras"
    if cell not in getattr(jax_engine, "SUPPORTED_CELLS", ()):
        log.warning("the jax engine does not support model.cell=%r; using the keras engine", cell)
        return keras_engine, "keras"
    return jax_engine, "jax"


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Atomic write: a temporary name in the same folder, then os.replace."""
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_processed(processed: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The published daily and probe tables (DataError naming a missing file)."""
    out = []
    for name in ("daily.parquet", "probes.parquet"):
        p = processed / name
        if not p.is_file():
            raise DataError(p, "not found; run `soilmoisture validate` first (it publishes data/processed)")
        out.append(pd.read_parquet(p))
    return out[0], out[1]


_SQLITE_TUNED: list[bool] = []


def tune_sqlite() -> None:
    """SQLite tracking stores: WAL journal and ``synchronous=NORMAL`` on every new connection.

    Logging 610 child runs drops from ~100 s to ~30 s here (fsync at WAL checkpoints instead of at every
    commit). Safe against a crash of the process; the last commits may be lost on a power cut.
    Registered once per process, before MLflow opens its engine; other databases are untouched.
    """
    if _SQLITE_TUNED:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    _SQLITE_TUNED.append(True)


# --- the stage --------------------------------------------------------------------------------------
def run(params: Params, *, parent_run_id: str | None = None, register: bool = True,
        extra_tags: dict[str, str] | None = None, experiment_kind: str = "protocol") -> str:
    """Run the protocol of ``params.protocol.mode`` for ``params.variant``; returns the parent run id.

    ``parent_run_id`` nests the protocol run under another run of the experiment ``experiment_kind`` (an
    ablation: ``"ablation"``, so the UI shows the tree); ``register=False`` trains no
    final model and registers nothing (the registry and its champion alias stay untouched).
    On any error the parent run is marked FAILED with a ``failure_reason`` tag and the error re-raised.
    """
    from mlflow.tracking import MlflowClient

    if tracking.tracking_uri(params).startswith("sqlite:"):
        tune_sqlite()
    exp_id = tracking.ensure_experiment(params, kind=experiment_kind)
    client = MlflowClient(tracking.tracking_uri(params))
    pr = params.protocol
    engine, engine_name = get_engine(pr.engine, params.model.cell)
    tags = {tracking.TAG_KIND: "protocol", tracking.TAG_VARIANT: params.variant.name,
            tracking.TAG_SOURCE: params.data.source, tracking.TAG_MODE: pr.mode, tracking.TAG_ENGINE: engine_name,
            tracking.TAG_ENGINE_REQUESTED: pr.engine}
    commit = tracking.git_commit(params.root)
    tags.update({tracking.TAG_GIT_COMMIT: commit, **tracking.source_tags("train", commit)})
    if parent_run_id:
        tags[MLFLOW_PARENT] = parent_run_id
    tags.update(extra_tags or {})
    parent = client.create_run(exp_id, run_name=f"{params.variant.name}-{pr.mode}-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags=tags)
    rid = parent.info.run_id
    try:
        _run(params, client, exp_id, rid, engine, engine_name, commit, register)
    except BaseException as e:
        reason = str(e) or type(e).__name__
        client.set_tag(rid, tracking.TAG_FAILURE, f"{type(e).__name__}: {reason}"[:4900])
        client.set_terminated(rid, "FAILED")
        log.error("protocol run %s failed: %s", rid, reason)
        raise
    client.set_terminated(rid, "FINISHED")
    return rid


def _run(params: Params, client: Any, exp_id: str, rid: str, engine: Any, engine_name: str, commit: str,
         register: bool = True) -> None:
    from mlflow.entities import Param

    from soilmoisture.tensors import build_tensors

    pr, hp, variant = params.protocol, params.model, params.variant.name
    spec = params.variant_spec
    processed = params.path(params.paths.processed)
    flat = flatten(tracking.masked_params(params.to_dict()))  # no password of a backend URL in MLflow
    items = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(rid, params=items[i:i + 100])
    client.log_dict(rid, tracking.masked_params(params.to_dict()), tracking.ART_CONFIG)

    daily, probes = read_processed(processed)
    data_hash = processed_data_hash(params.root, processed)
    client.set_tag(rid, tracking.TAG_DATA_HASH, data_hash)
    # The UI's Dataset column: the published daily table, versioned by its DVC hash.
    dataset = tracking.dataset_input(daily, processed / "daily.parquet", f"{params.data.source}/processed/daily",
                                     data_hash)
    client.log_inputs(rid, datasets=[dataset])
    tens = build_tensors(daily, probes, spec.features, landcover=spec.landcover, start=params.data.start,
                         end=params.data.end, drop_flagged=params.quality.drop_flagged_ssm, variant=variant,
                         daily_path=str(processed / "daily.parquet"), probes_path=str(processed / "probes.parquet"),
                         fit_end=pr.split_date if pr.mode == "known_site" else None,
                         options=params.features.options)
    x, y, ids = tens.x, tens.y, tens.probe_ids
    log.info("variant %s: %d probes x %d days x %d features", variant, *x.shape)

    # Plans, their normalisation statistics and training targets.
    if pr.mode == "unseen_site":
        plans, skipped = plan_unseen_site(ids, tens.observed, repeats=pr.repeats, val_fraction=pr.val_fraction,
                                          seed=pr.seed, max_probes=pr.max_probes, variant=variant)
        eval_days = np.ones(len(tens.dates), dtype=bool)
        y_fold = y
    else:
        y_fold, eval_days = known_site_targets(y, tens.dates, pr.split_date)
        n_before = np.isfinite(y[:, ~eval_days]).sum(axis=1)
        n_after = np.isfinite(y[:, eval_days]).sum(axis=1)
        plans, skipped = plan_known_site(ids, n_before, n_after, repeats=pr.repeats, seed=pr.seed,
                                         max_probes=pr.max_probes, variant=variant)
    # Anomaly target (protocol/level.py): the network learns ssm - the probe's own level; levels of probes
    # it has not seen come from a ridge model of the fold's training probes.
    level_z, own_level = None, None
    y_net, y_fold_net = y, y_fold
    if pr.target == "anomaly":
        from soilmoisture.protocol.level import probe_levels

        own_level = probe_levels(y_fold)       # known site: y_fold hides the predicted period
        y_net = (y - own_level[:, None]).astype(np.float32)
        y_fold_net = y_net if y_fold is y else (y_fold - own_level[:, None]).astype(np.float32)
        level_z = _level_inputs(daily, probes, params, tens)
    for e in skipped:
        log.warning("%s", e)
    if skipped:
        client.set_tag(rid, tracking.TAG_SKIPPED, ",".join(e.probe for e in skipped)[:4900])
    fit_days = None if pr.mode == "unseen_site" else ~eval_days
    stats = [norm_stats(x, p.train_idx, fit_days) for p in plans]
    final = plan_final(tens.observed, seed=pr.seed)
    final_stats = norm_stats(x, final.train_idx)

    # Train: every fold model in one request (the jax engine splits internally); the final model joins
    # it when it trains on the same targets.
    if not register or pr.mode == "known_site":   # known site registers its evaluated members (known_site.py)
        groups = [(plans, stats, y_fold)]
    else:
        groups = [(plans + [final], stats + [final_stats], y_fold)]
    t0, wall0 = time.perf_counter(), int(time.time() * 1000)
    if pr.target == "anomaly":  # same requests on anomaly targets (val loss too); the final model on y_net
        groups = [(g[0], g[1], y_fold_net if g[2] is y_fold else y_net) for g in groups]
    results = fit_requests(engine, engine_name, [_request(x, y_net, *g, hp) for g in groups], params.runner)
    train_seconds = time.perf_counter() - t0
    train_window = (wall0, int(time.time() * 1000))   # the engine trains every fold model in this window
    weights = [w for r in results for w in r.weights]
    train_loss = np.concatenate([r.train_loss for r in results])
    val_loss = np.concatenate([r.val_loss for r in results])
    all_stats = stats + [final_stats]
    log.info("trained %d models with the %s engine in %.1f s", len(weights), engine_name, train_seconds)

    # Predict each plan's test probes with its own weights and statistics; score model and baselines.
    from soilmoisture.evaluate.metrics import all_metrics
    from soilmoisture.model.interface import normalise
    from soilmoisture.model.keras_model import build_model, predict_normalised

    net = build_model(hp, x.shape[-1])
    site = None
    if pr.mode == "known_site":  # the registered model's own numbers: members, calibration, interval
        from soilmoisture.protocol.known_site import build_site_model

        site = build_site_model(params, tens, y, y_fold, eval_days, plans, weights, stats, own_level, net)
    fold_levels: list[float] = []
    pred_frames, fold_rows, val_rows = [], [], []
    members: dict[int, list[np.ndarray]] = {}      # test probe -> member predictions (T,)
    val_resid: dict[int, list[np.ndarray]] = {}    # test probe -> its members' validation residuals
    net_xy = probe_xy_km(probes, tens.probe_ids, tens.networks) if pr.method == "network" else None
    for m, plan in enumerate(plans):
        net.set_weights(weights[m])
        tmean = bl.train_mean(y_fold, plan.train_idx)
        level_of = _level_function(pr, plan, own_level, level_z)
        if site is not None:
            uncal, pred = site.uncalibrated[m][site.rows(plan.test_idx)], site.members[m][site.rows(plan.test_idx)]
        else:
            pred = predict_normalised(net, normalise(x[plan.test_idx], *all_stats[m]))
            if level_of is not None:
                pred = pred + level_of(plan.test_idx)[:, None]
        fold_levels.append(float(level_of(plan.test_idx)[0]) if level_of is not None and site is None else 0.0)
        vpred = _validation_predictions(net, x, plan, all_stats[m], level_of) if len(plan.val_idx) else None
        sat_pred, net_info = None, {}
        if net_xy is not None:   # protocol/network.py: + the fold's training probes' same-day readings
            sat_pred = pred.astype(np.float64)
            pred, vpred, net_info = network_informed(y, tens.networks, plan, sat_pred, vpred, net_xy, pr)
        if vpred is not None:
            rows, resid = _validation_scores(y, tens, plan, m, vpred, tmean)
            val_rows += rows
            for p in plan.test_idx:
                val_resid.setdefault(int(p), []).append(resid)
        for k, p in enumerate(plan.test_idx):
            base = _baselines(pr.mode, y, tens, plan, int(p), eval_days, tmean)
            if sat_pred is not None:
                base["satellite_model"] = sat_pred[k]
            if pr.mode == "known_site" and pr.site_calibration:
                # The probe's own past calibrates the network (DESIGN: known site, new period); pred holds the
                # calibrated members already (protocol/known_site.py), the network alone is a baseline.
                base["uncalibrated_model"] = uncal[k].astype(np.float64)
            obs = np.where(eval_days, y[p], np.nan)
            members.setdefault(int(p), []).append(pred[k].astype(np.float64))
            row = {"model_index": m, "probe_id": ids[p], "repeat": plan.repeat, "seed": plan.seed,
                   **all_metrics(obs, pred[k]), **net_info.get(int(p), {})}
            for b, series in base.items():
                for name, v in all_metrics(obs, series).items():
                    if name != "n_days":
                        row[tracking.baseline_metric(b, name)] = v
            fold_rows.append(row)
            days = np.flatnonzero(eval_days)
            frame = {"probe_id": ids[p], "date": tens.dates[days], "repeat": plan.repeat, "ssm": y[p, days],
                     "ssm_pred": pred[k, days]}
            frame.update({f"baseline_{b}": s[days] for b, s in base.items()})
            pred_frames.append(pd.DataFrame(frame))
    folds = pd.DataFrame(fold_rows)
    _log_children(client, exp_id, rid, params, engine_name, plans, folds, train_loss, val_loss, ids,
                  window=train_window, dataset=dataset, commit=commit)
    ens_rows, ens_frames = _ensembles(members, val_resid, y, tens, eval_days, pr.interval)
    per_probe = _per_probe(folds, tens).merge(pd.DataFrame(ens_rows), on="probe_id", how="left")
    validation = pd.DataFrame(val_rows)
    _log_parent_results(client, rid, per_probe, pd.concat(pred_frames, ignore_index=True), train_seconds,
                        len(weights), len(skipped), validation=validation,
                        ensemble=pd.concat(ens_frames, ignore_index=True) if ens_frames else None,
                        interval_nominal=pr.interval)
    if pr.mode == "unseen_site" and pr.method == "satellite":  # network-informed folds need the readings too
        from soilmoisture.protocol.known_site import log_fold_models

        log_fold_models(params, client, rid, tens, plans, weights, all_stats, fold_levels)
    if register and site is not None:
        from soilmoisture.protocol.known_site import register_site_model

        register_site_model(params, client, exp_id, rid, engine_name, site.model, train_loss)
    elif register:
        level_meta = None
        if own_level is not None:
            from soilmoisture.protocol.level import fit_level

            lm = fit_level(own_level, level_z, final.train_idx, pr.level_ridge)
            level_meta = {"features": list(pr.level_features), **lm.to_dict()}
        _register_final(params, client, exp_id, rid, engine_name, weights[-1], final_stats, tens, train_loss[-1],
                        level_meta)


def _request(x: np.ndarray, y: np.ndarray, plans: list[FoldPlan], stats: list, y_train: np.ndarray, hp: Any) -> Any:
    """One FitRequest for ``plans`` (their statistics and seeds), training on ``y_train``."""
    from soilmoisture.model.interface import FitRequest

    return FitRequest(x=x, y=y, mean=np.stack([s[0] for s in stats]), std=np.stack([s[1] for s in stats]),
                      train_idx=[p.train_idx for p in plans], val_idx=[p.val_idx for p in plans],
                      seeds=np.array([p.seed for p in plans], dtype=np.int64), hp=hp,
                      y_train=None if y_train is y else y_train)


def fit_in_worker(engine_name: str, req: Any) -> Any:
    """Train one chunk of models on a Dask worker (module-level: process workers pickle it by name).

    A worker is one process per core already, so the jax engine trains its groups in this process and the
    native engine uses one thread.
    """
    engine, _ = get_engine(engine_name, req.hp.cell)
    if engine.__name__.endswith("jax_engine"):
        return engine.fit_many(req, processes=1)
    if engine.__name__.endswith("native_engine"):
        return engine.fit_many(req, threads=1)
    return engine.fit_many(req)


def engine_group_size(engine_name: str) -> int:
    """Models per compiled call of the engine (jax: ``SOILMOISTURE_JAX_GROUP_SIZE``, default 8; native, keras: 1)."""
    if engine_name != "jax":
        return 1
    from soilmoisture.model import jax_engine

    return jax_engine._env_int(jax_engine.ENV_GROUP_SIZE, jax_engine.DEFAULT_GROUP_SIZE)


def split_request(req: Any, parts: list[range]) -> list[Any]:
    """The FitRequest cut into consecutive model ranges (tensors shared, not copied)."""
    import dataclasses

    return [dataclasses.replace(req, mean=req.mean[r.start:r.stop], std=req.std[r.start:r.stop],
                                train_idx=req.train_idx[r.start:r.stop], val_idx=req.val_idx[r.start:r.stop],
                                seeds=req.seeds[r.start:r.stop]) for r in parts]


def merge_results(parts: list[Any]) -> Any:
    """FitResults of consecutive chunks of one request -> one FitResult in the request's model order."""
    from soilmoisture.model.interface import FitResult

    if len(parts) == 1:
        return parts[0]
    return FitResult(weights=[w for p in parts for w in p.weights],
                     train_loss=np.concatenate([p.train_loss for p in parts]),
                     val_loss=np.concatenate([p.val_loss for p in parts]),
                     seconds=max(p.seconds for p in parts), info={"chunks": [p.info for p in parts]})


def fit_requests(engine: Any, engine_name: str, reqs: list[Any], runner: Any) -> list[Any]:
    """Train every request; one FitResult per request, models in request order.

    ``runner.kind: local`` hands each request to the engine whole (its own process pool). With Dask every
    request is cut into ``runner.n_workers`` chunks of whole engine groups (so each model trains in the same
    group of models as locally: identical results) and all chunks run as tasks of one flow, each chunk
    carrying the tensors once; the results are put back in request order.
    """
    from functools import partial

    from soilmoisture.runner import chunks, is_distributed, map_in_runner

    if not is_distributed(runner):
        return [engine.fit_many(r) for r in reqs]
    align = engine_group_size(engine_name)
    parts, owner = [], []
    for i, req in enumerate(reqs):
        pieces = split_request(req, chunks(req.n_models, runner.n_workers, align))
        parts += pieces
        owner += [i] * len(pieces)
    log.info("training %d models in %d chunks on runner %s", sum(r.n_models for r in reqs), len(parts), runner.kind)
    done = map_in_runner(partial(fit_in_worker, engine_name), parts, runner, label="folds")
    return [merge_results([d for d, o in zip(done, owner) if o == i]) for i in range(len(reqs))]


def _level_inputs(daily: pd.DataFrame, probes: pd.DataFrame, params: Params, tens: Any) -> np.ndarray:
    """(P, L) static inputs of the level model (``protocol.level_features``), in the tensors' probe order."""
    from soilmoisture.tensors import build_tensors

    pr = params.protocol
    if not pr.level_features:
        return np.zeros((len(tens.probe_ids), 0))
    lt = build_tensors(daily, probes, list(pr.level_features), landcover=params.variant_spec.landcover,
                       start=params.data.start, end=params.data.end, variant=params.variant.name,
                       fit_end=pr.split_date if pr.mode == "known_site" else None, options=params.features.options)
    if lt.probe_ids != tens.probe_ids:  # same tables and filter: cannot differ unless the code changed
        raise ProtocolError("level-model inputs and model inputs list different probes")
    return lt.x[:, 0, :].astype(np.float64)


def _level_function(pr: Any, plan: FoldPlan, own_level: np.ndarray | None, level_z: np.ndarray | None) -> Any:
    """idx -> levels (m3/m3) added to the network's anomalies for ``plan`` (None for the absolute target).

    Known site: each probe's own training-period mean. Unseen site: the ridge level model of the plan's
    training probes (their observed levels), applied to the probes asked for (test or validation).
    """
    if own_level is None:
        return None
    if pr.mode == "known_site":
        return lambda idx: own_level[np.asarray(idx, dtype=np.int64)]
    from soilmoisture.protocol.level import fit_level

    lm = fit_level(own_level, level_z, plan.train_idx, pr.level_ridge)
    return lambda idx: lm.predict(level_z[np.asarray(idx, dtype=np.int64)])


def _validation_predictions(net: Any, x: np.ndarray, plan: FoldPlan, stats: tuple[np.ndarray, np.ndarray],
                            level_of: Any = None) -> np.ndarray:
    """(V, T) fold model's predictions (m3/m3) at its validation probes."""
    from soilmoisture.model.interface import normalise
    from soilmoisture.model.keras_model import predict_normalised

    vpred = predict_normalised(net, normalise(x[plan.val_idx], *stats)).astype(np.float64)
    if level_of is not None:
        vpred = vpred + level_of(plan.val_idx)[:, None]
    return vpred


def _validation_scores(y: np.ndarray, tens: Any, plan: FoldPlan, m: int, vpred: np.ndarray,
                       tmean: float) -> tuple[list[dict], np.ndarray]:
    """Scores of fold model ``m`` on its validation probes (model and baselines, same days) and its residuals.

    Validation probes never trained the model and are not the test probe: these scores are what a choice
    between configurations may look at (``soilmoisture ablate``); the residuals (observed - predicted,
    m3/m3) give the ensemble interval of the test probe (protocol/ensemble.py).
    """
    from soilmoisture.evaluate.metrics import all_metrics

    rows, resid = [], []
    for k, v in enumerate(plan.val_idx):
        v = int(v)
        row = {"model_index": m, "test_probe": plan.test_probe, "repeat": plan.repeat, "probe_id": tens.probe_ids[v],
               "region": tens.regions[v], **all_metrics(y[v], vpred[k])}
        base = {"train_mean": np.full(y.shape[1], tmean),
                "network_day": bl.network_day(y, plan.train_idx, tens.networks, tens.networks[v], tmean)}
        for b, series in base.items():
            for name, val in all_metrics(y[v], series).items():
                if name != "n_days":
                    row[tracking.baseline_metric(b, name)] = val
        rows.append(row)
        resid.append(y[v] - vpred[k])
    return rows, np.concatenate(resid) if resid else np.array([])


def probe_xy_km(probes: pd.DataFrame, ids: list[str], networks: list[str]) -> np.ndarray:
    """(P, 2) probe positions in km, equirectangular around each network's centre (distances within a network)."""
    from soilmoisture.evaluate.realism import local_km

    info = probes.assign(probe_id=probes["probe_id"].astype(str)).set_index("probe_id").reindex(ids)
    lat, lon = info["lat"].to_numpy(dtype=float), info["lon"].to_numpy(dtype=float)
    out = np.zeros((len(ids), 2))
    nets = np.asarray(networks)
    for n in np.unique(nets):
        sel = nets == n
        if np.isfinite(lat[sel]).any():
            x, y = local_km(lat[sel], lon[sel])
            out[sel] = np.column_stack([np.nan_to_num(x), np.nan_to_num(y)])
    return out


def network_informed(y: np.ndarray, networks: list[str], plan: FoldPlan, sat_test: np.ndarray,
                     sat_val: np.ndarray | None, xy: np.ndarray, pr: Any
                     ) -> tuple[np.ndarray, np.ndarray | None, dict[int, dict[str, float]]]:
    """Network-informed estimates of the plan's test (and validation) probes: see protocol/network.py.

    Per network, the pool is the plan's training probes of that network (what the network-day baseline
    averages); ``auto`` weights are chosen on the plan's validation probes of that network only. Returns the
    test estimates, the validation estimates and, per test probe, the weights used and the screening counts.
    """
    from soilmoisture.protocol import network as nw

    nets = np.asarray(networks)
    test_out = np.array(sat_test, dtype=np.float64, copy=True)
    val_out = None if sat_val is None else np.array(sat_val, dtype=np.float64, copy=True)
    val_idx = np.asarray(plan.val_idx, dtype=np.int64)
    info: dict[int, dict[str, float]] = {}
    for n in np.unique(nets[np.concatenate([plan.test_idx, val_idx]).astype(np.int64)]):
        pool_idx = np.array([q for q in plan.train_idx if nets[q] == n], dtype=np.int64)
        t_sel = np.flatnonzero(nets[plan.test_idx] == n)
        v_sel = np.flatnonzero(nets[val_idx] == n) if len(val_idx) else np.array([], dtype=np.int64)
        if len(pool_idx) == 0:   # no probe of this network trained the fold: satellite only
            for k in t_sel:
                info[int(plan.test_idx[k])] = {"network_w": 0.0, "network_lam": 1.0, "network_pool": 0.0}
            continue
        pool = nw.make_pool(y, pool_idx, xy, flat_days=pr.network_flat_days, jump_k=pr.network_jump_k)
        v_comps = [nw.components(pool, sat_val[k][None], xy[val_idx[k]][None]) for k in v_sel] \
            if val_out is not None else []
        grid = lambda v: nw.GRID if v == "auto" else (float(v),)  # noqa: E731 - a fixed share is a 1-value grid
        w, lam, _ = nw.choose(v_comps, [y[val_idx[k]] for k in v_sel], pool, w_grid=grid(pr.network_w),
                              lam_grid=grid(pr.network_lam))
        for k, c in zip(v_sel, v_comps):
            val_out[k] = nw.combine(c, pool, w, lam)[0][0]
        for k in t_sel:
            p = int(plan.test_idx[k])
            c = nw.components(pool, sat_test[k][None], xy[p][None])
            test_out[k] = nw.combine(c, pool, w, lam)[0][0]
            info[p] = {"network_w": w, "network_lam": lam, "network_pool": float(len(pool.level)),
                       "network_screened_flatline": float(pool.flatline), "network_screened_jump": float(pool.jump)}
    return test_out, val_out, info


def _ensembles(members: dict[int, list[np.ndarray]], val_resid: dict[int, list[np.ndarray]], y: np.ndarray,
               tens: Any, eval_days: np.ndarray, nominal: float) -> tuple[list[dict], list[pd.DataFrame]]:
    """Per test probe: the mean of its repeats' predictions, its interval and their scores on the test days.

    Interval residuals: the members' validation probes (unseen site) or, without validation probes (known
    site), the ensemble's own residuals on the probe's training days (see protocol/ensemble.py).
    """
    from soilmoisture.evaluate.metrics import all_metrics
    from soilmoisture.protocol import ensemble as en

    rows, frames = [], []
    days = np.flatnonzero(eval_days)
    for p, preds in sorted(members.items()):
        mean = en.ensemble_mean(np.stack(preds))
        if p in val_resid:
            resid = np.concatenate(val_resid[p])
        else:
            resid = np.where(~eval_days, y[p] - mean, np.nan)
        lo, hi = en.interval(mean, en.residual_bounds(resid, nominal))
        obs = np.where(eval_days, y[p], np.nan)
        row = {"probe_id": tens.probe_ids[p], "ensemble_members": float(len(preds))}
        row.update({f"ensemble_{k}": v for k, v in all_metrics(obs, mean).items() if k != "n_days"})
        row["interval_coverage"] = en.coverage(obs, lo, hi)
        width = (hi - lo)[days]
        row["interval_width"] = float(np.nanmean(width)) if np.isfinite(width).any() else float("nan")
        rows.append(row)
        frames.append(pd.DataFrame({"probe_id": tens.probe_ids[p], "date": tens.dates[days], "ssm": y[p, days],
                                    "ssm_pred": mean[days], "ssm_lower": lo[days], "ssm_upper": hi[days],
                                    "members": len(preds)}))
    return rows, frames


def _baselines(mode: str, y: np.ndarray, tens: Any, plan: FoldPlan, p: int, eval_days: np.ndarray,
               tmean: float) -> dict[str, np.ndarray]:
    """The baseline series (T,) for test probe ``p`` (see :mod:`soilmoisture.protocol.baselines`)."""
    T = y.shape[1]
    out = {"train_mean": np.full(T, tmean)}
    if mode == "unseen_site":
        out["network_day"] = bl.network_day(y, plan.train_idx, tens.networks, tens.networks[p], tmean)
    else:
        others = np.array([i for i in plan.train_idx if i != p], dtype=np.int64)
        out["network_day"] = bl.network_day(y, others, tens.networks, tens.networks[p], tmean)
        out["climatology"] = bl.climatology(y[p], tens.dates, ~eval_days, tmean)
    return out


@contextlib.contextmanager
def quiet_keras() -> Any:
    """No Keras progress bar (MLflow's input-example check runs ``predict``) inside the CLI's log lines."""
    import keras

    absl = logging.getLogger("absl")   # with interactive logging off, Keras logs its bars through absl
    level, was_interactive = absl.level, keras.utils.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    absl.setLevel(logging.WARNING)
    try:
        yield
    finally:
        absl.setLevel(level)
        if was_interactive:
            keras.utils.enable_interactive_logging()


# Hyperparameters shown on every fold run (the compare view's parallel coordinates key on run params).
FOLD_HYPERPARAMS = ("cell", "layers", "units", "dropout", "recurrent_l2", "epochs", "batch_size", "clr_base_lr",
                    "clr_max_lr", "clr_step_size", "loss", "target_fill")


def _log_children(client: Any, exp_id: str, rid: str, params: Params, engine_name: str, plans: list[FoldPlan],
                  folds: pd.DataFrame, train_loss: np.ndarray, val_loss: np.ndarray, ids: list[str], *,
                  window: tuple[int, int], dataset: Any, commit: str) -> None:
    """One child run per (test probe, repeat): tags, metrics and the learning curve, in one log_batch each.

    A fold run spans ``window`` (ms since the epoch), the engine call that trained it (the engine trains the
    fold models together, so they share it). Its params are the model's hyperparameters and the split sizes;
    the seed and the probe lists, which are identifiers rather than hyperparameters, are tags.
    """
    from mlflow.entities import Metric, Param

    now = window[1]
    hyper = [Param(k, str(getattr(params.model, k))) for k in FOLD_HYPERPARAMS if hasattr(params.model, k)]
    hyper.append(Param("variant", params.variant.name))
    for row in folds.itertuples(index=False):
        r = row._asdict()
        m = int(r["model_index"])
        plan = plans[m]
        tags = {MLFLOW_PARENT: rid, tracking.TAG_KIND: "fold", tracking.TAG_VARIANT: params.variant.name,
                tracking.TAG_SOURCE: params.data.source, tracking.TAG_MODE: params.protocol.mode,
                tracking.TAG_ENGINE: engine_name, tracking.TAG_TEST_PROBE: r["probe_id"],
                tracking.TAG_REPEAT: str(r["repeat"]), "seed": str(plan.seed),
                "train_probes": ",".join(ids[i] for i in plan.train_idx)[:5000],
                "val_probes": ",".join(ids[i] for i in plan.val_idx)[:5000] or "-",
                **tracking.source_tags("train", commit)}
        child = client.create_run(exp_id, run_name=f"{r['probe_id']}-r{r['repeat']}", tags=tags, start_time=window[0])
        metrics = [Metric(k, float(v), now, 0) for k, v in r.items()
                   if k not in ("model_index", "probe_id", "repeat", "seed") and np.isfinite(v)]
        for e in range(train_loss.shape[1]):
            for key, arr in zip(tracking.LEARNING_CURVE, (train_loss, val_loss)):
                if np.isfinite(arr[m, e]):
                    metrics.append(Metric(key, float(arr[m, e]), now, e))
        ps = [*hyper, Param("n_train", str(len(plan.train_idx))), Param("n_val", str(len(plan.val_idx)))]
        for i in range(0, len(metrics), 1000):
            client.log_batch(child.info.run_id, metrics=metrics[i:i + 1000], params=ps if i == 0 else [])
        client.log_inputs(child.info.run_id, datasets=[dataset])
        client.set_terminated(child.info.run_id, "FINISHED", end_time=window[1])


def _per_probe(folds: pd.DataFrame, tens: Any) -> pd.DataFrame:
    """Per test probe: fold metrics averaged over repeats, with the probe's network, region and land cover."""
    num = [c for c in folds.columns if c not in ("model_index", "probe_id", "repeat", "seed")]
    g = folds.groupby("probe_id", sort=True)
    table = g[num].mean()
    table["n_repeats"] = g.size()
    table = table.reset_index()
    info = pd.DataFrame({"probe_id": tens.probe_ids, "network": tens.networks, "region": tens.regions,
                         "landcover_code": tens.landcover})
    return info.merge(table, on="probe_id", how="inner")


def validation_per_probe(validation: pd.DataFrame) -> pd.DataFrame:
    """Validation scores averaged per validation probe (over the folds it validated), like the test table."""
    if validation.empty:
        return validation
    num = [c for c in validation.columns if c in tracking.METRICS or c.startswith("baseline_")]
    return validation.groupby(["probe_id", "region"], sort=True)[num].mean().reset_index()


def _log_parent_results(client: Any, rid: str, per_probe: pd.DataFrame, predictions: pd.DataFrame,
                        train_seconds: float, n_models: int, n_skipped: int, *,
                        validation: pd.DataFrame | None = None, ensemble: pd.DataFrame | None = None,
                        interval_nominal: float | None = None) -> None:
    """Aggregate metrics (``mean_<m>``, ``median_<m>`` over probes; ``val_mean_<m>`` over validation probes),
    the ensemble's (``mean_ensemble_<m>``, ``mean_interval_coverage``) and the tables as Parquet artifacts."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    cols = [c for c in per_probe.columns if c in tracking.METRICS or c.startswith(("baseline_", "ensemble_", "interval_"))]
    metrics = [Metric("train_seconds", train_seconds, now, 0), Metric("n_models", float(n_models), now, 0),
               Metric("n_test_probes", float(len(per_probe)), now, 0),
               Metric("n_skipped_probes", float(n_skipped), now, 0)]
    if interval_nominal is not None:
        metrics.append(Metric("interval_nominal", float(interval_nominal), now, 0))
    for c in cols:
        for stat, f in zip(tracking.AGGREGATES, (np.nanmean, np.nanmedian)):
            v = per_probe[c].to_numpy(dtype=float)
            if np.isfinite(v).any():
                metrics.append(Metric(f"{stat}_{c}", float(f(v)), now, 0))
    tables = [(tracking.ART_PER_PROBE, per_probe), (tracking.ART_PREDICTIONS, predictions)]
    if validation is not None and not validation.empty:
        vpp = validation_per_probe(validation)
        for c in vpp.columns:
            if c in tracking.METRICS or c.startswith("baseline_"):
                v = vpp[c].to_numpy(dtype=float)
                if np.isfinite(v).any():
                    metrics.append(Metric(f"{tracking.VAL_PREFIX}mean_{c}", float(np.nanmean(v)), now, 0))
        tables.append((tracking.ART_VALIDATION, validation))
    if ensemble is not None:
        tables.append((tracking.ART_ENSEMBLE, ensemble))
    client.log_batch(rid, metrics=metrics)
    with tempfile.TemporaryDirectory() as d:
        for art, df in tables:
            local = Path(d) / Path(art).name
            _write_parquet(df, local)
            client.log_artifact(rid, str(local), str(Path(art).parent))


def _register_final(params: Params, client: Any, exp_id: str, rid: str, engine_name: str, weights: list,
                    stats: tuple[np.ndarray, np.ndarray], tens: Any, train_loss: np.ndarray,
                    level_meta: dict | None = None) -> None:
    """Log the final model (all probes) with signature, input example and its normalisation; register it.

    ``level_meta`` (anomaly target): the level model; the network's output is then ssm - level."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from soilmoisture.model.keras_model import build_model
    from soilmoisture.model.interface import normalise

    name = tracking.registered_model_name(params.tracking.registered_model_prefix, params.variant.name)
    F = tens.x.shape[-1]
    net = build_model(params.model, F)
    net.set_weights(weights)
    meta = {"variant": params.variant.name, "features": list(tens.features), "mean": [float(v) for v in stats[0]],
            "std": [float(v) for v in stats[1]], "target": "ssm", "units": "m3/m3", "cell": params.model.cell,
            "input": "(x - mean) / std per feature, NaN -> 0; shape (series, days, features)",
            "data_source": params.data.source, "engine": engine_name, "protocol_run_id": rid,
            "target": params.protocol.target, "features_options": params.to_dict()["features"]}
    if level_meta is not None:
        meta["level_model"] = level_meta
    sig = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, F))]),
                         outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, 1))]))
    example = normalise(tens.x[:1, :30], stats[0][None, None], stats[1][None, None])
    tags = {MLFLOW_PARENT: rid, tracking.TAG_KIND: "final", tracking.TAG_VARIANT: params.variant.name,
            tracking.TAG_SOURCE: params.data.source, tracking.TAG_ENGINE: engine_name}
    child = client.create_run(exp_id, run_name=f"final-{params.variant.name}", tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(child.info.run_id, metrics=[Metric("train_loss", float(v), now, e)
                                                 for e, v in enumerate(train_loss) if np.isfinite(v)])
    client.log_dict(child.info.run_id, meta, tracking.ART_NORMALISATION)
    from importlib.metadata import version

    reqs = [f"{p}=={version(p)}" for p in ("mlflow", "keras", "tensorflow-cpu")]
    with mlflow.start_run(run_id=child.info.run_id, nested=True), quiet_keras():
        info = mlflow.tensorflow.log_model(net, name=tracking.MODEL_ARTIFACT, signature=sig, input_example=example,
                                           pip_requirements=reqs, metadata=meta, registered_model_name=name)
    ver = tracking.finish_registration(client, rid, child.info.run_id, name, info)
    log.info("final model registered as %s version %s", name, ver)

