"""Steps 5 and 7 of retraining: champion and challenger scored on the newly arrived days neither trained on, and on
the old days (:func:`matched_mae` on the same protocol, test probes, repeats and days), the rule :func:`decide`
(``retrain.margin_mae``, on the new days) and the alias move :func:`promote` (docs/retrain.md).

New days are the days after the live ``data.end`` (in known-site mode the challenger trains up to it). The
champion's predictions of them come from its stored models applied to the staged data: its fold models (unseen
site, ``models/folds`` of its protocol run: leave-one-probe-out, like the challenger's) or its registered
known-site model (per probe, calibrated).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from soilmoisture import tracking
from soilmoisture.config import Params
from soilmoisture.retrain.challenger import Champion, model_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    champion_mae: float | None    # None: no champion, or nothing to compare on
    challenger_mae: float
    n_probes: int
    n_days: int                   # matched (probe, repeat, day) rows with an observation (new days)
    note: str
    old_days: dict | None = None  # the same on the champion's old scored days (champion_mae, challenger_mae, ...)


@dataclass(frozen=True)
class Decision:
    outcome: Literal["promoted", "kept", "first_model"]
    promote: bool                 # move the alias (first_model: _register_final already set it)
    improvement: float | None     # champion MAE - challenger MAE (m3/m3), positive = challenger better
    reason: str


def matched_mae(champion: pd.DataFrame, challenger: pd.DataFrame) -> tuple[float, float, int, int]:
    """MAE of both prediction tables on the same (probe, repeat, day) rows, aggregated like ``mean_mae``.

    Rows are matched on ``probe_id, repeat, date``; the observation is the challenger's (the current data),
    and a row counts only when both predictions and the observation exist. Per (probe, repeat) MAE, mean
    over repeats, then mean over probes (as the protocol's ``mean_mae``). Returns (champion, challenger,
    probes, rows); NaN MAEs when nothing matches.
    """
    keys = ["probe_id", "repeat", "date"]
    a = champion[keys + ["ssm_pred"]].rename(columns={"ssm_pred": "champion"})
    b = challenger[keys + ["ssm", "ssm_pred"]].rename(columns={"ssm_pred": "challenger"})
    a["date"], b["date"] = pd.to_datetime(a["date"]), pd.to_datetime(b["date"])
    m = b.merge(a, on=keys, how="inner")
    m = m[np.isfinite(m["ssm"]) & np.isfinite(m["champion"]) & np.isfinite(m["challenger"])]
    if m.empty:
        return float("nan"), float("nan"), 0, 0
    m = m.assign(champion=(m["champion"] - m["ssm"]).abs(), challenger=(m["challenger"] - m["ssm"]).abs())
    per_probe = m.groupby(["probe_id", "repeat"])[["champion", "challenger"]].mean().groupby(level=0).mean()
    return float(per_probe["champion"].mean()), float(per_probe["challenger"].mean()), len(per_probe), len(m)


def decide(champion_mae: float | None, challenger_mae: float, margin: float) -> Decision:
    """Promote iff ``champion_mae - challenger_mae >= margin`` (retrain.margin_mae); no champion: first model."""
    if champion_mae is None:
        return Decision("first_model", False, None, "no champion before this run: the challenger became champion "
                        "when it was registered")
    if not (np.isfinite(champion_mae) and np.isfinite(challenger_mae)):
        return Decision("kept", False, None, "no common scored days with the champion: kept the champion")
    improvement = champion_mae - challenger_mae
    if improvement >= margin - 1e-12:   # tolerance: equal floats must not fall on the wrong side
        return Decision("promoted", True, improvement,
                        f"challenger MAE {challenger_mae:.5f} beats champion {champion_mae:.5f} by "
                        f"{improvement:.5f} >= margin {margin:.5f}")
    return Decision("kept", False, improvement,
                    f"challenger MAE {challenger_mae:.5f} vs champion {champion_mae:.5f}: improvement "
                    f"{improvement:.5f} < margin {margin:.5f}")


def _predictions(client: Any, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        local = client.download_artifacts(run_id, tracking.ART_PREDICTIONS, d)
        return pd.read_parquet(local)


def _options(opts: dict | None) -> Any:
    from soilmoisture.features import FeatureOptions

    return FeatureOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in (opts or {}).items()})


def split_scores(champion_new: pd.DataFrame | None, champion_old: pd.DataFrame, challenger: pd.DataFrame,
                 after: str) -> dict[str, dict]:
    """Matched MAEs on the days after ``after`` (YYYY-MM-DD; the champion's stored models re-applied) and on the
    days up to it (the champion's protocol predictions): ``{"new_days": {...}, "old_days": {...}}``."""
    cut = pd.Timestamp(after)
    chal = challenger.assign(date=pd.to_datetime(challenger["date"]))
    out = {}
    for key, champ, part in (("new_days", champion_new, chal[chal["date"] > cut]),
                             ("old_days", champion_old, chal[chal["date"] <= cut])):
        if champ is None or champ.empty or part.empty:
            out[key] = {"champion_mae": float("nan"), "challenger_mae": float("nan"), "n_probes": 0, "n_days": 0}
            continue
        a, b, n_p, n_r = matched_mae(champ, part)
        out[key] = {"champion_mae": a, "challenger_mae": b, "n_probes": n_p, "n_days": n_r}
    return out


def champion_new_predictions(params: Params, champion: Champion, sparams: Params, mode: str, after: str,
                             client: Any) -> pd.DataFrame | None:
    """The champion's stored models on the staged data: rows probe_id, repeat, date, ssm_pred after ``after``
    (None when its protocol run kept no fold models, i.e. it was trained before they were stored)."""
    from soilmoisture.model.site import FoldModels
    from soilmoisture.protocol.run import read_processed
    from soilmoisture.tensors import build_tensors

    daily, probes = read_processed(sparams.path(sparams.paths.processed))
    frames = []
    if mode == "known_site":
        from soilmoisture.model.predictor import load_site_model

        site = load_site_model(f"models:/{model_name(params)}/{champion.version}")
        tens = build_tensors(daily, probes, site.features, start=site.start, end=sparams.data.end,
                             fit_end=site.fit_end, options=_options(site.meta.get("features_options")))
        members = site.predict(site.network_predictions(tens.x), tens.probe_ids, tens.dates)["members"]
        for m in range(members.shape[0]):
            for n, pid in enumerate(tens.probe_ids):
                if pid in site.probes:
                    frames.append(pd.DataFrame({"probe_id": pid, "repeat": m, "date": tens.dates,
                                                "ssm_pred": members[m, n]}))
    else:
        with tempfile.TemporaryDirectory() as d:
            try:
                local = client.download_artifacts(champion.run_id, tracking.ART_FOLD_MODELS, d)
                fm = FoldModels.load(local)
            except Exception:  # noqa: BLE001 - an older champion: no fold models were stored with it
                return None
        tens = build_tensors(daily, probes, fm.features, start=fm.start, end=sparams.data.end,
                             options=_options(fm.options))
        for fold, pred in fm.predict(tens.x, tens.probe_ids):
            frames.append(pd.DataFrame({"probe_id": fold["test_probe"], "repeat": fold["repeat"], "date": tens.dates,
                                        "ssm_pred": pred}))
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True)
    return out[out["date"] > pd.Timestamp(after)]


def compare(params: Params, champion: Champion | None, challenger_run: str,
            sparams: Params | None = None) -> Comparison:
    """Champion vs challenger on the newly arrived days (after the live ``data.end``; read from the staged data of
    ``sparams``) and on the champion's old scored days; the decision uses the new days (docs/retrain.md)."""
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    client = MlflowClient(tracking.tracking_uri(params))
    chal = _predictions(client, challenger_run)
    chal_mae_all = client.get_run(challenger_run).data.metrics.get("mean_mae", float("nan"))
    if champion is None:
        return Comparison(None, float(chal_mae_all), int(chal["probe_id"].nunique()), len(chal), "no champion")
    champ_tags = client.get_run(champion.run_id).data.tags
    chal_tags = client.get_run(challenger_run).data.tags
    mode = chal_tags.get(tracking.TAG_MODE)
    if champ_tags.get(tracking.TAG_MODE) != mode:
        return Comparison(float("nan"), float(chal_mae_all), 0, 0,
                          f"protocol modes differ (champion {champ_tags.get(tracking.TAG_MODE)}, challenger "
                          f"{mode}): not comparable")
    after = params.data.end
    champ_new = None if sparams is None else champion_new_predictions(params, champion, sparams, mode, after, client)
    scores = split_scores(champ_new, _predictions(client, champion.run_id), chal, after)
    new, old = scores["new_days"], scores["old_days"]
    how = "leave-one-probe-out fold models" if mode == "unseen_site" else "known-site model, per probe"
    if new["n_days"] == 0:
        stored = "" if champ_new is not None else "; the champion has no stored models"
        note = f"no newly arrived observed day after {after} that both predict{stored}: kept"
    else:
        note = (f"new days: {new['n_days']} (probe, repeat, day) rows after {after} that neither trained on "
                f"(champion: its {how}); old days: {old['n_days']} rows")
    return Comparison(new["champion_mae"], new["challenger_mae"], new["n_probes"], new["n_days"], note, old)


def promote(params: Params, version: str) -> None:
    """Move alias ``champion`` of the retrained model to ``version``."""
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    MlflowClient(tracking.tracking_uri(params)).set_registered_model_alias(model_name(params),
                                                                           tracking.CHAMPION_ALIAS, version)
    log.info("alias %s of %s moved to version %s", tracking.CHAMPION_ALIAS, model_name(params), version)


__all__ = ["Comparison", "Decision", "champion_new_predictions", "compare", "decide", "matched_mae", "promote",
           "split_scores"]
