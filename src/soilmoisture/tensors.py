"""Arrays for the network: the daily and probe tables -> X (P, T, F), y (P, T), built once per run.

Thesis 3.3.1: every probe's series is stacked into a (probes, timesteps, features) tensor, padded to
the full daily range (missing days stay NaN here; they become 0 after normalisation, see
``model.interface.normalise``). Dynamic features come from the daily table, static ones from the probe
table repeated over all days. ``landcover_code`` is used as a plain numeric feature, as the thesis did
(DLM_minimum: "dynamic variables and land cover"), although CORINE codes are categories, not quantities.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError, ProtocolError
from soilmoisture.schema import STATIC_FEATURES, TARGET

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tensors:
    """Model inputs of the probes of one variant (all arrays share the probe order of ``probe_ids``)."""

    x: np.ndarray            # (P, T, F) float32 raw features, NaN = missing
    y: np.ndarray            # (P, T) float32 SSM (m3/m3), NaN = not observed
    probe_ids: list[str]
    dates: pd.DatetimeIndex  # (T,) days
    features: list[str]      # (F,) feature names, in the order of the last axis
    networks: list[str]      # (P,) network of each probe
    regions: list[str]       # (P,) region of each probe
    landcover: np.ndarray    # (P,) int CORINE code (-1 where unknown)

    @property
    def observed(self) -> np.ndarray:
        """(P,) number of days with an observed target per probe."""
        return np.isfinite(self.y).sum(axis=1)


def build_tensors(daily: pd.DataFrame, probes: pd.DataFrame, features: list[str], *,
                  landcover: list[int] | None = None, start: str | None = None, end: str | None = None,
                  drop_flagged: bool = False, variant: str = "?", daily_path: str = "daily.parquet",
                  probes_path: str = "probes.parquet") -> Tensors:
    """Build the tensors of the probes whose land cover is in ``landcover`` (None = all).

    ``start``/``end`` (YYYY-MM-DD) fix the daily range every series is padded to (default: the
    table's own range). ``drop_flagged`` removes SSM above the quality threshold
    (``ssm_flag_gt50``; quality.drop_flagged_ssm). Raises DataError for a missing column and
    ProtocolError when the land-cover filter leaves no probe of ``variant``.
    """
    for col in ("probe_id", "date", TARGET):
        if col not in daily.columns:
            raise DataError(daily_path, "column is missing from the daily table", field=col)
    if "probe_id" not in probes.columns:
        raise DataError(probes_path, "column is missing from the probe table", field="probe_id")
    static = [f for f in features if f in STATIC_FEATURES]
    dynamic = [f for f in features if f not in STATIC_FEATURES]
    for f in dynamic:
        if f not in daily.columns:
            raise DataError(daily_path, f"feature of variant {variant!r} is missing from the daily table", field=f)
    for f in static + (["landcover_code"] if landcover is not None else []):
        if f not in probes.columns:
            raise DataError(probes_path, f"feature of variant {variant!r} is missing from the probe table", field=f)

    pt = probes.drop_duplicates("probe_id").set_index("probe_id")
    ids = sorted(set(daily["probe_id"].astype(str)) & set(pt.index.astype(str)))
    missing = sorted(set(daily["probe_id"].astype(str)) - set(pt.index.astype(str)))
    if missing:
        log.warning("probes in the daily table but not in the probe table are ignored: %s", ", ".join(missing))
    if landcover is not None:
        lc = pt["landcover_code"]
        ids = [p for p in ids if pd.notna(lc.get(p)) and int(lc[p]) in set(landcover)]
    if not ids:
        raise ProtocolError(f"variant {variant!r}: no probe left after the land-cover filter {landcover}")

    d = daily.copy()
    d["probe_id"] = d["probe_id"].astype(str)
    d["date"] = pd.to_datetime(d["date"]).dt.normalize()
    d = d[d["probe_id"].isin(ids)]
    dates = pd.date_range(start or d["date"].min(), end or d["date"].max(), freq="D")
    d = d[(d["date"] >= dates[0]) & (d["date"] <= dates[-1])]
    if drop_flagged and "ssm_flag_gt50" in d.columns:
        d.loc[d["ssm_flag_gt50"].fillna(False).astype(bool), TARGET] = np.nan
    d = d.drop_duplicates(["probe_id", "date"], keep="last").set_index(["probe_id", "date"])
    full = pd.MultiIndex.from_product([ids, dates], names=["probe_id", "date"])
    d = d.reindex(full)  # pad every series to the full daily range (thesis 3.3.1)

    P, T = len(ids), len(dates)
    x = np.full((P, T, len(features)), np.nan, dtype=np.float32)
    for j, f in enumerate(features):
        if f in dynamic:
            x[:, :, j] = d[f].to_numpy(dtype=np.float64, na_value=np.nan).reshape(P, T)
        else:  # static: one value per probe, repeated over days
            x[:, :, j] = pd.to_numeric(pt.loc[ids, f], errors="coerce").to_numpy(dtype=np.float64)[:, None]
    y = d[TARGET].to_numpy(dtype=np.float64, na_value=np.nan).reshape(P, T).astype(np.float32)

    def col(name: str, default: str) -> list[str]:
        return [str(v) if pd.notna(v) else default for v in pt.loc[ids, name]] if name in pt.columns else [default] * P

    lcs = (pd.to_numeric(pt.loc[ids, "landcover_code"], errors="coerce").fillna(-1).astype(int).to_numpy()
           if "landcover_code" in pt.columns else np.full(P, -1))
    return Tensors(x=x, y=y, probe_ids=list(ids), dates=dates, features=list(features),
                   networks=col("network", "?"), regions=col("region", "?"), landcover=lcs)
