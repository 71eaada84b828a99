"""How hard is a probe network? The statistics that say whether a simulated network is as hard as a real one.

Computed from a daily table of the data contract (``probe_id, date, ssm, sigma0_vv`` (linear) and, where the
source has it, ``sigma0_vh``) and, for the fall-off of correlation with distance, probe coordinates. The same
function runs on the real REMEDHUS export and on a simulated region (``scripts/realism_table.py``), over the
same period, so the two columns of the realism table in ``docs/simulation.md`` are comparable.

Statistics whose value depends on how many probes there are (inter-probe correlation, spread of probe
means, the network-day baseline) are computed on random subsets of ``subset_size`` probes (the real
REMEDHUS export has 5) and summarised as the mean over subsets and the 5-95 % range of the subsets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from soilmoisture.protocol import baselines

SSM_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MIN_PAIR_DAYS = 30              # days two series must share for a correlation to count
DISTANCE_BINS_KM = (0.0, 1.0, 5.0, 15.0, 40.0, np.inf)


@dataclass
class Stat:
    """One statistic: its value (mean over subsets where subsetting applies) and the subsets' 5-95 % range."""

    value: float
    lo: float = float("nan")
    hi: float = float("nan")

    def text(self, digits: int = 3) -> str:
        if not np.isfinite(self.value):
            return "n/a"
        v = f"{self.value:.{digits}f}"
        if np.isfinite(self.lo) and np.isfinite(self.hi) and (self.hi - self.lo) > 0.5 * 10 ** -digits:
            v += f" ({self.lo:.{digits}f}–{self.hi:.{digits}f})"
        return v


@dataclass
class NetworkStats:
    """The realism statistics of one network (see ``STAT_LABELS`` for what each key means)."""

    n_probes: int
    n_days: int
    period: tuple[str, str]
    stats: dict[str, Stat] = field(default_factory=dict)
    falloff: list[tuple[str, int, float]] = field(default_factory=list)   # (distance bin, pairs, mean r)


STAT_LABELS: dict[str, str] = {
    **{f"ssm_q{int(q * 100):02d}": f"daily SSM, {int(q * 100)} % quantile (m³/m³)" for q in SSM_QUANTILES},
    "acf_lag1": "lag-1 autocorrelation of daily SSM (median over probes)",
    "acf_lag10": "lag-10 autocorrelation of daily SSM (median over probes)",
    "pair_r_mean": "pairwise daily correlation of probes, mean",
    "pair_r_min": "pairwise daily correlation of probes, lowest pair",
    "pair_r_max": "pairwise daily correlation of probes, highest pair",
    "sd_probe_means": "SD of the probes' mean SSM (m³/m³)",
    "probe_mean_min": "lowest probe mean SSM (m³/m³)",
    "probe_mean_max": "highest probe mean SSM (m³/m³)",
    "network_day_mae": "network-day baseline (other probes' same-day mean): MAE (m³/m³)",
    "network_day_r": "network-day baseline: r",
    "train_mean_mae": "training-mean baseline (other probes' overall mean): MAE (m³/m³)",
    "climatology_mae": "climatology baseline (probe's own day-of-year mean, fit before the split): MAE (m³/m³)",
    "vv_db_p05": "σ⁰ VV, 5 % quantile (dB)",
    "vv_db_p95": "σ⁰ VV, 95 % quantile (dB)",
    "vh_db_p05": "σ⁰ VH, 5 % quantile (dB)",
    "vh_db_p95": "σ⁰ VH, 95 % quantile (dB)",
    "r_vv_ssm": "r(σ⁰ VV dB, SSM) on overpass days (median over probes)",
    "r_vh_ssm": "r(σ⁰ VH dB, SSM) on overpass days (median over probes)",
}


def _corr(a: np.ndarray, b: np.ndarray, min_n: int = MIN_PAIR_DAYS) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < min_n:
        return float("nan")
    x, y = a[ok], b[ok]
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _acf(y: np.ndarray, lag: int) -> float:
    """Autocorrelation at ``lag`` days of a daily series with gaps (pairs where both days are observed)."""
    return _corr(y[:-lag], y[lag:])


