"""Known site, new period: the protocol's members and each probe's calibration as one registered model.

The model registered by a ``protocol.mode: known_site`` run is exactly the one evaluated: the repeats' members
trained on every probe's days before ``protocol.split_date``, with, for every probe that has training days, its
day-of-year climatology, its calibration per member (``protocol/calibration.py``), its level (anomaly target) and
its interval, all from those days only. :func:`build_site_model` computes them once; the protocol scores the
test period with :meth:`SiteModel.predict` and ``soilmoisture predict`` applies the same object, so both give
the same numbers (``tests/test_predict.py``). :func:`register_site_model` logs it as an MLflow pyfunc model whose
artifact is the site-model folder (``model/site.py``), registered as ``<prefix>-<variant>-known-site``.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from soilmoisture import tracking
from soilmoisture.config import Params
from soilmoisture.model.site import SiteModel, SiteProbe, member_prediction
from soilmoisture.protocol import baselines as bl
from soilmoisture.protocol import ensemble as en
from soilmoisture.protocol.calibration import fit_calibration

log = logging.getLogger(__name__)

ARTIFACT_KEY = "site_model"        # the pyfunc artifact holding the site-model folder


@dataclass(frozen=True)
class SiteFit:
    """The known-site model of a protocol run and its predictions of the probes it knows."""

    model: SiteModel
    probe_idx: np.ndarray          # (K,) tensor indices of the known probes, in ``model.probes`` order
    uncalibrated: np.ndarray       # (M, K, T) network (+ level) per member (m3/m3)
    members: np.ndarray            # (M, K, T) calibrated per member (= uncalibrated without site_calibration)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        pos = {int(p): i for i, p in enumerate(self.probe_idx)}
        return np.array([pos[int(p)] for p in idx], dtype=np.int64)


def _span(y_p: np.ndarray, days: np.ndarray, dates: pd.DatetimeIndex) -> tuple[str, str, int]:
    obs = np.flatnonzero(np.isfinite(y_p) & days)
    if not len(obs):
        return "", "", 0
    return f"{dates[obs[0]]:%Y-%m-%d}", f"{dates[obs[-1]]:%Y-%m-%d}", int(len(obs))


def build_site_model(params: Params, tens: Any, y: np.ndarray, y_fold: np.ndarray, eval_days: np.ndarray,
                     plans: list, weights: list, stats: list, own_level: np.ndarray | None, net: Any) -> SiteFit:
    """The site model of the known-site ``plans`` (one member each) with the fitted pieces of every probe that
    trains or is tested; ``y`` is only read on the training days (``~eval_days``)."""
    from soilmoisture.model.interface import normalise
    from soilmoisture.model.keras_model import predict_normalised

    pr = params.protocol
    train_days = ~eval_days
    idx = np.unique(np.concatenate([plans[0].train_idx, *[p.test_idx for p in plans]])).astype(np.int64)
    tmean = bl.train_mean(y_fold, plans[0].train_idx)
    raw = []
    for m, plan in enumerate(plans):
        net.set_weights(weights[m])
        raw.append(predict_normalised(net, normalise(tens.x[idx], *stats[m])))
    raw_a = np.stack(raw)                                       # (M, K, T) float32
    levels = np.zeros(len(idx)) if own_level is None else own_level[idx].astype(np.float64)
    M, K, T = raw_a.shape
    uncal = np.stack([[member_prediction(raw_a[m, k], levels[k], None, None) for k in range(K)] for m in range(M)])
    members = uncal.copy()
    probes: dict[str, SiteProbe] = {}
    for k, p in enumerate(idx):
        table = bl.climatology_table(y[p], tens.dates, train_days, tmean)
        clim = table[np.asarray(tens.dates.day_of_year) - 1]
        cals = [fit_calibration(y[p], uncal[m, k], clim, train_days) if pr.site_calibration else None
                for m in range(M)]
        for m in range(M):
            members[m, k] = member_prediction(raw_a[m, k], levels[k], cals[m], clim)
        mean = en.ensemble_mean(members[:, k])
        bounds = en.residual_bounds(np.where(train_days, y[p] - mean, np.nan), pr.interval)
        start, end, n = _span(y[p], train_days, tens.dates)
        probes[tens.probe_ids[p]] = SiteProbe(table, cals, float(levels[k]), bounds, start, end, n)
    default_level = float(np.nanmean(own_level[plans[0].train_idx])) if own_level is not None else 0.0
    meta = {"variant": params.variant.name, "data_source": params.data.source, "mode": "known_site",
            "target": pr.target, "features_options": params.to_dict()["features"], "split_date": pr.split_date,
            "site_calibration": bool(pr.site_calibration), "landcover": params.variant_spec.landcover,
            "drop_flagged_ssm": bool(params.quality.drop_flagged_ssm), "units": "m3/m3",
            # inputs without any value for the training probes (e.g. ts_max of the REMEDHUS export): an input
            # without them is what training saw; an input lacking any other feature is refused by predict
            "empty_in_training": [f for j, f in enumerate(tens.features)
                                  if not np.isfinite(tens.x[plans[0].train_idx][..., j]).any()]}
    model = SiteModel(features=list(tens.features), mean=np.stack([s[0] for s in stats[:M]]),
                      std=np.stack([s[1] for s in stats[:M]]), weights=[list(w) for w in weights[:M]],
                      hp=_hp_dict(params), start=f"{tens.dates[0]:%Y-%m-%d}", fit_end=pr.split_date, probes=probes,
                      default_level=default_level, interval=pr.interval, meta=meta)
    return SiteFit(model, idx, uncal, members)


def _hp_dict(params: Params) -> dict:
    import dataclasses

    return {f.name: getattr(params.model, f.name) for f in dataclasses.fields(params.model)}


class KnownSiteModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc face of :class:`SiteModel`: ``predict(daily)`` on a harmonised daily table holding the probes'
    static columns too; returns probe_id, date, ssm_pred, ssm_lower, ssm_upper, calibrated (``soilmoisture
    predict`` loads the folder itself and adds the input path and flags)."""

    def load_context(self, context: Any) -> None:
        self.site = SiteModel.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from soilmoisture.model.predictor import predict_site_table

        return predict_site_table(self.site, model_input, model_input.drop_duplicates("probe_id"))


