"""Daily 10 m soil-moisture maps: per-window feature cubes -> the registered LSTM -> Cloud-Optimised GeoTIFFs.

Thesis 4.2 / Fig. 28 applies the trained network to every pixel's series. Here the area of interest is cut
into ``map.window_px`` windows; for each window a feature cube (pixels x days x features) is built exactly
the way :mod:`soilmoisture.harmonise` builds a probe's series (thesis 3.2):

* sigma0 (linear) on overpass days, scenes of one day averaged, outliers removed *per pixel* by the z-score
  rule over the pixel's whole series, then sigma0 <= ``sigma0_max`` (3.2.2). The statistics use the days of
  ``data.start..data.end`` (plus the map period when it reaches outside), the range harmonise uses, so a
  probe's pixel gets the same series as in training;
* NDVI/NDWI from every Sentinel-2 scene, cloud/snow masked, interpolated at most ``vi_max_gap_days`` (3.2.3);
* weather of the region's station (nearest the area's centre) broadcast to every pixel, dry days counted
  from the start of the series (3.2.4);
* static layers (elevation, slope, aspect, CORINE) per pixel (3.2.5).

The series starts at a warm-up before ``map.start`` (``data.start``, the start of the training series) so the
recurrent state is spun up as in training; only the requested days are written. The cube is kept factorised
(per-pixel dynamic features (T, N, Fd), weather (T, Fw), static (N, Fs)): the first LSTM layer's input
projection is linear, so weather and static terms are projected once instead of for every pixel and day.
Prediction runs in JAX with pixels as the batch axis, float32, fixed-size pixel batches (one compilation,
and a pixel's value does not depend on its neighbours in the batch: windowed == whole-array maps).

Memory is bounded by one window (``window_px``^2 pixels x series days x a few features), whatever the area.
Pure functions first, file access (readers, the stage :func:`run`) after.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from soilmoisture.config import Params, Runner
from soilmoisture.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Feature groups by how they vary in space and time.
PIXEL_DYNAMIC = ("sigma0_vv", "sigma0_vh", "incidence_angle_deg", "ndvi", "ndwi")
WEATHER = ("precip_mm", "dry_days", "ta_min", "ta_mean", "ta_max")
PIXEL_STATIC = ("elevation_m", "slope_pct", "aspect_x", "aspect_y", "landcover_code")

# CORINE classes where the model must not speak (see ``speaks``): water bodies 5xx (e.g. 512; every thesis probe
# is on land) and artificial surfaces 1xx (built-up: no soil).

# sigma0 older than this (days) is "missing input": one Sentinel-1 repeat cycle (12 days, S1A alone).
# Training series had an overpass every 1.5-3 days; a pixel-day without any radar look for a full cycle
# means the archive has a gap there, and the map stays nodata rather than guess from weather alone.
SIGMA0_MAX_AGE_DAYS = 12

PREDICT_THREADS = min(os.cpu_count() or 1, 4)   # concurrent compiled calls (pixel batches)
COG_OVERVIEWS_MIN_PX = 2048  # overviews only for maps wider than this: on a 883-band stack they triple the COG
                             # conversion time, and small maps are viewed at full resolution (quicklooks for a look)
GDAL_CACHE_MB = 256          # GDAL block cache while mapping (default 5 % of RAM): memory stays bounded
PIXEL_BATCH = 256           # pixels per compiled call (padded); one core, session 2: 128/256/512/1024 ->
                            # 3.7/4.4/2.0/3.5 M pixel-days/s (256 keeps the gate arrays in cache)
NODATA = float("nan")       # output nodata (float32 COG)
MAX_QUICKLOOKS = 6          # PNG quicklooks per map (days evenly spread over the period)


# ----------------------------------------------------------------------------------------------
# pure part: arrays in, arrays out
# ----------------------------------------------------------------------------------------------
def day_numbers(dates: Any) -> np.ndarray:
    """Whole days since 1970-01-01 (int64) of dates/timestamps (any datetime unit)."""
    return np.asarray(pd.DatetimeIndex(pd.to_datetime(dates)).normalize().to_numpy(), "datetime64[D]").astype(np.int64)


def daily_mean(scene_days: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average scenes of the same day per pixel (ascending + descending, as the readers do).

    ``scene_days`` (K,) day numbers, ``values`` (K, ...) -> (unique days (D,), (D, ...) NaN-aware means).
    """
    days, inv = np.unique(scene_days, return_inverse=True)
    if len(days) == len(scene_days):
        order = np.argsort(scene_days)
        return scene_days[order], values[order]
    out = np.empty((len(days),) + values.shape[1:], values.dtype)
    for d in range(len(days)):
        rows = np.flatnonzero(inv == d)
        if len(rows) == 1:
            out[d] = values[rows[0]]
        else:  # float64 mean of the finite values (pandas groupby mean), NaN where none
            v = values[rows].astype(np.float64)
            n = np.isfinite(v).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[d] = np.where(n > 0, np.where(np.isfinite(v), v, 0.0).sum(axis=0) / n, np.nan)
    return days, out