def _mae(pred: np.ndarray, obs: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(obs)
    return float(np.mean(np.abs(pred[ok] - obs[ok]))) if ok.any() else float("nan")


def _matrix(daily: pd.DataFrame, column: str, probes: list[str], dates: pd.DatetimeIndex) -> np.ndarray:
    if column not in daily:
        return np.full((len(probes), len(dates)), np.nan)
    wide = daily.pivot_table(index="probe_id", columns="date", values=column, aggfunc="mean", dropna=False)
    return wide.reindex(index=probes, columns=dates).to_numpy(dtype=np.float64)


def _subset_stats(y: np.ndarray, dates: pd.DatetimeIndex, fit_days: np.ndarray) -> dict[str, float]:
    """Count-dependent statistics of one subset of probes, y: (probes, days)."""
    n = len(y)
    pairs = [_corr(y[i], y[j]) for i, j in combinations(range(n), 2)]
    pairs = [p for p in pairs if np.isfinite(p)]
    means = np.array([np.nanmean(r) for r in y])
    nd_mae, nd_r, tm_mae, cl_mae = [], [], [], []
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        nd = baselines.network_day(y, others, ["net"] * n, "net", fallback=np.nan)
        nd_mae.append(_mae(nd, y[i]))
        nd_r.append(_corr(nd, y[i]))
        tm = baselines.train_mean(y, others)
        tm_mae.append(_mae(np.full(y.shape[1], tm), y[i]))
        clim = baselines.climatology(y[i], dates, fit_days, fallback=tm)
        cl_mae.append(_mae(np.where(fit_days, np.nan, clim), y[i]))
    return {"pair_r_mean": float(np.mean(pairs)) if pairs else np.nan,
            "pair_r_min": float(np.min(pairs)) if pairs else np.nan,
            "pair_r_max": float(np.max(pairs)) if pairs else np.nan,
            "sd_probe_means": float(np.std(means, ddof=1)) if n > 1 else np.nan,
            "probe_mean_min": float(np.min(means)), "probe_mean_max": float(np.max(means)),
            "network_day_mae": float(np.nanmean(nd_mae)), "network_day_r": float(np.nanmean(nd_r)),
            "train_mean_mae": float(np.nanmean(tm_mae)), "climatology_mae": float(np.nanmean(cl_mae))}


def network_stats(daily: pd.DataFrame, *, start: str, end: str, split_date: str,
                  coords_km: pd.DataFrame | None = None, subset_size: int = 5, n_subsets: int = 200,
                  seed: int = 0) -> NetworkStats:
    """The realism statistics of the probes in ``daily`` over ``start``..``end`` (inclusive).

    ``split_date``: the climatology baseline is fit on days before it and scored from it on (the known-site
    split). ``coords_km``: optional frame ``probe_id, x_km, y_km`` (a local metric projection) for the fall-off
    of inter-probe correlation with distance. With more than ``subset_size`` probes, the count-dependent
    statistics are averaged over ``n_subsets`` random subsets (seeded by ``seed``).
    """
    d = daily.loc[(daily["date"] >= pd.Timestamp(start)) & (daily["date"] <= pd.Timestamp(end))]
    d = d.loc[d.groupby("probe_id")["ssm"].transform(lambda s: s.notna().sum()) >= MIN_PAIR_DAYS]
    probes = sorted(d["probe_id"].astype(str).unique())
    if len(probes) < 2:
        raise ValueError(f"realism statistics need at least 2 probes with >= {MIN_PAIR_DAYS} SSM days in "
                         f"{start}..{end}; found {len(probes)}")
    d = d.assign(probe_id=d["probe_id"].astype(str))
    dates = pd.date_range(start, end, freq="D")
    y = _matrix(d, "ssm", probes, dates)
    vv, vh = _matrix(d, "sigma0_vv", probes, dates), _matrix(d, "sigma0_vh", probes, dates)
    with np.errstate(divide="ignore", invalid="ignore"):
        vv_db = np.where(vv > 0, 10 * np.log10(vv), np.nan)
        vh_db = np.where(vh > 0, 10 * np.log10(vh), np.nan)
    out = NetworkStats(len(probes), len(dates), (str(dates[0].date()), str(dates[-1].date())))
    s = out.stats
    obs = y[np.isfinite(y)]
    for q in SSM_QUANTILES:
        s[f"ssm_q{int(q * 100):02d}"] = Stat(float(np.quantile(obs, q)))
    s["acf_lag1"] = Stat(float(np.nanmedian([_acf(r, 1) for r in y])))
    s["acf_lag10"] = Stat(float(np.nanmedian([_acf(r, 10) for r in y])))
    fit_days = np.asarray(dates < pd.Timestamp(split_date))
    if len(probes) <= subset_size:
        subsets = [np.arange(len(probes))]
    else:
        rng = np.random.default_rng(seed)
        subsets = [np.sort(rng.choice(len(probes), subset_size, replace=False)) for _ in range(n_subsets)]
    per = pd.DataFrame([_subset_stats(y[idx], dates, fit_days) for idx in subsets])
    for k in per:
        v = per[k].dropna()
        s[k] = Stat(float(v.mean()), float(v.quantile(0.05)), float(v.quantile(0.95))) if len(per) > 1 and len(v) \
            else Stat(float(v.mean()) if len(v) else float("nan"))
    for name, a in (("vv", vv_db), ("vh", vh_db)):
        fin = a[np.isfinite(a)]
        s[f"{name}_db_p05"] = Stat(float(np.quantile(fin, 0.05)) if fin.size else float("nan"))
        s[f"{name}_db_p95"] = Stat(float(np.quantile(fin, 0.95)) if fin.size else float("nan"))
        rs = [_corr(a[i], y[i], min_n=20) for i in range(len(probes))]
        s[f"r_{name}_ssm"] = Stat(float(np.nanmedian(rs)) if np.isfinite(rs).any() else float("nan"))
    if coords_km is not None:
        out.falloff = _falloff(y, probes, coords_km)
    return out


def _falloff(y: np.ndarray, probes: list[str], coords_km: pd.DataFrame) -> list[tuple[str, int, float]]:
    xy = coords_km.set_index("probe_id").reindex(probes)[["x_km", "y_km"]].to_numpy(dtype=float)
    rows: dict[int, list[float]] = {}
    for i, j in combinations(range(len(probes)), 2):
        r = _corr(y[i], y[j])
        dist = float(np.hypot(*(xy[i] - xy[j])))
        if np.isfinite(r) and np.isfinite(dist):
            rows.setdefault(int(np.searchsorted(DISTANCE_BINS_KM, dist, side="right") - 1), []).append(r)
    out = []
    for k in sorted(rows):
        lo, hi = DISTANCE_BINS_KM[k], DISTANCE_BINS_KM[k + 1]
        label = f"{lo:g}–{hi:g} km" if np.isfinite(hi) else f"> {lo:g} km"
        out.append((label, len(rows[k]), float(np.mean(rows[k]))))
    return out


def local_km(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular kilometres around the points' centre (good to < 0.1 % over a network's extent)."""
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    lat0 = np.deg2rad(np.nanmean(lat))
    return (np.deg2rad(lon - np.nanmean(lon)) * 6371.0 * np.cos(lat0), np.deg2rad(lat - np.nanmean(lat)) * 6371.0)


def ratio_check(sim: NetworkStats, real: NetworkStats, max_ratio: float = 1.5) -> tuple[float, bool]:
    """How many times easier the simulated network-day baseline is than the real one (real MAE / sim MAE), and
    whether that is within ``max_ratio`` (issue 18's target: at most 1.5 x easier)."""
    ratio = real.stats["network_day_mae"].value / sim.stats["network_day_mae"].value
    return float(ratio), bool(ratio <= max_ratio)


def markdown(columns: dict[str, NetworkStats]) -> str:
    """The realism table: one row per statistic, one column per network."""
    names = list(columns)
    head = "| statistic | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    meta = ("| probes · days · period | " + " | ".join(
        f"{c.n_probes} · {c.n_days} · {c.period[0]}..{c.period[1]}" for c in columns.values()) + " |\n")
    lines = [head, meta]
    for key, label in STAT_LABELS.items():
        lines.append(f"| {label} | " + " | ".join(columns[n].stats.get(key, Stat(np.nan)).text() for n in names)
                     + " |\n")
    return "".join(lines)


def falloff_markdown(columns: dict[str, NetworkStats]) -> str:
    """Mean pairwise correlation by distance, per network that has coordinates."""
    out = []
    for name, c in columns.items():
        if not c.falloff:
            continue
        out.append(f"| {name}: distance | pairs | mean r |\n|---|---|---|\n")
        out.extend(f"| {label} | {n} | {r:.3f} |\n" for label, n, r in c.falloff)
        out.append("\n")
    return "".join(out)
