"""Network-informed maps (``map.method: network``): the satellite map and the region's own probes together.

Every pixel's satellite series (the registered model, :mod:`.predict`) is combined with the region's probe
readings of the same days exactly as the protocol's network-informed mode combines them for a left-out probe
(:mod:`soilmoisture.protocol.network`): the probes' standardised anomalies, screened for flatlines and jumps,
are interpolated to the pixel by a Gaussian process over distance, so the map honours the probes' readings of
the day near them and falls back to the satellite pattern far from them. The interval is the GP's: it is
narrow near a probe and widens with distance (``ssm_pLL``/``ssm_pHH`` = estimate -+ z * spread * GP SD).

The probes are the published table's (``paths.processed``: the readings that passed the quality gate), all
probes of ``map.region``; the shares ``w`` (dynamics from the network) and ``lam`` (level from the satellite)
are ``protocol.network_w``/``network_lam`` where they are numbers, else the median of what the folds of the
model's protocol run chose on their validation probes, else the defaults of protocol/network.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.protocol import network as nw

log = logging.getLogger(__name__)

DISTANCE_BINS_KM = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, np.inf)


@dataclass
class DistanceValidation:
    """Map errors against the truth by distance to the nearest probe, for the network map and the satellite map."""

    sums: dict[str, np.ndarray] = field(default_factory=lambda: {
        k: np.zeros(len(DISTANCE_BINS_KM) - 1) for k in ("n", "ae_net", "ae_sat", "e_net", "e_sat")})

    def add(self, dist_km: np.ndarray, est: np.ndarray, sat: np.ndarray, truth: np.ndarray) -> None:
        """dist_km (N,); est, sat, truth (D, N) m3/m3."""
        b = np.clip(np.searchsorted(DISTANCE_BINS_KM, dist_km, side="right") - 1, 0, len(DISTANCE_BINS_KM) - 2)
        ok = np.isfinite(est) & np.isfinite(sat) & np.isfinite(truth)
        for key, v in (("n", ok.astype(float)), ("ae_net", np.where(ok, np.abs(est - truth), 0.0)),
                       ("ae_sat", np.where(ok, np.abs(sat - truth), 0.0)), ("e_net", np.where(ok, est - truth, 0.0)),
                       ("e_sat", np.where(ok, sat - truth, 0.0))):
            self.sums[key] += np.bincount(b, weights=v.sum(axis=0), minlength=len(self.sums[key]))

    def table(self) -> pd.DataFrame:
        s = self.sums
        rows = []
        for i in range(len(DISTANCE_BINS_KM) - 1):
            n = s["n"][i]
            if n == 0:
                continue
            lo, hi = DISTANCE_BINS_KM[i], DISTANCE_BINS_KM[i + 1]
            rows.append({"distance_km": f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}", "n_pixel_days": int(n),
                         "mae_network": s["ae_net"][i] / n, "mae_satellite": s["ae_sat"][i] / n,
                         "bias_network": s["e_net"][i] / n, "bias_satellite": s["e_sat"][i] / n})
        return pd.DataFrame(rows)


@dataclass
class MapNetwork:
    """The region's probes, ready to inform every window of a map."""

    pool: nw.Pool                 # xy in km of the map grid's CRS
    first: int                    # index of the first requested day in the series
    w: float
    lam: float
    transform: Any                # the region grid's affine transform
    z: float                      # normal quantile of the interval (NaN = no interval)
    shares_source: str
    validation: DistanceValidation = field(default_factory=DistanceValidation)

    def pixel_xy(self, win: Any) -> np.ndarray:
        """(N, 2) km coordinates of the window's pixel centres (row-major, as the cube's pixels)."""
        rows, cols = np.mgrid[int(win.row_off):int(win.row_off + win.height), int(win.col_off):int(win.col_off + win.width)]
        t = self.transform
        x = t.c + (cols.ravel() + 0.5) * t.a + (rows.ravel() + 0.5) * t.b
        y = t.f + (cols.ravel() + 0.5) * t.d + (rows.ravel() + 0.5) * t.e
        return np.column_stack([x, y]) / 1000.0

    def distance_km(self, win: Any) -> np.ndarray:
        xy = self.pixel_xy(win)
        if not len(self.pool.xy):
            return np.full(len(xy), np.inf)
        d = np.hypot(xy[:, None, 0] - self.pool.xy[None, :, 0], xy[:, None, 1] - self.pool.xy[None, :, 1])
        return d.min(axis=1)

    def apply(self, win: Any, sat_full: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(estimate, lower, upper), each (D, N) float32, from the window's satellite series ``sat_full`` (S, N)."""
        sat = np.asarray(sat_full, dtype=np.float64).T                     # (N, S)
        with np.errstate(invalid="ignore"):
            sat_mean = np.nanmean(np.where(np.isfinite(sat), sat, np.nan), axis=1) if sat.size else np.zeros(0)
        req = sat[:, self.first:]
        if len(self.pool.level):
            zhat, zsd = nw.interpolate(self.pool.xy, self.pool.z[:, self.first:], self.pixel_xy(win), self.pool.kernel)
        else:
            zhat, zsd = np.zeros_like(req), np.ones_like(req)
        comp = {"sat": req, "sat_mean": np.nan_to_num(sat_mean), "zhat": zhat, "zsd": zsd}
        est, band = nw.combine(comp, self.pool, self.w, self.lam)
        est = np.where(np.isfinite(req), np.maximum(est, 0.0), np.nan)      # nodata stays nodata; SSM >= 0
        if not np.isfinite(self.z):
            return est.T.astype(np.float32), None, None
        lo = np.maximum(est - self.z * band, 0.0)
        hi = est + self.z * band
        return est.T.astype(np.float32), lo.T.astype(np.float32), hi.T.astype(np.float32)


def _probe_series(processed: Path, region: str, series: pd.DatetimeIndex) -> tuple[np.ndarray, pd.DataFrame]:
    daily_p, probes_p = processed / "daily.parquet", processed / "probes.parquet"
    for p in (daily_p, probes_p):
        if not p.is_file():
            raise DataError(p, "not found; map.method network reads the probes' readings from the published table "
                               "(run `soilmoisture validate` first)")
    probes = pd.read_parquet(probes_p)
    probes = probes.loc[probes["region"] == region].reset_index(drop=True)
    if probes.empty:
        raise DataError(probes_p, f"no probes in region {region!r}: map.method network needs the region's probes",
                        field="region")
    daily = pd.read_parquet(daily_p, columns=["probe_id", "date", "ssm"])
    daily = daily.loc[daily["probe_id"].isin(probes["probe_id"])]
    wide = daily.pivot_table(index="probe_id", columns="date", values="ssm", aggfunc="mean", dropna=False)
    y = wide.reindex(index=probes["probe_id"], columns=series).to_numpy(dtype=np.float64)
    return y, probes


def _shares(params: Any, model_meta: dict) -> tuple[float, float, str]:
    """(w, lam, where they come from): parameters, the model's protocol run, or the defaults."""
    pr = params.protocol
    w = None if pr.network_w == "auto" else float(pr.network_w)
    lam = None if pr.network_lam == "auto" else float(pr.network_lam)
    source = "protocol.network_w/network_lam"
    if w is None or lam is None:
        rid = str(model_meta.get("protocol_run_id") or "")
        chosen = _chosen_by_folds(rid) if rid else {}
        if chosen:
            source = f"median of the folds' validation choices in protocol run {rid}"
        else:
            source = "defaults of protocol/network.py (the model's protocol run chose none)"
        w = w if w is not None else chosen.get("network_w", nw.DEFAULT_W)
        lam = lam if lam is not None else chosen.get("network_lam", nw.DEFAULT_LAM)
    return float(w), float(lam), source


def _chosen_by_folds(rid: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        exp = client.get_run(rid).info.experiment_id
        runs = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{rid}' and tags.kind = 'fold'",
                                  max_results=5000)
    except Exception as e:  # noqa: BLE001 - a missing run only means: no choices to reuse
        log.warning("network map: protocol run %s not readable (%s)", rid, str(e).splitlines()[0])
        return {}
    out = {}
    for k in ("network_w", "network_lam"):
        v = [r.data.metrics[k] for r in runs if k in r.data.metrics]
        if v:
            out[k] = float(np.median(v))
    return out


def build(params: Any, grid: Any, series: pd.DatetimeIndex, first: int, model_meta: dict,
          coverage: float | None) -> MapNetwork:
    """The map's network: the region's probes on ``series`` (the map's input days), positioned on ``grid``."""
    from pyproj import Transformer

    processed = params.path(params.paths.processed)
    y, probes = _probe_series(processed, params.map.region, series)
    fwd = Transformer.from_crs(4326, grid.crs.to_wkt() if hasattr(grid.crs, "to_wkt") else grid.crs, always_xy=True)
    x_m, y_m = fwd.transform(probes["lon"].to_numpy(dtype=float), probes["lat"].to_numpy(dtype=float))
    xy = np.column_stack([np.asarray(x_m), np.asarray(y_m)]) / 1000.0
    pr = params.protocol
    pool = nw.make_pool(y, np.arange(len(probes)), xy, flat_days=pr.network_flat_days, jump_k=pr.network_jump_k)
    w, lam, source = _shares(params, model_meta)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + coverage / 2)) if coverage is not None else float("nan")
    log.info("network map: %d of %d probes of %s inform it (%d flatlined and %d jumping readings screened out); "
             "w=%.2f lam=%.2f (%s)", len(pool.level), len(probes), params.map.region, pool.flatline, pool.jump, w,
             lam, source)
    return MapNetwork(pool, first, w, lam, grid.transform, z, source)


__all__ = ["DistanceValidation", "MapNetwork", "build"]
