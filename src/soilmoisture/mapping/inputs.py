"""Pixel feature cubes for maps: the region's rasters on one grid, read window by window (thesis 3.2).

For each window a feature cube (pixels x days x features) is built exactly the way
:mod:`soilmoisture.harmonise` builds a probe's series:

* sigma0 (linear) on overpass days, scenes of one day averaged, outliers removed *per pixel* by the z-score
  rule over the pixel's whole series, then sigma0 <= ``sigma0_max`` (3.2.2; the one rule of
  :func:`soilmoisture.quality.rules.sigma0_outliers`, shared with harmonise). The statistics use the days of
  ``data.start..data.end`` (plus the map period when it reaches outside), the range harmonise uses, so a
  probe's pixel gets the same series as in training;
* NDVI/NDWI from every Sentinel-2 scene, cloud/snow masked, interpolated at most ``vi_max_gap_days`` (3.2.3);
* weather of the region's station (nearest the area's centre) broadcast to every pixel, dry days counted
  from the start of the series (3.2.4);
* static layers (elevation, slope, aspect, CORINE) per pixel (3.2.5).

The cube is kept factorised (per-pixel dynamic features (T, N, Fd), weather (T, Fw), static (N, Fs)), so the
first LSTM layer's input projection of weather and static terms is computed once (:mod:`.predict`).
Pure functions first, file access (the region's rasters) after.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from soilmoisture.errors import ConfigError, DataError
from soilmoisture.quality.rules import s1_impossible, sigma0_outliers

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
        a[s1_impossible(a)] = np.nan     # sigma0 <= 0 / incidence <= 0 deg: as the reader masks them
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


__all__ = ["Cube", "Grid", "PIXEL_DYNAMIC", "PIXEL_STATIC", "SIGMA0_MAX_AGE_DAYS", "Sources", "WEATHER", "aoi_window",
           "build_cube", "daily_mean", "day_numbers", "interpolate_limited_grid", "open_sources", "sigma0_age",
           "sigma0_outliers", "speaks", "terrain_grid", "windows"]
