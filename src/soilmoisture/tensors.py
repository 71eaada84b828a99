"""Arrays for the network: the daily and probe tables -> X (P, T, F), y (P, T), built once per run.

Thesis 3.3.1: every probe's series is stacked into a (probes, timesteps, features) tensor, padded to
the full daily range (missing days stay NaN here; they become 0 after normalisation, see
``model.interface.normalise``). Dynamic features come from the daily table, static ones from the probe
table repeated over all days. ``landcover_code`` is used as a plain numeric feature, as the thesis did
(DLM_minimum: "dynamic variables and land cover"), although CORINE codes are categories, not quantities;
the derived features of :mod:`soilmoisture.features` (``lc_<code>`` one-hot, ``irrigated``, sigma0 in dB at a
reference angle, the change-detection index, overpass masks and ages) are computed here from the raw columns,
their per-probe references from the fit days only (``fit_end``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from soilmoisture import features as feat
from soilmoisture.errors import DataError, ProtocolError
from soilmoisture.schema import OPTIONAL_DAILY_COLUMNS, STATIC_FEATURES, TARGET

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
                  probes_path: str = "probes.parquet", fit_end: str | None = None,
                  options: feat.FeatureOptions | None = None) -> Tensors:
    """Build the tensors of the probes whose land cover is in ``landcover`` (None = all).

    ``start``/``end`` (YYYY-MM-DD) fix the daily range every series is padded to (default: the
    table's own range). ``drop_flagged`` removes SSM above the quality threshold
    (``ssm_flag_gt50``; quality.drop_flagged_ssm). Raises DataError for a missing column and
    ProtocolError when the land-cover filter leaves no probe of ``variant``. ``features`` may name derived
    features and groups (:mod:`soilmoisture.features`); ``fit_end`` (YYYY-MM-DD, None = every day): derived
    per-probe references use only the days before it (known site: ``protocol.split_date``).
    """
    features = feat.expand(list(features))
    derived = [f for f in features if f in feat.DERIVED]
    raw_needed = [r for r in feat.raw_inputs(derived) if r not in features and r not in feat.OPTIONAL_INPUTS]
    for col in ("probe_id", "date", TARGET):
        if col not in daily.columns:
            raise DataError(daily_path, "column is missing from the daily table", field=col)
    if "probe_id" not in probes.columns:
        raise DataError(probes_path, "column is missing from the probe table", field="probe_id")
    plain = [f for f in features if f not in feat.DERIVED]
    static = [f for f in plain if f in STATIC_FEATURES]
    dynamic = [f for f in plain if f not in STATIC_FEATURES]
    raw_static = [r for r in raw_needed if r in STATIC_FEATURES]
    raw_dynamic = [r for r in raw_needed if r not in STATIC_FEATURES]
    absent = [f for f in dynamic + raw_dynamic if f in OPTIONAL_DAILY_COLUMNS and f not in daily.columns]
    if absent:  # e.g. LST: only some sources have it; the feature stays empty (0 after normalisation)
        log.warning("variant %s: optional column(s) %s not in %s: left empty (NaN)", variant, ", ".join(absent),
                    daily_path)
        daily = daily.assign(**{f: np.nan for f in absent})
    for f in dynamic + raw_dynamic:
        if f not in daily.columns:
            what = "feature" if f in dynamic else "input of a derived feature"
            raise DataError(daily_path, f"{what} of variant {variant!r} is missing from the daily table", field=f)
    for f in static + raw_static + (["landcover_code"] if landcover is not None else []):
        if f not in probes.columns:
            what = "feature" if f in static else "input (land cover) of a derived feature"
            raise DataError(probes_path, f"{what} of variant {variant!r} is missing from the probe table", field=f)

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

    def daily_col(f: str) -> np.ndarray:
        return d[f].to_numpy(dtype=np.float64, na_value=np.nan).reshape(P, T)

    def probe_col(f: str) -> np.ndarray:
        return pd.to_numeric(pt.loc[ids, f], errors="coerce").to_numpy(dtype=np.float64)

    extra: dict[str, np.ndarray] = {}
    if derived:
        dyn_in = {r: daily_col(r) for r in feat.raw_inputs(derived) if r not in STATIC_FEATURES and r in d.columns}
        st_in = {r: probe_col(r) for r in feat.raw_inputs(derived) if r in STATIC_FEATURES and r in pt.columns}
        fit_days = None if fit_end is None else np.asarray(dates < pd.Timestamp(fit_end))
        extra = feat.derive(derived, dyn_in, st_in, fit_days, options)
    for j, f in enumerate(features):
        if f in extra:
            v = extra[f]
            x[:, :, j] = v[:, None] if v.ndim == 1 else v
        elif f in dynamic:
            x[:, :, j] = daily_col(f)
        else:  # static: one value per probe, repeated over days
            x[:, :, j] = probe_col(f)[:, None]
    y = d[TARGET].to_numpy(dtype=np.float64, na_value=np.nan).reshape(P, T).astype(np.float32)

    def col(name: str, default: str) -> list[str]:
        return [str(v) if pd.notna(v) else default for v in pt.loc[ids, name]] if name in pt.columns else [default] * P

    lcs = (pd.to_numeric(pt.loc[ids, "landcover_code"], errors="coerce").fillna(-1).astype(int).to_numpy()
           if "landcover_code" in pt.columns else np.full(P, -1))
    return Tensors(x=x, y=y, probe_ids=list(ids), dates=dates, features=list(features),
                   networks=col("network", "?"), regions=col("region", "?"), landcover=lcs)