def sigma0_outliers(sigma0: np.ndarray, zscore: float, sigma0_max: float) -> np.ndarray:
    """Boolean (D, N) mask of sigma0 to remove, per pixel over its series axis 0 (thesis 3.2.2).

    Same rule as :func:`soilmoisture.harmonise.remove_sigma0_outliers` per probe: |z| > ``zscore`` with the
    sample std (ddof=1; fewer than 2 values or std 0: no z-score outlier), then what is left above ``sigma0_max``.
    """
    s = sigma0.astype(np.float64)
    ok = np.isfinite(s)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, s, 0.0).sum(axis=0) / n
        var = np.where(ok, (s - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
        std = np.sqrt(var)
        z = (s - mean) / np.where(std > 0, std, np.nan)
    out = np.abs(z) > zscore                      # NaN compares False
    out |= (~out) & (s > sigma0_max)
    return out


def _last_valid(obs_days: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per observation row k and pixel: value and day of the newest valid observation at or before k, and of
    the oldest at or after k; (K + 1, N) each, with an all-NaN row appended for "none" (index -1 / K)."""
    K, N = obs.shape
    ok = np.isfinite(obs)
    k = np.arange(K)[:, None]
    cols = np.arange(N)[None, :]
    prev = np.maximum.accumulate(np.where(ok, k, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(ok, k, K)[::-1], axis=0)[::-1]
    nan_row = np.full((1, N), np.nan, np.float32)
    out = []
    for idx, has in ((prev, prev >= 0), (nxt, nxt < K)):
        c = np.clip(idx, 0, K - 1)
        out.append(np.concatenate([np.where(has, obs[c, cols], np.nan).astype(np.float32), nan_row]))
        # days relative to the first observation: exact in float32
        out.append(np.concatenate([np.where(has, (obs_days[c] - obs_days[0]).astype(np.float32), np.nan), nan_row]))
    return out[0], out[1], out[2], out[3]


def interpolate_limited_grid(obs_days: np.ndarray, obs: np.ndarray, days: np.ndarray, max_gap: int,
                             chunk: int = 8192) -> np.ndarray:
    """Per pixel, :func:`soilmoisture.sources.sentinel2.interpolate_limited` vectorised over pixels.

    ``obs_days`` (K,) sorted unique day numbers, ``obs`` (K, N) values (NaN = masked), ``days`` (T,) ->
    (T, N) float32: linear between the nearest valid observations, held constant beyond the first/last,
    NaN farther than ``max_gap`` days from any valid observation (thesis 3.2.3). The neighbours of every
    observation row are found once (K << T), so each day needs row look-ups only; pixels go in chunks
    (bounded temporaries).
    """
    K, N = obs.shape
    T = len(days)
    out = np.full((T, N), np.nan, np.float32)
    if K == 0:
        return out
    kl = np.searchsorted(obs_days, days, side="right") - 1          # last obs row <= t (-1: none -> NaN row)
    kr = np.searchsorted(obs_days, days, side="left")               # first obs row >= t (K: none -> NaN row)
    t = (days - obs_days[0]).astype(np.float32)[:, None]
    for s in range(0, N, chunk):
        vl, dl, vr, dr = _last_valid(obs_days, obs[:, s:s + chunk])
        VL, DL, VR, DR = vl[kl], dl[kl], vr[kr], dr[kr]
        with np.errstate(invalid="ignore", divide="ignore"):
            both = np.where(DR > DL, VL + (VR - VL) * ((t - DL) / (DR - DL)), VL)
        o = np.where(np.isfinite(DL), np.where(np.isfinite(DR), both, VL), VR)
        dist = np.fmin(t - DL, DR - t)
        o[~(dist <= max_gap)] = np.nan
        out[:, s:s + chunk] = o
    return out


def terrain_grid(z: np.ndarray, res_x: float, res_y: float) -> dict[str, np.ndarray]:
    """Elevation (m), slope (%), aspect_x, aspect_y of every pixel of a north-up DTM.

    :func:`soilmoisture.sources.static.terrain` for all pixels at once (central differences, one-sided at
    the array's edges; flat pixel: aspect vector (0, 0)).
    """
    zz = z.astype(np.float64)
    dz_drow, dz_dcol = np.gradient(zz, abs(res_y), abs(res_x))
    dzdx, dzdy = dz_dcol, -dz_drow
    slope = np.hypot(dzdx, dzdy) * 100.0
    aspect = np.arctan2(-dzdx, -dzdy)
    flat = (dzdx == 0) & (dzdy == 0)
    return {"elevation_m": zz, "slope_pct": np.where(flat, 0.0, slope),
            "aspect_x": np.where(flat, 0.0, np.cos(aspect)), "aspect_y": np.where(flat, 0.0, np.sin(aspect))}


def speaks(landcover: np.ndarray) -> np.ndarray:
    """Pixels where a land model may speak: known land cover, not water (5xx) and not built-up (1xx)."""
    lc = np.asarray(landcover)
    known = np.isfinite(lc) & (lc > 0) if lc.dtype.kind == "f" else lc > 0
    code = np.where(known, lc, 0).astype(np.int64)
    return known & (code // 100 != 1) & (code // 100 != 5)


def sigma0_age(obs_days: np.ndarray, ok: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Days (T, N) since the newest valid observation at or before each of ``days``; ``obs_days`` (D,) sorted,
    ``ok`` (D, N) valid observations. A pixel not observed so far gets +inf."""
    D, N = ok.shape
    if D == 0:
        return np.full((len(days), N), np.inf, np.float32)
    last = np.maximum.accumulate(np.where(ok, obs_days[:, None].astype(np.float32), -np.inf), axis=0)
    last = np.concatenate([last, np.full((1, N), -np.inf, np.float32)])   # row -1: nothing yet
    kl = np.searchsorted(obs_days, days, side="right") - 1
    return days.astype(np.float32)[:, None] - last[kl]


@dataclass
class Cube:
    """Model inputs of the pixels of one window, factorised by how each feature varies.

    Raw units as in the daily table (sigma0 linear, precipitation mm, ...), NaN = missing.
    """

    dates: pd.DatetimeIndex        # (T,) series days (warm-up + requested)
    dynamic: np.ndarray            # (T, N, Fd) float32 per-pixel daily features, time-major
    dynamic_names: list[str]
    weather: np.ndarray            # (T, Fw) float32 the same for every pixel
    weather_names: list[str]
    static: np.ndarray             # (N, Fs) float32 per-pixel constants
    static_names: list[str]
    valid: np.ndarray              # (T, N) bool: the model may speak (land, every required input present)
    shape: tuple[int, int]         # (rows, cols) of the window; N = rows * cols, row-major
    landcover: np.ndarray          # (N,) int CORINE code (-1 unknown), also when not a model input

    @property
    def n_pixels(self) -> int:
        return int(self.static.shape[0])

    def dense(self, features: list[str]) -> np.ndarray:
        """(N, T, F) float32 in ``features`` order, the layout ``model.predict`` takes (thesis 3.3.1)."""
        T, N = len(self.dates), self.n_pixels
        out = np.empty((N, T, len(features)), np.float32)
        for j, f in enumerate(features):
            if f in self.dynamic_names:
                out[:, :, j] = self.dynamic[:, :, self.dynamic_names.index(f)].T
            elif f in self.weather_names:
                out[:, :, j] = self.weather[None, :, self.weather_names.index(f)]
            else:
                out[:, :, j] = self.static[:, None, self.static_names.index(f)]
        return out


def check_mappable(features: list[str], where: str) -> None:
    """Refuse a model whose inputs do not exist at every pixel (e.g. probe soil temperature)."""
    from soilmoisture.schema import MAPPABLE_FEATURES

    bad = [f for f in features if f not in MAPPABLE_FEATURES]
    if bad:
        raise DataError(where, f"model input(s) {', '.join(bad)} do not exist at every pixel, so this model cannot "
                               "map; train the 'mappable' variant (variant.name: mappable)", field=bad[0])


@dataclass
class MapModel:
    """A trained LSTM for maps: Keras-layout weights, its feature list and normalisation statistics."""

    weights: list[np.ndarray]      # per LSTM layer kernel (F, 4H), recurrent (H, 4H), bias (4H,); Dense (H, 1), (1,)
    features: list[str]
    mean: np.ndarray               # (F,)
    std: np.ndarray                # (F,)
    name: str = "model"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_mappable(self.features, self.name)
        n = len(self.weights)
        if n < 5 or (n - 2) % 3:
            raise DataError(self.name, f"{n} weight arrays do not form stacked LSTM layers + Dense (not an LSTM?)")
        if self.weights[0].shape[0] != len(self.features):
            raise DataError(self.name, f"first kernel takes {self.weights[0].shape[0]} inputs but the feature list has "
                                       f"{len(self.features)}", field="features")

    @property
    def layers(self) -> int:
        return (len(self.weights) - 2) // 3

    @property
    def units(self) -> int:
        return int(self.weights[1].shape[0])


_FORWARD_CACHE: dict[tuple, Any] = {}


def _forward_fn(layers: int, units: int) -> Any:
    """Compiled LSTM inference over time for a pixel batch (Keras gate order i, f, c, o; no dropout)."""
    key = (layers, units)
    if key in _FORWARD_CACHE:
        return _FORWARD_CACHE[key]
    import jax
    import jax.numpy as jnp
    from jax import lax

    h = units

    def cell(z, c):
        # sigmoid(z) = (1 + tanh(z / 2)) / 2: one vectorised tanh is cheaper than XLA's logistic here
        # (measured: 4.4 vs 3.9 M pixel-days/s per core at 256 pixels per call); equal to float32 rounding.
        s = 0.5 * jnp.tanh(0.5 * z) + 0.5
        c = s[:, h:2 * h] * c + s[:, :h] * jnp.tanh(z[:, 2 * h:3 * h])
        return s[:, 3 * h:] * jnp.tanh(c), c

    def forward(wd, r0, rest, dense_w, dense_b, xd, wz, sz):
        """xd (T, B, Fd) normalised pixel features, wz (T, 4H) weather projection + bias, sz (B, 4H) static
        projection -> (T, B) SSM."""
        B = sz.shape[0]

        def step(carry, inp):
            hs, cs = carry
            x_t, w_t = inp
            z = jnp.dot(x_t, wd) + w_t[None, :] + sz + jnp.dot(hs[0], r0)
            hh, cc = cell(z, cs[0])
            new_h, new_c, u = [hh], [cc], hh
            for l, (wr, b) in enumerate(rest, start=1):
                # [input, own state] @ [W; U] as one matmul (as jax_engine's fused loop; ~10 % faster here)
                hh, cc = cell(jnp.dot(jnp.concatenate([u, hs[l]], axis=1), wr) + b[None, :], cs[l])
                new_h.append(hh)
                new_c.append(cc)
                u = hh
            return (tuple(new_h), tuple(new_c)), jnp.dot(u, dense_w)[:, 0] + dense_b[0]

        zeros = tuple(jnp.zeros((B, h), jnp.float32) for _ in range(layers))
        _, y = lax.scan(step, (zeros, zeros), (xd, wz))
        return y

    fn = jax.jit(forward)
    _FORWARD_CACHE[key] = fn
    return fn


def predict_cube(model: MapModel, cube: Cube, batch: int = PIXEL_BATCH) -> np.ndarray:
    """Predicted SSM (T, N) float32 (m3/m3) for every pixel and series day; NaN where ``cube.valid`` is False.

    Inputs are normalised as in training ((x - mean) / std, missing -> 0; thesis 3.3.1). The first layer's input
    projection is split by feature group (exact: it is linear). Pixels go in fixed batches of ``batch``
    (the last one padded) so every call has the same shapes.
    """
    import jax.numpy as jnp

    f = model.features
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    idx = {name: i for i, name in enumerate(f)}
    w = [np.asarray(a, np.float32) for a in model.weights]
    k0, r0, b0 = w[0], w[1], w[2]
    d_names = [n for n in cube.dynamic_names if n in idx]
    w_names = [n for n in cube.weather_names if n in idx]
    s_names = [n for n in cube.static_names if n in idx]
    missing = set(f) - set(d_names) - set(w_names) - set(s_names)
    if missing:
        raise DataError(model.name, f"the feature cube lacks model input(s) {', '.join(sorted(missing))}")

    def norm(x: np.ndarray, names: list[str]) -> np.ndarray:
        j = [idx[n] for n in names]
        return np.nan_to_num((x - mean[j]) / std[j], nan=0.0).astype(np.float32)

    d_sel = [cube.dynamic_names.index(n) for n in d_names]
    wz = norm(cube.weather[:, [cube.weather_names.index(n) for n in w_names]], w_names) @ k0[[idx[n] for n in w_names]]
    wz = (wz + b0[None, :]).astype(np.float32)
    sz_all = norm(cube.static[:, [cube.static_names.index(n) for n in s_names]], s_names) @ k0[[idx[n] for n in s_names]]
    wd = k0[[idx[n] for n in d_names]] if d_names else np.zeros((0, k0.shape[1]), np.float32)
    rest = [(jnp.asarray(np.concatenate([w[3 * l], w[3 * l + 1]], axis=0)), jnp.asarray(w[3 * l + 2]))
            for l in range(1, model.layers)]
    fwd = _forward_fn(model.layers, model.units)
    T, N = len(cube.dates), cube.n_pixels
    # Small windows: the next power of two (few distinct shapes, few compilations) instead of a mostly padded batch.
    batch = min(batch, 1 << max(int(N - 1).bit_length(), 6))
    out = np.empty((T, N), np.float32)
    args = (jnp.asarray(wd), jnp.asarray(r0), rest, jnp.asarray(w[-2]), jnp.asarray(w[-1]))
    wz_j = jnp.asarray(wz)
    def one(s: int) -> None:
        e = min(s + batch, N)
        xd = np.zeros((T, batch, len(d_names)), np.float32)
        xd[:, : e - s] = norm(cube.dynamic[:, s:e][:, :, d_sel], d_names)
        sz = np.zeros((batch, k0.shape[1]), np.float32)
        sz[: e - s] = sz_all[s:e]
        out[:, s:e] = np.asarray(fwd(*args, jnp.asarray(xd), wz_j, jnp.asarray(sz)))[:, : e - s]

    starts = list(range(0, N, batch))
    threads = min(PREDICT_THREADS, len(starts))
    if threads > 1:
        # XLA runs one call's small matmuls on one core; two calls at once use both (measured 1.5x on 2 cores).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, starts))
    else:
        for s in starts:
            one(s)
    out[~cube.valid] = np.nan
    return out


# ----------------------------------------------------------------------------------------------
# validation against the truth: streaming sums (bounded memory), metrics at the end
# ----------------------------------------------------------------------------------------------
_SUMS = ("n", "se", "sae", "sp", "so", "spp", "soo", "spo")


class Validation:
    """Per-day and per-land-cover accumulators of predicted vs true SSM over windows.

    By day: MAE, bias, RMSE, unbiased RMSE and spatial Pearson r over the day's pixels. By land cover: MAE and
    bias over pixel-days, the mean of per-pixel (temporal) unbiased RMSE, the mean daily spatial r.
    """

    def __init__(self, dates: pd.DatetimeIndex) -> None:
        self.dates = dates
        self.day = {k: np.zeros(len(dates)) for k in _SUMS}
        self.lc: dict[int, dict[str, np.ndarray]] = {}
        self.lc_px: dict[int, list[float]] = {}   # [n pixels, sum ubrmse, sum mae]

    @staticmethod
    def _add(acc: dict[str, np.ndarray], p: np.ndarray, o: np.ndarray) -> None:
        ok = np.isfinite(p) & np.isfinite(o)
        p0, o0 = np.where(ok, p, 0.0), np.where(ok, o, 0.0)
        e = p0 - o0
        for k, v in (("n", ok), ("se", e), ("sae", np.abs(e)), ("sp", p0), ("so", o0), ("spp", p0 * p0),
                     ("soo", o0 * o0), ("spo", p0 * o0)):
            acc[k] += v.sum(axis=1)

    def add(self, pred: np.ndarray, truth: np.ndarray, landcover: np.ndarray) -> None:
        """``pred``/``truth`` (D, N) m3/m3 of one window, ``landcover`` (N,) CORINE codes."""
        p, o = pred.astype(np.float64), truth.astype(np.float64)
        self._add(self.day, p, o)
        for code in np.unique(landcover):
            sel = landcover == code
            acc = self.lc.setdefault(int(code), {k: np.zeros(len(self.dates)) for k in _SUMS})
            self._add(acc, p[:, sel], o[:, sel])
            ok = np.isfinite(p[:, sel]) & np.isfinite(o[:, sel])
            n = ok.sum(axis=0)
            has = n >= 2
            if not has.any():
                continue
            e = np.where(ok, p[:, sel] - o[:, sel], 0.0)[:, has]
            m = e.sum(axis=0) / n[has]
            ub = np.sqrt((np.where(ok[:, has], e - m, 0.0) ** 2).sum(axis=0) / n[has])
            mae_px = np.abs(e).sum(axis=0) / n[has]
            px = self.lc_px.setdefault(int(code), [0.0, 0.0, 0.0])
            px[0] += has.sum()
            px[1] += ub.sum()
            px[2] += mae_px.sum()

    @staticmethod
    def _metrics(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = a["n"]
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = np.where(n > 0, n, np.nan)
            bias = a["se"] / nn
            mae = a["sae"] / nn
            mp, mo = a["sp"] / nn, a["so"] / nn
            vp, vo = a["spp"] / nn - mp ** 2, a["soo"] / nn - mo ** 2
            cov = a["spo"] / nn - mp * mo
            mse = (a["spp"] - 2 * a["spo"] + a["soo"]) / nn
            ub = np.sqrt(np.maximum(mse - bias ** 2, 0.0))
            r = np.where((n >= 3) & (vp > 1e-12) & (vo > 1e-12), cov / np.sqrt(np.maximum(vp * vo, 1e-30)), np.nan)
        return {"n_pixels": n, "mae": mae, "bias": bias, "rmse": np.sqrt(mse), "ubrmse": ub, "spatial_r": r}

    def by_day(self) -> pd.DataFrame:
        return pd.DataFrame({"date": self.dates, **self._metrics(self.day)})

    def by_landcover(self) -> pd.DataFrame:
        from soilmoisture.schema import CORINE

        rows = []
        for code, acc in sorted(self.lc.items()):
            m = self._metrics(acc)
            n = acc["n"].sum()
            px = self.lc_px.get(code, [0.0, 0.0, 0.0])
            rows.append({"landcover_code": code, "landcover_name": CORINE.get(code, "unknown"),
                         "n_pixel_days": int(n), "n_pixels": int(px[0]),
                         "mae": acc["sae"].sum() / n if n else np.nan, "bias": acc["se"].sum() / n if n else np.nan,
                         "ubrmse_temporal": px[1] / px[0] if px[0] else np.nan,
                         "mae_per_pixel": px[2] / px[0] if px[0] else np.nan,
                         "spatial_r": float(np.nanmean(m["spatial_r"])) if np.isfinite(m["spatial_r"]).any() else np.nan})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, float]:
        a = {k: np.array([v.sum()]) for k, v in self.day.items()}
        m = {k: float(v[0]) for k, v in self._metrics(a).items() if k != "spatial_r"}
        d = self._metrics(self.day)
        m["spatial_r_mean"] = float(np.nanmean(d["spatial_r"])) if np.isfinite(d["spatial_r"]).any() else float("nan")
        m["ubrmse_spatial_mean"] = float(np.nanmean(d["ubrmse"])) if np.isfinite(d["ubrmse"]).any() else float("nan")
        px = [v for v in self.lc_px.values()]
        n_px = sum(v[0] for v in px)
        m["ubrmse_temporal_mean"] = sum(v[1] for v in px) / n_px if n_px else float("nan")
        m["mae_per_pixel_mean"] = sum(v[2] for v in px) / n_px if n_px else float("nan")
        m["n_pixel_days"] = m.pop("n_pixels")
        return m


# ----------------------------------------------------------------------------------------------
# file access: the region's rasters on one grid
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The region's pixel grid (CORINE raster): CRS, affine transform, size."""

    crs: Any
    transform: Any
    width: int
    height: int
    path: Path

    def check(self, src: Any, path: Path) -> None:
        """Refuse a raster on another grid (CRS, pixel size, origin or size): no silent resampling."""
        if src.crs != self.crs or not src.transform.almost_equals(self.transform, 1e-6) \
                or (src.width, src.height) != (self.width, self.height):
            raise DataError(path, f"raster grid (CRS {src.crs}, transform {tuple(src.transform)[:6]}, "
                                  f"{src.width} x {src.height} px) differs from the region grid of {self.path.name} "
                                  f"(CRS {self.crs}, transform {tuple(self.transform)[:6]}, {self.width} x "
                                  f"{self.height} px); resample it onto that grid first (e.g. gdalwarp -t_srs/-tr/-te)")


@dataclass
class Sources:
    """The files of one region that maps read; scenes are opened lazily and kept open across windows."""

    region: str
    grid: Grid
    s1: list[tuple[int, Path]]          # (day number, path), sorted
    s2: list[tuple[int, Path]]
    dtm: Path | None
    clc: Path
    weather: pd.DataFrame               # daily precip_mm, ta_min, ta_mean, ta_max indexed by day number
    station: str
    sigma0_units: str = "linear"
    s2_mask_probability: float = 90.0
    _open: dict = field(default_factory=dict)

    def dataset(self, path: Path) -> Any:
        from soilmoisture.sources._raster import open_raster

        ds = self._open.get(path)
        if ds is None:
            ds = open_raster(path)
            self._open[path] = ds   # before the check, so close() releases it either way
            self.grid.check(ds, path)
        return ds

    def close(self) -> None:
        # ds.close(), not the context manager's exit: a dataset may have been opened by the prefetch thread, and
        # rasterio's GDAL environments are per thread.
        for ds in self._open.values():
            ds.close()
        self._open.clear()


def open_sources(raw: Path, region: str, *, sigma0_units: str = "linear", s2_mask_probability: float = 90.0,
                 centre_lonlat: tuple[float, float] | None = None) -> Sources:
    """Locate the rasters and weather of ``region`` under ``raw`` (docs/raw-layout.md); nothing is read yet
    except the station table and the region grid."""
    from soilmoisture.sources import sentinel1, sentinel2
    from soilmoisture.sources._raster import open_raster
    from soilmoisture.sources.weather import nearest_station, read_weather

    clc = raw / "static" / f"{region}_clc.tif"
    if not clc.is_file():
        raise DataError(clc, f"land-cover raster of region {region!r} not found: maps need it as the pixel grid")
    with open_raster(clc) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height, clc)
        bounds = src.bounds
    if centre_lonlat is None:
        from rasterio.warp import transform as warp

        xs, ys = warp(grid.crs, "EPSG:4326", [(bounds.left + bounds.right) / 2], [(bounds.bottom + bounds.top) / 2])
        centre_lonlat = (xs[0], ys[0])

    def scenes(folder: Path, files: list[Path], name_re: Any) -> list[tuple[int, Path]]:
        out = []
        for p in files:
            m = name_re.match(p.name)
            out.append((int(day_numbers([pd.to_datetime(m.group(1), format="%Y%m%dT%H%M%S")])[0]), p))
        return sorted(out)

    s1_dir, s2_dir = raw / "sentinel1" / region, raw / "sentinel2" / region
    s1 = scenes(s1_dir, sentinel1.scene_files(s1_dir), sentinel1.NAME_RE) if s1_dir.is_dir() else []
    s2 = scenes(s2_dir, sentinel2.scene_files(s2_dir), sentinel2.NAME_RE) if s2_dir.is_dir() else []
    wdir = raw / "weather"
    if not (wdir / "stations.csv").is_file():
        raise DataError(wdir / "stations.csv", "weather station table not found: maps need the region's weather")
    wd, stations = read_weather(wdir)
    probe = pd.DataFrame({"probe_id": ["map"], "region": [region], "lon": [centre_lonlat[0]], "lat": [centre_lonlat[1]]})
    station = nearest_station(probe, stations)["map"]
    w = wd[wd["station"] == station].drop(columns="station").copy()
    w.index = day_numbers(w["date"])
    dtm = raw / "static" / f"{region}_dtm.tif"
    return Sources(region, grid, s1, s2, dtm if dtm.is_file() else None, clc,
                   w[["precip_mm", "ta_min", "ta_mean", "ta_max"]], str(station), sigma0_units, s2_mask_probability)


def _read(ds: Any, path: Path, window: Any, bands: list[int] | None = None) -> np.ndarray:
    from soilmoisture.sources._raster import read_all

    if bands is None:
        return read_all(ds, path, window).astype(np.float32)
    from rasterio.errors import RasterioError

    try:
        return ds.read(bands, window=window).astype(np.float32)
    except (RasterioError, OSError) as e:
        raise DataError(path, f"cannot read raster data ({e}); the file may be truncated") from None


def _nodata_to_nan(a: np.ndarray, nodatavals: tuple) -> np.ndarray:
    for b, nd in enumerate(nodatavals[: a.shape[0]]):
        if nd is not None and not np.isnan(nd):
            a[b][a[b] == nd] = np.nan
    return a


def _sigma0_window(src: Sources, window: Any, names: list[str], stat_days: tuple[int, int],
                   zscore: float, sigma0_max: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Daily per-pixel Sentinel-1 bands of the scenes in ``stat_days`` (inclusive day numbers):
    (scene days (D,), {band: (D, N)}) after same-day averaging and per-pixel outlier removal."""
    from soilmoisture.sources.sentinel1 import BANDS, check_db, check_linear

    want = [b for b, n in BANDS.items() if n in names or n == "sigma0_vv"]
    sel = [(d, p) for d, p in src.s1 if stat_days[0] <= d <= stat_days[1]]
    N = int(window.width * window.height)
    if not sel:
        return np.zeros(0, np.int64), {BANDS[b]: np.zeros((0, N)) for b in want}
    stack = np.empty((len(sel), len(want), N), np.float32)
    for k, (_, path) in enumerate(sel):
        ds = src.dataset(path)
        declared = (ds.tags().get("UNITS") or "").lower()
        a = _nodata_to_nan(_read(ds, path, window, [b for b in want if b <= ds.count]), ds.nodatavals)
        if a.shape[0] < len(want):
            a = np.concatenate([a, np.full((len(want) - a.shape[0],) + a.shape[1:], np.nan)])
        a = a.reshape(len(want), N)
        for j, b in enumerate(want):
            if BANDS[b] not in ("sigma0_vv", "sigma0_vh"):
                continue
            # Same explicit unit rules as the reader (DESIGN: convert explicitly, never guess silently).
            if src.sigma0_units == "linear":
                if declared == "db":
                    raise DataError(path, "tag UNITS=dB but ingest.sigma0_units is 'linear'", field=BANDS[b])
                check_linear(a[j], path, BANDS[b])
            else:
                if declared == "linear":
                    raise DataError(path, "tag UNITS=linear but ingest.sigma0_units is 'db'", field=BANDS[b])
                check_db(a[j], path, BANDS[b])
                a[j] = 10.0 ** (a[j] / 10.0)
        stack[k] = a
    days, daily = daily_mean(np.array([d for d, _ in sel], np.int64), stack)
    out = {BANDS[b]: daily[:, j] for j, b in enumerate(want)}
    bad = sigma0_outliers(out["sigma0_vv"], zscore, sigma0_max)
    out["sigma0_vv"] = np.where(bad, np.nan, out["sigma0_vv"])
    if "sigma0_vh" in out:  # same pixel, same bright target: VH of that day is not trusted either (as harmonise)
        out["sigma0_vh"] = np.where(bad, np.nan, out["sigma0_vh"])
    return days, out


def _vi_window(src: Sources, window: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NDVI/NDWI observations of every Sentinel-2 scene at the window's pixels: (days (K,), ndvi (K, N), ndwi)."""
    from soilmoisture.sources.sentinel2 import _band_index, indices

    N = int(window.width * window.height)
    if not src.s2:
        return np.zeros(0, np.int64), np.zeros((0, N)), np.zeros((0, N))
    nd_v, nd_w = np.empty((len(src.s2), N), np.float32), np.empty((len(src.s2), N), np.float32)
    for k, (_, path) in enumerate(src.s2):
        ds = src.dataset(path)
        idx = _band_index(ds, path)
        a = _read(ds, path, window).reshape(ds.count, N)
        nodata = ds.nodata
        refl = {b: a[idx[b]].copy() for b in ("B04", "B8A", "B12")}
        if nodata is not None and not np.isnan(nodata):
            for v in refl.values():
                v[v == nodata] = np.nan
        # nodata 0 is meant for reflectances; a probability of 0 % is valid (as the reader).
        nd_v[k], nd_w[k] = indices(refl["B04"], refl["B8A"], refl["B12"], a[idx["CLD"]], a[idx["SNW"]],
                                   src.s2_mask_probability)
    days = np.array([d for d, _ in src.s2], np.int64)
    days_u, both = daily_mean(days, np.stack([nd_v, nd_w], axis=1))
    return days_u, both[:, 0], both[:, 1]


def _static_window(src: Sources, window: Any, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Static features (N,) of the window and its CORINE codes (N,) (-1 where unknown)."""
    from rasterio.windows import Window

    ds = src.dataset(src.clc)
    lc = _nodata_to_nan(_read(ds, src.clc, window), ds.nodatavals)[0].ravel()
    lc = np.where(np.isfinite(lc), lc, -1)
    out = {"landcover_code": lc.astype(np.float64)}
    terrain = [n for n in names if n in ("elevation_m", "slope_pct", "aspect_x", "aspect_y")]
    if terrain:
        if src.dtm is None:
            raise DataError(src.clc.with_name(f"{src.region}_dtm.tif"), "DTM not found; the model needs "
                            f"{', '.join(terrain)}")
        d = src.dataset(src.dtm)
        # One pixel of halo, so gradients at inner window edges are central differences as on the whole DTM.
        r0, c0 = max(int(window.row_off) - 1, 0), max(int(window.col_off) - 1, 0)
        r1 = min(int(window.row_off + window.height) + 1, src.grid.height)
        c1 = min(int(window.col_off + window.width) + 1, src.grid.width)
        z = _nodata_to_nan(_read(d, src.dtm, Window(c0, r0, c1 - c0, r1 - r0)), d.nodatavals)[0]
        res_x, res_y = d.res
        t = terrain_grid(z, res_x, res_y)
        rs, cs = int(window.row_off) - r0, int(window.col_off) - c0
        for n in terrain:
            out[n] = t[n][rs:rs + int(window.height), cs:cs + int(window.width)].ravel()
    return out, lc.astype(np.int64)


def build_cube(src: Sources, window: Any, dates: pd.DatetimeIndex, features: list[str], *, stat_range: tuple[str, str],
               sigma0_zscore: float = 2.0, sigma0_max: float = 0.35, vi_max_gap_days: int = 30,
               dry_day_mm: float = 0.1) -> Cube:
    """The feature cube of the pixels of ``window`` over the series ``dates`` (thesis 3.2, as harmonise).

    ``stat_range`` (YYYY-MM-DD, YYYY-MM-DD): days whose sigma0 enter the per-pixel z-score statistics
    (harmonise: ``data.start..data.end``); it must contain ``dates``. ``valid`` marks the pixel-days where the
    model may speak: land (not water 5xx, not built-up 1xx), every static input present, the weather of that day
    present and, when sigma0 is an input, a valid sigma0 within ``SIGMA0_MAX_AGE_DAYS``.
    """
    from soilmoisture.sources.weather import dry_days

    days = day_numbers(dates)
    T, N = len(days), int(window.width * window.height)
    d_names = [f for f in PIXEL_DYNAMIC if f in features]
    w_names = [f for f in WEATHER if f in features]
    s_names = [f for f in PIXEL_STATIC if f in features]
    dyn = np.full((T, N, len(d_names)), np.nan, np.float32)
    valid = np.ones((T, N), bool)

    s1_names = [f for f in d_names if f in ("sigma0_vv", "sigma0_vh", "incidence_angle_deg")]
    if s1_names:
        lo, hi = day_numbers(list(stat_range))
        lo, hi = min(lo, days[0]), max(hi, days[-1])
        s_days, bands = _sigma0_window(src, window, s1_names, (lo, hi), sigma0_zscore, sigma0_max)
        pos = np.searchsorted(days, s_days)
        inside = (pos < T) & (days[np.clip(pos, 0, T - 1)] == s_days)
        for f in s1_names:
            dyn[pos[inside], :, d_names.index(f)] = bands[f][inside]
        if "sigma0_vv" in s1_names:
            # Age of the newest valid sigma0 at or before each series day, counting scenes before the series too.
            valid &= sigma0_age(s_days, np.isfinite(bands["sigma0_vv"]), days) <= SIGMA0_MAX_AGE_DAYS
    vi_names = [f for f in d_names if f in ("ndvi", "ndwi")]
    if vi_names:
        v_days, ndvi, ndwi = _vi_window(src, window)
        for f, obs in (("ndvi", ndvi), ("ndwi", ndwi)):
            if f in vi_names:
                dyn[:, :, d_names.index(f)] = interpolate_limited_grid(v_days, obs, days, vi_max_gap_days)

    w = src.weather.reindex(days)
    wcols = {"precip_mm": w["precip_mm"].to_numpy(float), "ta_min": w["ta_min"].to_numpy(float),
             "ta_mean": w["ta_mean"].to_numpy(float), "ta_max": w["ta_max"].to_numpy(float)}
    wcols["dry_days"] = dry_days(wcols["precip_mm"], dry_day_mm)   # counted from the series start (harmonise)
    weather = np.stack([wcols[n] for n in w_names], axis=1).astype(np.float32) if w_names else np.zeros((T, 0), np.float32)
    if w_names:
        valid &= np.isfinite(weather).all(axis=1)[:, None]

    stat, lc = _static_window(src, window, s_names)
    static = np.stack([stat[n] for n in s_names], axis=1).astype(np.float32) if s_names else np.zeros((N, 0), np.float32)
    land = speaks(lc)
    if s_names:
        land &= np.isfinite(static).all(axis=1)
    valid &= land[None, :]
    return Cube(pd.DatetimeIndex(dates), dyn, d_names, weather, w_names, static, s_names, valid,
                (int(window.height), int(window.width)), lc)


def windows(height: int, width: int, size: int, row_off: int = 0, col_off: int = 0) -> Iterator[Any]:
    """Row-major square windows of at most ``size`` pixels covering (height x width) from (row_off, col_off)."""
    from rasterio.windows import Window

    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Window(col_off + c, row_off + r, min(size, width - c), min(size, height - r))


# ----------------------------------------------------------------------------------------------
# the map: windows -> COG (+ validation, quicklooks)
# ----------------------------------------------------------------------------------------------
@dataclass
class WindowJob:
    """One window's prediction as a task for a runner worker (``params.yaml`` ``runner``): plain, picklable data."""

    model: MapModel
    src: Sources                        # with no open dataset (each worker opens the files itself)
    window: Any
    series: pd.DatetimeIndex
    first: int                          # index of the first requested day in ``series``
    cube_kwargs: dict


def predict_window(job: WindowJob) -> tuple[np.ndarray, np.ndarray]:
    """(predicted SSM (D, N) of the requested days, CORINE codes (N,)) of one window, on a runner worker.

    Module-level so Dask process workers can unpickle it by name; the worker's files are closed after it.
    """
    try:
        cube = build_cube(job.src, job.window, job.series, job.model.features, **job.cube_kwargs)
        return predict_cube(job.model, cube)[job.first:], cube.landcover
    finally:
        job.src.close()


@dataclass
class MapResult:
    path: Path                          # the COG
    dates: pd.DatetimeIndex             # its bands
    seconds: dict[str, float]           # wall time per phase
    validation: Validation | None
    window: Any                         # the area of interest in the region grid


def aoi_window(grid: Grid, bbox: list[float] | None) -> Any:
    """The area of interest as a window of the grid: the whole tile, or ``bbox`` [west, south, east, north]
    (degrees WGS84) rounded outwards to whole pixels and clipped to the tile."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    full = Window(0, 0, grid.width, grid.height)
    if bbox is None:
        return full
    if len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
        raise ConfigError("map.bbox", f"{bbox!r} must be [west, south, east, north] in degrees with west < east, "
                                      "south < north")
    b = transform_bounds("EPSG:4326", grid.crs, *bbox)
    w = from_bounds(*b, transform=grid.transform).round_offsets(op="floor").round_lengths(op="ceil")
    try:
        w = w.intersection(full)
    except Exception:  # rasterio raises WindowError for disjoint windows
        w = None
    if w is None or w.width < 1 or w.height < 1:
        raise ConfigError("map.bbox", f"{bbox!r} does not overlap the tile of {grid.path.name}")
    return Window(int(w.col_off), int(w.row_off), int(w.width), int(w.height))


def make_map(model: MapModel, src: Sources, out: Path, *, start: str, end: str, warmup_start: str,
             stat_range: tuple[str, str], window_px: int, aoi: Any = None, truth: Path | None = None,
             sigma0_zscore: float = 2.0, sigma0_max: float = 0.35, vi_max_gap_days: int = 30,
             dry_day_mm: float = 0.1, runner: Runner | None = None) -> MapResult:
    """Write the daily SSM of ``start..end`` for the area ``aoi`` (a window of the region grid; None = all) as
    one multi-band COG at ``out`` (band i = day i, descriptions = dates, nodata NaN), window by window.

    The series of every pixel starts at ``warmup_start`` (spin-up of the recurrent state). With ``truth`` (a
    raster on the same grid, band i = its START_DATE tag + i - 1 days) the map is validated as it is written.
    With a Dask ``runner`` (``params.yaml`` ``runner``) the windows are built and predicted on its workers, at
    most two per worker in flight, and written here in window order.
    """
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rasterio.windows import Window
    from rasterio.windows import transform as win_transform

    req = pd.date_range(start, end, freq="D")
    series = pd.date_range(min(pd.Timestamp(warmup_start), req[0]), req[-1], freq="D")
    first = len(series) - len(req)
    aoi = aoi or Window(0, 0, src.grid.width, src.grid.height)
    H, W = int(aoi.height), int(aoi.width)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_gtiff = out.with_name(f".{out.name}.stage.tif")
    tmp_cog = out.with_name(f".{out.name}.tmp")
    truth_ds, truth_first = None, 0
    validation = Validation(req) if truth is not None else None
    secs = {"features": 0.0, "predict": 0.0, "write": 0.0, "truth": 0.0, "cog": 0.0}
    profile = dict(driver="GTiff", width=W, height=H, count=len(req), dtype="float32", crs=src.grid.crs,
                   transform=win_transform(aoi, src.grid.transform), nodata=NODATA, tiled=True, blockxsize=256,
                   blockysize=256, interleave="band", BIGTIFF="IF_SAFER")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
            if truth is not None:
                from soilmoisture.sources._raster import open_raster

                truth_ds = stack.enter_context(open_raster(truth))
                src.grid.check(truth_ds, truth)
                t0 = pd.to_datetime(truth_ds.tags().get("START_DATE"), errors="coerce")
                truth_first = -1 if pd.isna(t0) else (req[0] - t0).days
                if truth_first < 0 or truth_first + len(req) > truth_ds.count:
                    raise DataError(truth, f"truth (START_DATE {t0}, {truth_ds.count} days) does not cover "
                                           f"{start}..{end}")
            dst = stack.enter_context(rasterio.open(tmp_gtiff, "w", **profile))
            wins = list(windows(H, W, window_px, int(aoi.row_off), int(aoi.col_off)))

            cube_kwargs = dict(stat_range=stat_range, sigma0_zscore=sigma0_zscore, sigma0_max=sigma0_max,
                               vi_max_gap_days=vi_max_gap_days, dry_day_mm=dry_day_mm)

            def cube_of(win: Any) -> Cube:
                return build_cube(src, win, series, model.features, **cube_kwargs)

            def put(n_done: int, win: Any, pred: np.ndarray, landcover: np.ndarray) -> None:
                """Write one window's (D, N) prediction and validate it against the truth."""
                t = time.perf_counter()
                h, w = int(win.height), int(win.width)
                local = Window(int(win.col_off - aoi.col_off), int(win.row_off - aoi.row_off), w, h)
                dst.write(pred.reshape(len(req), h, w), window=local)
                secs["write"] += time.perf_counter() - t
                if truth_ds is not None:
                    t = time.perf_counter()
                    tr = truth_ds.read(list(range(truth_first + 1, truth_first + len(req) + 1)), window=win)
                    validation.add(pred, tr.reshape(len(req), -1), landcover)
                    secs["truth"] += time.perf_counter() - t
                log.info("map window %d/%d (%d x %d px, %d series days) done", n_done, len(wins), win.width,
                         win.height, len(series))

            from soilmoisture.runner import is_distributed, map_in_runner

            if runner is not None and is_distributed(runner):
                jobs = [WindowJob(model, dataclasses.replace(src, _open={}), win, series, first, cube_kwargs)
                        for win in wins]
                t = time.perf_counter()
                map_in_runner(predict_window, jobs, runner, label="map-windows",
                              consume=lambda i, r: put(i + 1, wins[i], *r))
                secs["runner"] = time.perf_counter() - t - secs["write"] - secs["truth"]  # waited for workers
            else:
                # The next window's cube is built in a background thread while this one is predicted (file reads
                # and large numpy operations release the GIL); at most two cubes are alive, whatever the area.
                from concurrent.futures import ThreadPoolExecutor

                prefetch = stack.enter_context(ThreadPoolExecutor(1))
                pending = prefetch.submit(cube_of, wins[0])
                for n_done, win in enumerate(wins, start=1):
                    t = time.perf_counter()
                    cube = pending.result()
                    if n_done < len(wins):
                        pending = prefetch.submit(cube_of, wins[n_done])
                    secs["features"] += time.perf_counter() - t   # time waited for the cube (not hidden by prediction)
                    t = time.perf_counter()
                    pred = predict_cube(model, cube)[first:]                      # (D, N) requested days only
                    secs["predict"] += time.perf_counter() - t
                    put(n_done, win, pred, cube.landcover)
            for i, d in enumerate(req, start=1):
                dst.set_band_description(i, f"{d:%Y-%m-%d}")
            dst.update_tags(UNITS="m3/m3", QUANTITY="surface soil moisture 0-5 cm", START_DATE=f"{req[0]:%Y-%m-%d}",
                            END_DATE=f"{req[-1]:%Y-%m-%d}", WARMUP_START=f"{series[0]:%Y-%m-%d}",
                            MODEL=model.name, FEATURES=",".join(model.features), REGION=src.region)
        t = time.perf_counter()
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=GDAL_CACHE_MB):
            # ZSTD level 1 + floating-point predictor: as small as DEFLATE, faster (measured on a 100-band map).
            rio_copy(tmp_gtiff, tmp_cog, driver="COG", compress="ZSTD", level=1, predictor=3, blocksize=256,
                     num_threads="ALL_CPUS", BIGTIFF="IF_SAFER",
                     overviews="AUTO" if max(H, W) > COG_OVERVIEWS_MIN_PX else "NONE")
        secs["cog"] += time.perf_counter() - t
        from soilmoisture.harmonise import file_mode

        os.chmod(tmp_cog, file_mode())
        os.replace(tmp_cog, out)
    finally:
        for p in (tmp_gtiff, tmp_cog):
            if p.exists():
                p.unlink()
    return MapResult(out, req, secs, validation, aoi)


def quicklooks(cog: Path, src: Sources, folder: Path, days: list[pd.Timestamp], max_px: int = 800) -> list[Path]:
    """PNG per day: the SSM map with a colour bar next to that day's sigma0 (dB, scenes of the day averaged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from rasterio.windows import from_bounds

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(cog) as ds:
        desc = list(ds.descriptions)
        scale = max(1, int(np.ceil(max(ds.width, ds.height) / max_px)))
        shape = (max(1, ds.height // scale), max(1, ds.width // scale))
        for day in days:
            band = desc.index(f"{day:%Y-%m-%d}") + 1
            ssm = ds.read(band, out_shape=shape)
            dn = int(day_numbers([day])[0])
            sig = []
            for d, p in src.s1:
                if d == dn:
                    s = src.dataset(p)
                    win = from_bounds(*ds.bounds, transform=s.transform)
                    sig.append(s.read(1, window=win, out_shape=shape, boundless=True, fill_value=np.nan))
            with np.errstate(invalid="ignore", divide="ignore"):
                sig_db = 10 * np.log10(np.nanmean(np.stack(sig), axis=0)) if sig else None
            fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
            im = axes[0].imshow(ssm, cmap="YlGnBu", vmin=0.0, vmax=0.5, interpolation="nearest")
            axes[0].set_title(f"SSM {day:%Y-%m-%d} (m³/m³)")
            fig.colorbar(im, ax=axes[0], shrink=0.85, label="SSM (m³/m³)")
            if sig_db is not None:
                im2 = axes[1].imshow(sig_db, cmap="gray", vmin=-25, vmax=-3, interpolation="nearest")
                fig.colorbar(im2, ax=axes[1], shrink=0.85, label="σ⁰ VV (dB)")
                axes[1].set_title(f"Sentinel-1 σ⁰ VV {day:%Y-%m-%d}")
            else:
                axes[1].text(0.5, 0.5, "no Sentinel-1 overpass this day", ha="center", va="center")
                axes[1].set_title("Sentinel-1 σ⁰ VV")
            for a in axes:
                a.set_xticks([])
                a.set_yticks([])
            p = folder / f"{src.region}_{day:%Y%m%d}.png"
            tmp = p.with_name(f".{p.name}.tmp.png")
            fig.savefig(tmp, dpi=90, metadata={"Software": None})
            plt.close(fig)
            os.replace(tmp, p)
            out.append(p)
    return out


def quicklook_days(dates: pd.DatetimeIndex, overpass_days: set[int], n: int = MAX_QUICKLOOKS) -> list[pd.Timestamp]:
    """Up to ``n`` days evenly spread over ``dates``, preferring overpass days (sigma0 to show beside)."""
    cand = [d for d in dates if int(day_numbers([d])[0]) in overpass_days] or list(dates)
    if len(cand) <= n:
        return cand
    return [cand[int(i)] for i in np.linspace(0, len(cand) - 1, n).round()]


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------
def model_uri(params: Params) -> str:
    """``models:/<map.model or <prefix>-mappable>@<map.alias>``."""
    from soilmoisture import tracking

    name = params.map.model or tracking.registered_model_name(params.tracking.registered_model_prefix, "mappable")
    return f"models:/{name}@{params.map.alias}"


def load_map_model(uri: str) -> MapModel:
    """The registered model (Keras network + features + normalisation, see protocol/predict.py) for maps."""
    from soilmoisture.protocol.predict import load_predictor

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


__all__ = ["Cube", "Grid", "MapModel", "MapResult", "Sources", "Validation", "aoi_window", "build_cube",
           "check_mappable", "daily_mean", "interpolate_limited_grid", "load_map_model", "make_map", "model_uri",
           "open_sources", "predict_cube", "quicklooks", "run", "sigma0_outliers", "terrain_grid", "windows"]