def register_site_model(params: Params, client: Any, exp_id: str, rid: str, engine_name: str, site: SiteModel,
                        train_loss: np.ndarray) -> str:
    """Log ``site`` (pyfunc + its folder) in a ``final`` child run of ``rid`` and register it; returns the version."""
    from importlib.metadata import version

    import mlflow
    from mlflow.entities import Metric

    name = tracking.registered_model_name(params.tracking.registered_model_prefix, params.variant.name,
                                          mode="known_site")
    tags = {"mlflow.parentRunId": rid, tracking.TAG_KIND: "final", tracking.TAG_VARIANT: params.variant.name,
            tracking.TAG_SOURCE: params.data.source, tracking.TAG_ENGINE: engine_name, tracking.TAG_MODE: "known_site"}
    child = client.create_run(exp_id, run_name=f"final-{params.variant.name}-known-site", tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(child.info.run_id, metrics=[Metric("train_loss", float(v), now, e)
                                                 for e, v in enumerate(np.nanmean(train_loss, axis=0))
                                                 if np.isfinite(v)])
    meta = {**site.meta, "kind": "known_site", "features": list(site.features), "members": site.n_members,
            "probes": sorted(site.probes), "start": site.start, "fit_end": site.fit_end, "protocol_run_id": rid,
            "engine": engine_name}
    reqs = [f"{p}=={version(p)}" for p in ("mlflow", "keras", "tensorflow-cpu")]
    site.meta["protocol_run_id"] = rid
    with tempfile.TemporaryDirectory() as d:
        folder = site.save(Path(d) / ARTIFACT_KEY)
        with mlflow.start_run(run_id=child.info.run_id, nested=True):
            info = mlflow.pyfunc.log_model(name=tracking.MODEL_ARTIFACT, python_model=KnownSiteModel(),
                                           artifacts={ARTIFACT_KEY: str(folder)}, pip_requirements=reqs,
                                           metadata=meta, registered_model_name=name)
    ver = tracking.finish_registration(client, rid, child.info.run_id, name, info)
    log.info("known-site model (%d members, %d probes) registered as %s version %s", site.n_members,
             len(site.probes), name, ver)
    return ver


def log_fold_models(params: Params, client: Any, rid: str, tens: Any, plans: list, weights: list, stats: list,
                    levels: list[float]) -> None:
    """Every fold model of an unseen-site run as the artifact ``models/folds`` of the parent run: a retraining
    round scores the champion's folds on days that arrived later, leave-one-probe-out (``retrain/decide.py``)."""
    from soilmoisture.model.site import FoldModels

    folds = [{"repeat": int(p.repeat), "test_probe": p.test_probe, "seed": int(p.seed),
              "mean": [float(v) for v in stats[m][0]], "std": [float(v) for v in stats[m][1]],
              "level": float(levels[m])} for m, p in enumerate(plans)]
    fm = FoldModels(list(tens.features), _hp_dict(params), f"{tens.dates[0]:%Y-%m-%d}", params.to_dict()["features"],
                    folds, [list(weights[m]) for m in range(len(plans))])
    with tempfile.TemporaryDirectory() as d:
        client.log_artifacts(rid, str(fm.save(Path(d) / "folds")), tracking.ART_FOLD_MODELS)


__all__ = ["SiteFit", "build_site_model", "log_fold_models", "register_site_model"]
