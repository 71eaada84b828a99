"""Steps 5 and 7 of retraining: champion and challenger scored on the same protocol, test probes, repeats and
days (:func:`matched_mae`), the rule :func:`decide` (``retrain.margin_mae``) and the alias move :func:`promote`."""
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
    n_days: int                   # matched (probe, repeat, day) rows with an observation
    note: str


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


def compare(params: Params, champion: Champion | None, challenger_run: str) -> Comparison:
    """Champion vs challenger on the same protocol, probes, repeats and days (rule and limits: docs/retrain.md)."""
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    client = MlflowClient(tracking.tracking_uri(params))
    chal = _predictions(client, challenger_run)
    chal_mae_all = client.get_run(challenger_run).data.metrics.get("mean_mae", float("nan"))
    if champion is None:
        return Comparison(None, float(chal_mae_all), int(chal["probe_id"].nunique()), len(chal), "no champion")
    champ_tags = client.get_run(champion.run_id).data.tags
    chal_tags = client.get_run(challenger_run).data.tags
    if champ_tags.get(tracking.TAG_MODE) != chal_tags.get(tracking.TAG_MODE):
        return Comparison(float("nan"), float(chal_mae_all), 0, 0,
                          f"protocol modes differ (champion {champ_tags.get(tracking.TAG_MODE)}, challenger "
                          f"{chal_tags.get(tracking.TAG_MODE)}): not comparable")
    a, b, n_probes, n_rows = matched_mae(_predictions(client, champion.run_id), chal)
    return Comparison(a, b, n_probes, n_rows, "matched on the champion's scored (probe, repeat, day) rows")


def promote(params: Params, version: str) -> None:
    """Move alias ``champion`` of the retrained model to ``version``."""
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    MlflowClient(tracking.tracking_uri(params)).set_registered_model_alias(model_name(params),
                                                                           tracking.CHAMPION_ALIAS, version)
    log.info("alias %s of %s moved to version %s", tracking.CHAMPION_ALIAS, model_name(params), version)


__all__ = ["Comparison", "Decision", "compare", "decide", "matched_mae", "promote"]
