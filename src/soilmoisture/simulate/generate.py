"""Generate the simulated study area: raw files in the real formats under ``paths.raw`` and the truth under
``paths.truth`` (layout: docs/raw-layout.md; physics: docs/simulation.md).

Deterministic: every random stream is seeded from (seed, region, component), so the same parameters give
byte-identical files. Atomic: everything is built in hidden sibling folders and renamed into place at the
end, so a crash never leaves a half-written ``raw/``.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from soilmoisture.config import REGIONS, Params
from soilmoisture.errors import ConfigError
from soilmoisture.schema import CORINE
from soilmoisture.simulate import landscape, physics, writers
from soilmoisture.simulate.regions import REGION_SPECS, Region, probe_list

log = logging.getLogger(__name__)

S2_REVISIT_DAYS = 5
ECV_CELL_DEG = 0.25
CSM_CELL_M = 1000.0
SPECKLE_LOOKS = 18          # equivalent number of looks after the 7x7 Lee filter (thesis 3.2.2)
OUTLIER_P = 0.003           # chance per pixel and scene of a corner-reflector-like outlier
# Random stream ids per component (changing one component never changes the others).
_LAND, _WEATHER, _PROBES, _S1, _S2, _PRODUCTS, _ICOS, _NAMES, _SOILGRIDS = range(9)


def run(params: Params) -> None:
    """Stage entry point: simulate the area configured in ``params.simulate`` into ``paths.raw``/``paths.truth``."""
    s = params.simulate
    raw, truth = params.path(params.paths.raw), params.path(params.paths.truth)
    end = s.end
    if s.hold_back_days:   # one longer world; its last scenes wait in <truth>/held_back (simulate/deliver.py)
        end = str(np.datetime64(s.end, "D") + s.hold_back_days)
    generate(raw, truth, seed=s.seed, size=s.size, start=s.start, end=end, probes_per_region=s.probes_per_region,
             tile_px=s.tile, pixel_m=s.pixel_m, patch_px=s.patch_px)
    if s.hold_back_days:
        import datetime as dt

        from soilmoisture.simulate.deliver import hold_back

        n = hold_back(raw, truth, dt.date.fromisoformat(s.end))
        log.info("held back %d Sentinel scenes after %s in %s (soilmoisture deliver)", n, s.end, truth)


def _rng(seed: int, region_idx: int, component: int) -> np.random.Generator:
    return np.random.default_rng([seed, region_idx, component])


def generate(raw_dir: Path, truth_dir: Path, *, seed: int, size: str, start: str, end: str,
             probes_per_region: dict[str, int], tile_px: int, pixel_m: float, patch_px: int = 32,
             workers: int | None = None) -> dict[str, Any]:
    """Write the whole simulated area; returns the manifest. Regions with 0 probes are not generated.

    Each region spans its network's extent: the mapping tile (``tile_px``, around the first probe) and a
    ``patch_px`` patch around every other probe are simulated at ``pixel_m``; scenes are written for the tile and
    clipped to each probe cluster (docs/raw-layout.md). ``workers``: processes (default: up to 2, the cores of the
    reference machine); 1 = in this process.
    """
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    if patch_px not in (16, 32, 64):
        raise ConfigError("simulate.patch_px", f"must be 16, 32 or 64 (a divisor of the 64 px block), got {patch_px}")
    t0 = time.perf_counter()
    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    dates = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    tmp_raw = raw_dir.parent / f".{raw_dir.name}.tmp"
    tmp_truth = truth_dir.parent / f".{truth_dir.name}.tmp"
    for tmp in (tmp_raw, tmp_truth):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        jobs = [(REGION_SPECS[name], ridx, int(probes_per_region.get(name, 0)), seed, dates, tile_px, patch_px,
                 pixel_m, tmp_raw, tmp_truth) for ridx, name in enumerate(REGIONS) if probes_per_region.get(name, 0) > 0]
        # The work is mostly writing many small files (GDAL/HDF5 open-close dominates): one process per core.
        with _pool(workers) as pool:
            results = list(pool.map(_region_job, jobs))
            for r in results:   # logged here: worker processes may have no logging configured
                log.info("simulated %s: %d probes over %.0f km, %d days, tile %d px + %d px patches in %.1f s",
                         r["name"], len(r["probes"]), r["entry"]["extent_km"], len(dates), tile_px, patch_px,
                         r["seconds"])
            (tmp_raw / "products" / "ecv_sm").mkdir(parents=True)
            grid = _ecv_grid(results)
            chunks = np.array_split(np.arange(len(dates)), max(workers, 1))
            list(pool.map(_write_ecv, [(tmp_raw / "products" / "ecv_sm", dates, grid, c) for c in chunks if len(c)]))
        manifest = _write_tables(tmp_raw, tmp_truth, results, seed=seed, size=size, dates=dates,
                                 tile_px=tile_px, pixel_m=pixel_m, patch_px=patch_px)
    except BaseException:
        shutil.rmtree(tmp_raw, ignore_errors=True)
        shutil.rmtree(tmp_truth, ignore_errors=True)
        raise
    for tmp, dst in ((tmp_truth, truth_dir), (tmp_raw, raw_dir)):
        _swap(tmp, dst)
    log.info("simulated area written to %s (truth: %s) in %.1f s", raw_dir, truth_dir, time.perf_counter() - t0)
    return manifest


class _Serial:
    """The in-process stand-in for a process pool."""

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(fn: Any, items: Any) -> Any:
        return map(fn, items)


def _pool(workers: int) -> Any:
    import multiprocessing as mp

    # A daemonic process (e.g. a Dask or multiprocessing worker) may not start children: run in-process.
    if workers <= 1 or mp.current_process().daemon:
        return _Serial()
    import threading
    from concurrent.futures import ProcessPoolExecutor

    # fork is fast and needs no `if __name__ == "__main__"` guard in the caller's script, but copies locks held
    # by other threads (TensorFlow, Prefect): with threads running, spawn instead.
    method = "fork" if threading.active_count() == 1 and "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


def _region_job(args: tuple) -> dict[str, Any]:
    region, ridx, n, seed, dates, tile_px, patch_px, pixel_m, raw, truth = args
    import rasterio

    tr = time.perf_counter()
    with rasterio.Env():   # one GDAL environment for the thousands of files (not one per open)
        out = _region(region, ridx, n, seed, dates, tile_px, patch_px, pixel_m, raw, truth)
    out["seconds"] = time.perf_counter() - tr
    return out


def _swap(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst``; an existing ``dst`` is moved aside first and removed after."""
    old = dst.parent / f".{dst.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
def _s1_schedule(region: Region, dates: np.ndarray) -> list[tuple[int, str, str, str, float]]:
    """(day index, satellite, ASC|DSC, HHMMSS, ellipsoid incidence at the network centre) of every Sentinel-1
    acquisition.

    Each of ``s1_tracks`` relative orbits is seen by S1A every 12 days and by S1B 6 days later; tracks are
    spread over the 6-day half cycle and alternate ascending/descending.
    """
    out = []
    epoch = np.datetime64("2016-09-20", "D")
    for k in range(region.s1_tracks):
        direction = "ASC" if k % 2 == 0 else "DSC"
        base = region.s1_asc_utc if direction == "ASC" else region.s1_dsc_utc
        hhmmss = f"{base[:2]}{int(base[2:4]) + 2 * k:02d}{base[4:]}"
        offset = int(np.floor(k * 6 / region.s1_tracks + 0.5))
        inc = 31.0 + (13.0 * k / max(region.s1_tracks - 1, 1))
        for sat, extra in (("A", 0), ("B", 6)):
            first = (offset + extra - (dates[0] - epoch).astype(int)) % 12
            for d in range(int(first), len(dates), 12):
                out.append((d, sat, direction, hhmmss, inc))
    return sorted(out)


# Look azimuth (clockwise from north) of the right-looking radar: ascending tracks (heading ~348 deg) look east,
# descending (heading ~192 deg) look west.
LOOK_AZIMUTH_DEG = {"ASC": 78.0, "DSC": 282.0}
INC_PER_M = 6.8e-5            # ellipsoid incidence change across the swath, deg per metre of ground range
S2_PATCH_PX = 16              # Sentinel-2 clips keep the central 16 px of each patch (indices are read at the probe)
SPECKLE_CORR_PX = 1.2         # speckle correlation (Gaussian kernel SD, px) after the 7 x 7 Lee sigma filter
TILLAGE_JUMP_DB = 3.5         # roughness rise at ploughing/sowing, decaying with TILLAGE_DECAY_DAYS
TILLAGE_DECAY_DAYS = 45.0
SCENE_NOISE_DB = 2.0          # per parcel and scene: dew, wind in the canopy, crusting, row direction vs look (dB)
# CORINE class -> (mean tillage day of year, SD days): autumn ploughing/sowing of cereals, spring seedbed of maize
TILLAGE = {211: (295, 18), 212: (105, 10), 242: (290, 25)}
IRRIGATION = (135, 255, 15.0)  # sprinkler season (day of year from, to) and mm per application (Duero maize)
CALIBRATION_GAIN_SD = 0.22    # probe installation/calibration: reading = gain * theta + bias
CALIBRATION_BIAS_SD = 0.05    # m3/m3
HWSD_SMOOTH_M = 1500.0        # the coarse soil map (and ISMN's static variables) see texture averaged over ~1 km
SOIL_BANDS = ["clay_pct", "silt_pct", "sand_pct", "organic_carbon_pct", "base_saturation_pct"]
SOIL_TAGS = {"UNITS": "%", "SOURCE": "HWSD-like coarse soil map (~1 km) on the 10 m grid"}


def local_incidence(inc_ell: np.ndarray, look_az_deg: float, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Local incidence angle (deg) on terrain of gradient (gx east, gy north, m/m) seen at ellipsoid incidence
    ``inc_ell`` from a radar looking towards ``look_az_deg``: the angle between the surface normal and the
    direction to the satellite (slopes facing the radar see it steeper: smaller angle)."""
    th, az = np.deg2rad(inc_ell), np.deg2rad(look_az_deg)
    ux, uy, uz = -np.sin(th) * np.sin(az), -np.sin(th) * np.cos(az), np.cos(th)
    cos_loc = (-gx * ux - gy * uy + uz) / np.sqrt(1 + gx ** 2 + gy ** 2)
    return np.rad2deg(np.arccos(np.clip(cos_loc, -1, 1)))


def _crs_tools(region: Region) -> tuple[Any, Any, Any]:
    from pyproj import Transformer
    from rasterio.crs import CRS

    fwd = Transformer.from_crs(4326, region.epsg, always_xy=True)
    inv = Transformer.from_crs(region.epsg, 4326, always_xy=True)
    return CRS.from_epsg(region.epsg), fwd, inv


def _region(region: Region, ridx: int, n_probes: int, seed: int, dates: np.ndarray, tile: int, patch: int,
            pixel_m: float, raw: Path, truth: Path) -> dict[str, Any]:
    """Simulate and write one region; returns what the area-wide files need (small)."""
    from rasterio.transform import Affine

    n_days = len(dates)
    doy = (dates - dates.astype("datetime64[Y]")).astype(int) + 1
    probes = probe_list(region, n_probes, _rng(seed, ridx, _NAMES))
    names = [p for p, _ in probes]
    crs, fwd, inv = _crs_tools(region)
    rl = _rng(seed, ridx, _LAND)
    lay = landscape.layout(rl, region, names, tile, patch, pixel_m, lambda lon, lat: fwd.transform(lon, lat))
    centre = tuple(float(v) for v in fwd.transform(region.lon, region.lat))
    ter = landscape.terrain(rl, region, centre)
    soil = landscape.soils(rl, region, centre)
    areas = lay.areas
    n_areas = len(areas)

    # --- pixels of every area, parcels, terrain, soils ----------------------------------------------------
    px_area, px_r, px_c, px_parcel = [], [], [], []
    parcel_codes, parcel_own = [], []
    n_parcels = 0
    for a_i, a in enumerate(areas):
        inside = [k for k in range(n_probes) if lay.probe_area[k] == a_i]
        local = [(int(lay.probe_rc[k, 0] - a.row0), int(lay.probe_rc[k, 1] - a.col0)) for k in inside]
        idx, codes_a, own = landscape.parcels(rl, region, a, pixel_m, local, [probes[k][1] for k in inside])
        rr, cc = np.mgrid[0:a.size, 0:a.size]
        px_area.append(np.full(a.size * a.size, a_i))
        px_r.append(rr.ravel())
        px_c.append(cc.ravel())
        px_parcel.append(idx.ravel() + n_parcels)
        parcel_codes.append(codes_a)
        parcel_own.append(own)
        n_parcels += len(codes_a)
    px_area, px_r, px_c = np.concatenate(px_area), np.concatenate(px_r), np.concatenate(px_c)
    px_parcel = np.concatenate(px_parcel)
    pcode = np.concatenate(parcel_codes)
    a_row0 = np.array([a.row0 for a in areas])
    a_col0 = np.array([a.col0 for a in areas])
    g_r, g_c = a_row0[px_area] + px_r, a_col0[px_area] + px_c
    x, y = lay.xy(g_r, g_c)
    clc = pcode[px_parcel].astype(np.uint16)
    n_px = clc.size
    elev, gx, gy, slope, wet_idx = ter.all(x, y)
    # What ISMN's metadata and a coarse soil map (HWSD, ~1 km) know: the regional texture, not the field's own.
    (sand, clay, oc, _), (h_sand, h_clay, h_oc, base_sat) = soil.regional_multi(x, y, (0.0, HWSD_SMOOTH_M))
    p_sand = rl.normal(0, 0.55 * region.sand_sd_pct, n_parcels)
    p_clay = rl.normal(0, 0.5 * region.clay_sd_pct, n_parcels)
    sand = np.clip(sand + p_sand[px_parcel], 5, 95)
    clay = np.clip(clay + p_clay[px_parcel], 1, 60)
    sand = np.where(clc == landscape.SAND, 93.0, sand)
    clay = np.where(clc == landscape.SAND, 2.0, clay)
    oc = np.where(clc == landscape.PEAT, 30.0, np.where(clc == landscape.FOREST, oc + 1.5, oc))
    clay = np.minimum(clay, 99 - sand)
    silt = 100 - sand - clay
    porosity, residual, ks, b = landscape.hydraulics(sand, clay, oc, clc)
    forest = clc == landscape.FOREST
    peat = clc == landscape.PEAT
    land_px = (clc != landscape.WATER) & (clc != landscape.BUILT)
    probe_px = np.array([int(np.flatnonzero((px_area == lay.probe_area[k])
                                            & (g_r == lay.probe_rc[k, 0]) & (g_c == lay.probe_rc[k, 1]))[0])
                         for k in range(n_probes)], dtype=np.int64)

    # --- weather at the sites: every area (its centre) and every station ------------------------------------
    a_cx, a_cy = lay.xy(a_row0 + np.array([a.size for a in areas]) / 2 - 0.5,
                        a_col0 + np.array([a.size for a in areas]) / 2 - 0.5)
    st_names, st_x, st_y = _stations(region, names, lay, fwd)
    sx, sy = np.concatenate([a_cx, st_x]), np.concatenate([a_cy, st_y])
    s_lon, s_lat = inv.transform(sx, sy)
    s_lon, s_lat = np.asarray(s_lon), np.asarray(s_lat)
    t_mean, p_ann = _site_climate(region, s_lat, s_lon)
    s_elev = ter.elevation(sx, sy)
    rw = _rng(seed, ridx, _WEATHER)
    w = physics.weather(rw, region, doy, np.column_stack([sx, sy]) / 1000.0, s_elev, s_lat, t_mean, p_ann)
    ts_open, tsmax_open = physics.soil_temperature(w, forest=False)
    ts_forest, tsmax_forest = physics.soil_temperature(w, forest=True)
    frozen_open, frozen_forest = tsmax_open <= 0.0, tsmax_forest <= 0.0
    site = px_area          # the first n_areas sites are the areas

    codes, cls_idx = np.unique(clc, return_inverse=True)
    ndvi_tab = physics.ndvi_table(region, doy, codes)
    ndvi_off = (rw.normal(0, 0.025, n_parcels)[px_parcel] + rw.normal(0, 0.01, n_px))
    water = clc == landscape.WATER

    def ndvi_day(d: int) -> np.ndarray:
        return np.clip(ndvi_tab[d][cls_idx] + np.where(water, 0.0, ndvi_off), -0.5, 0.95)

    def frozen_day(d: int) -> np.ndarray:
        return np.where(forest, frozen_forest[d][site], frozen_open[d][site])

    # Irrigation: sprinklers on irrigated parcels every 4-7 days in the season, skipped on rainy days.
    irr_parcel = pcode == 212
    interval = rw.integers(5, 10, n_parcels)
    phase = rw.integers(0, 8, n_parcels)
    irr_px = irr_parcel[px_parcel]

    def irrigation_day(d: int) -> np.ndarray:
        if not irr_px.any() or not IRRIGATION[0] <= doy[d] <= IRRIGATION[1]:
            return np.zeros(n_px)
        on = irr_parcel & ((d + phase) % interval == 0)
        return np.where(on[px_parcel] & (w.rain_mm[d][site] < 5.0), IRRIGATION[2], 0.0)

    theta = physics.water_balance(w, site, _DayTable(frozen_day, n_days), _DayTable(ndvi_day, n_days), porosity,
                                  residual, ks, b, forest, peat, wet_idx, _DayTable(irrigation_day, n_days), clay)
    stem = np.array([physics.STEM_KG_M2.get(int(c), 0.0) for c in codes])[cls_idx]

    # --- roughness per parcel: a constant part plus ploughing/sowing that decays ------------------------------
    rs = _rng(seed, ridx, _S1)
    p_rough = rs.normal(0, 1.2, n_parcels)
    till_doy = np.full(n_parcels, -1)
    for code, (mu, sd) in TILLAGE.items():
        sel = pcode == code
        till_doy[sel] = np.clip(np.round(rs.normal(mu, sd, sel.sum())), 1, 365)
    px_rough = rs.normal(0, 0.3, n_px)
    y0_, y1_ = int(str(dates[0])[:4]), int(str(dates[-1])[:4])
    jan1 = np.array([np.datetime64(f"{yy}-01-01", "D") for yy in range(y0_ - 1, y1_ + 1)])
    till_days = (jan1[:, None] + till_doy[None, :] - 1 - dates[0]).astype(int)   # (years, parcels); may be < 0

    def rough_day(d: int) -> np.ndarray:
        age = d - np.where(till_days <= d, till_days, -10 ** 6).max(axis=0)
        jump = np.where((till_doy > 0) & (age < 10 ** 5), TILLAGE_JUMP_DB * np.exp(-age / TILLAGE_DECAY_DAYS), 0.0)
        return (p_rough + jump)[px_parcel] + px_rough

    # --- Sentinel-1: tile scene + one clipped scene per probe cluster -------------------------------------------
    s1_dir = raw / "sentinel1" / region.name
    s1_dir.mkdir(parents=True)
    sched = _s1_schedule(region, dates)
    clus = lay.clusters
    cl_cx = np.array([np.mean(x[probe_px[m]]) for m in clus])
    px_cluster = np.array([a.cluster for a in areas])[px_area]
    bright = np.where(clc == landscape.BUILT, 10 ** (rs.uniform(0, 12, n_px) / 10), 0.0)
    clips = _clip_grids(lay, patch, pixel_m)
    csm_cells, csm_grids = _csm_cells(lay, areas, px_area, g_r, g_c, clips, pixel_m)
    n_cells = sum(sh[0] * sh[1] for _, sh, _ in csm_grids.values())
    cell_count = np.bincount(csm_cells, minlength=n_cells)
    s1_cell_db = np.full((len(sched), n_cells), np.nan)
    s1_true_probe = np.full((n_days, n_probes), np.nan)
    vv_prev_day = -1
    for i, (d, sat, direction, hhmmss, inc0) in enumerate(sched):
        nd = ndvi_day(d)
        fz = frozen_day(d)
        th_liq = np.where(fz, theta[d] * physics.LIQUID_FROZEN, theta[d])
        side = 1 if direction == "ASC" else -1
        inc_ell = np.clip(inc0 + side * INC_PER_M * (x - cl_cx[px_cluster]), 29.1, 46.0)
        inc = local_incidence(inc_ell, LOOK_AZIMUTH_DEG[direction], gx, gy)
        wet_snow = (w.swe_mm[d] > 1.0)[site] & (w.ta_mean[d] > 0.0)[site]
        vv, vh = physics.sigma0(th_liq, physics.vwc_kg_m2(nd, stem), inc, rough_day(d), wet_snow)
        noise = rs.normal(0, SCENE_NOISE_DB, (2, n_parcels))
        vv = vv * 10 ** (noise[0][px_parcel] / 10)
        vh = vh * 10 ** ((0.6 * noise[0] + 0.8 * noise[1])[px_parcel] / 10)
        vv = np.where(water, 0.004, vv)
        vh = np.where(water, 0.0008, vh)
        vv = np.where(bright > 0, bright, vv)
        vh = np.where(bright > 0, 0.1 * bright, vh)
        if d != vv_prev_day:   # the truth table keeps the first pass of the day, before speckle
            s1_true_probe[d] = vv[probe_px]
            vv_prev_day = d
        vv = vv * _area_speckle(rs, areas, px_area)
        vh = vh * _area_speckle(rs, areas, px_area)
        out = rs.random(n_px) < OUTLIER_P
        vv = np.where(out, vv * rs.uniform(15, 80, n_px), vv)
        stamp = f"{str(dates[d]).replace('-', '')}T{hhmmss}"
        iso = f"{dates[d]}T{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:]}"
        bands = np.concatenate([_trim(np.stack([vv, vh])), _trim(inc[None], 13)])   # incidence to ~0.03 deg
        tags = {"ACQUISITION_TIME": iso, "ORBIT_DIRECTION": "ASCENDING" if direction == "ASC" else "DESCENDING",
                "UNITS": "linear", "PLATFORM": f"SENTINEL-1{sat}"}
        _write_areas(s1_dir, writers.s1_name(sat, stamp, direction), bands, areas, px_area, clips, lay, crs,
                     float("nan"), ["sigma0_vv", "sigma0_vh", "incidence_angle_deg"], tags, 3)
        # The 1 km change-detection product sees the cell mean of the speckled scene (in dB).
        with np.errstate(divide="ignore", invalid="ignore"):
            s1_cell_db[i] = 10 * np.log10(np.bincount(csm_cells, weights=vv, minlength=n_cells) / cell_count)

    # --- CSM-like product: change detection per 1 km cell --------------------------------------------------
    import warnings

    with warnings.catch_warnings():   # cells without any simulated pixel stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanpercentile(s1_cell_db, 10, axis=0)   # historical dry / wet references, 10 % trimmed each side
        hi = np.nanpercentile(s1_cell_db, 90, axis=0)
    ssi = np.clip((s1_cell_db - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    cell_porosity = np.bincount(csm_cells, weights=porosity, minlength=n_cells) / np.maximum(cell_count, 1)
    csm = (ssi * cell_porosity).astype(np.float32)
    csm_days: dict[int, list[np.ndarray]] = {}
    for i, (d, *_rest) in enumerate(sched):
        csm_days.setdefault(d, []).append(csm[i])
    csm_probe = np.full((n_days, n_probes), np.nan)
    for d, vals in csm_days.items():
        v = np.mean(vals, axis=0).astype(np.float32)
        for k, (cname, (ctrans, cshape, coff)) in enumerate(csm_grids.items()):
            folder = raw / "products" / "csm" / region.name / cname
            folder.mkdir(parents=True, exist_ok=True)
            grid = np.full(cshape[0] * cshape[1], np.nan, np.float32)
            cells = np.arange(coff, coff + grid.size)
            grid[:] = np.where(cell_count[cells] > 0, v[cells], np.nan)
            writers.write_tif(folder / f"CSM_SSM1km_{str(dates[d]).replace('-', '')}.tif", grid.reshape(cshape),
                              crs, ctrans, nodata=float("nan"), descriptions=["ssm"], tags={"UNITS": "m3/m3"},
                              predictor=3)
        csm_probe[d] = v[csm_cells[probe_px]]

    # --- Sentinel-2 ---------------------------------------------------------------------------------------
    r2 = _rng(seed, ridx, _S2)
    s2_dir = raw / "sentinel2" / region.name
    s2_dir.mkdir(parents=True)
    ndvi_probe = np.stack([ndvi_day(d)[probe_px] for d in range(n_days)])
    a_xy = np.column_stack([a_cx, a_cy]) / 1000.0
    d_km = np.hypot(*(a_xy[:, None, :] - a_xy[None, :, :]).transpose(2, 0, 1))
    cloud_chol = np.linalg.cholesky(np.exp(-d_km / 25.0) + 1e-9 * np.eye(n_areas))
    n_s2 = 0
    for k, d in enumerate(range(region.s2_offset_days, n_days, S2_REVISIT_DAYS)):
        if region.polar_night and (doy[d] >= region.polar_night[0] or doy[d] <= region.polar_night[1]):
            continue
        nd = ndvi_day(d)
        ndwi = np.clip(-0.25 + 0.85 * nd + 0.15 * (theta[d] / porosity - 0.5), -0.6, 0.8)
        winter = -np.cos(2 * np.pi * (doy[d] - 20) / 365.0) < 0
        p_cloudy = min(region.cloudy_scene_p + (0.1 if winter else -0.1), 0.95)
        cover = r2.uniform(0.5, 1.0) if r2.random() < p_cloudy else r2.uniform(0.0, 0.15)
        big = cloud_chol @ r2.standard_normal(n_areas)
        small = np.concatenate([landscape.smooth_noise(r2, (a.size, a.size), max(a.size / 4.0, 2.0)).ravel()
                                for a in areas])
        field = 0.8 * big[px_area] + 0.6 * small
        from scipy.special import ndtri

        thr = ndtri(1 - cover) if cover > 0 else np.inf
        cld = np.clip(100 / (1 + np.exp(-(field - thr) / 0.15)), 0, 100)
        snow = (w.swe_mm[d] > 2.0)[site]
        snw = np.where(snow, np.where(forest, 60.0, 97.0), 0.0) * (1 - cld / 100)
        b4, b8a, b12 = physics.reflectance(nd, ndwi, cld, snw, r2)
        arr = np.stack([b4, b8a, b12]) * 10000
        arr = np.clip(np.round(arr), 1, 65535)
        arr = np.concatenate([arr, np.round(np.stack([cld, snw]))]).astype(np.uint16)
        hh = region.s2_utc
        sat = "A" if k % 2 == 0 else "B"
        stamp = f"{str(dates[d]).replace('-', '')}T{hh}"
        _write_areas(s2_dir, writers.s2_name(sat, stamp, region.s2_tile), arr, areas, px_area, clips, lay, crs, 0,
                     ["B04", "B8A", "B12", "CLD", "SNW"],
                     {"ACQUISITION_TIME": f"{dates[d]}T{hh[:2]}:{hh[2:4]}:{hh[4:]}", "TILE_ID": region.s2_tile,
                      "PROCESSING_LEVEL": "Level-2A", "SCALE": "reflectance x 10000 (B04, B8A, B12); % (CLD, SNW)"}, 1,
                     crop=S2_PATCH_PX if patch > S2_PATCH_PX else None)
        n_s2 += 1

    # --- static layers (tile + clips), SoilGrids-like texture, truth ------------------------------------------
    st = raw / "static"
    st.mkdir(exist_ok=True)
    hwsd = np.stack([h_clay, 100 - h_sand - h_clay, h_sand, h_oc, base_sat]).astype(np.float32)
    tile_a = areas[0]
    t_trans = lay_transform(lay, tile_a.row0, tile_a.col0)
    tsl = px_area == 0
    writers.write_tif(st / f"{region.name}_dtm.tif", elev[tsl].reshape(1, tile, tile).astype(np.float32), crs, t_trans,
                      nodata=float("nan"), descriptions=["elevation_m"], tags={"UNITS": "m"}, predictor=3)
    writers.write_tif(st / f"{region.name}_clc.tif", clc[tsl].reshape(1, tile, tile), crs, t_trans, nodata=0,
                      descriptions=["landcover_code"], tags={"CLASSIFICATION": "CORINE Land Cover 2018"})
    writers.write_tif(st / f"{region.name}_soil.tif", hwsd[:, tsl].reshape(5, tile, tile), crs, t_trans,
                      nodata=float("nan"), descriptions=SOIL_BANDS, tags=SOIL_TAGS, predictor=3)
    if n_areas > 1:
        (st / region.name).mkdir(exist_ok=True)
        for cname, (ctrans, cshape, patches) in _clip_patches(np.stack([elev]).astype(np.float32), areas, px_area,
                                                              clips, lay).items():
            writers.write_sparse_tif(st / region.name / f"{cname}_dtm.tif", cshape, patches, crs, ctrans,
                                     float("nan"), ["elevation_m"], {"UNITS": "m"}, 3)
        for cname, (ctrans, cshape, patches) in _clip_patches(clc[None], areas, px_area, clips, lay).items():
            writers.write_sparse_tif(st / region.name / f"{cname}_clc.tif", cshape, patches, crs, ctrans, 0,
                                     ["landcover_code"], {"CLASSIFICATION": "CORINE Land Cover 2018"})
        for cname, (ctrans, cshape, patches) in _clip_patches(hwsd, areas, px_area, clips, lay).items():
            writers.write_sparse_tif(st / region.name / f"{cname}_soil.tif", cshape, patches, crs, ctrans,
                                     float("nan"), SOIL_BANDS, SOIL_TAGS, 3)
    _write_soilgrids(raw / "soilgrids" / region.name, soil, lay, _rng(seed, ridx, _SOILGRIDS), fwd, inv, region)
    tr_soil = np.stack([clay, silt, sand, oc, base_sat, wet_idx])[:, tsl].reshape(6, tile, tile).astype(np.float32)
    writers.write_tif(truth / f"{region.name}_soil.tif", tr_soil, crs, t_trans, nodata=float("nan"),
                      descriptions=["clay_pct", "silt_pct", "sand_pct", "organic_carbon_pct", "base_saturation_pct",
                                    "wetness_index"], tags={"UNITS": "% (wetness_index: unitless)"}, predictor=3)
    writers.write_tif(truth / f"{region.name}_ssm.tif", theta[:, tsl].reshape(n_days, tile, tile), crs, t_trans,
                      nodata=float("nan"), tags={"START_DATE": str(dates[0]), "UNITS": "m3/m3",
                                                 "BAND_STEP": "1 day (band i = START_DATE + i - 1 days)"},
                      predictor=3)

    # --- weather stations ----------------------------------------------------------------------------------
    stations = _write_weather(raw / "weather", region, dates, w, st_names, n_areas, s_lat, s_lon, rw)

    # --- probes -----------------------------------------------------------------------------------------
    psite = site[probe_px]
    ts_probe = np.where(forest[probe_px][None, :], ts_forest[:, psite], ts_open[:, psite])
    tsmax_probe = np.where(forest[probe_px][None, :], tsmax_forest[:, psite], tsmax_open[:, psite])
    ssm_probe = theta[:, probe_px].astype(np.float64)
    plon, plat = (np.asarray(v) for v in inv.transform(x[probe_px], y[probe_px]))
    # ISMN static variables come from HWSD (~1 km): the coarse regional texture, not the field's own.
    hp = probe_px
    h_por = landscape.hydraulics(h_sand[hp], h_clay[hp], h_oc[hp], clc[hp])[0]
    info = {"lat": plat, "lon": plon, "elev": elev[hp], "porosity": h_por, "clay": h_clay[hp],
            "silt": 100 - h_sand[hp] - h_clay[hp], "sand": h_sand[hp], "oc": h_oc[hp], "base_sat": base_sat[hp],
            "true_porosity": porosity[probe_px]}
    rp = _rng(seed, ridx, _ICOS if region.icos else _PROBES)
    amp_probe = np.where(forest[probe_px][None, :], 0.3, 0.6) * w.dtr[:, psite]
    amp_probe = np.where(w.swe_mm[:, psite] > 5.0, 0.3, amp_probe)
    if region.icos:
        subs = _write_icos(raw / "icos", region, probes, dates, ssm_probe, ts_probe, amp_probe, info, rp)
    else:
        _write_ismn(raw / "ismn", region, probes, dates, ssm_probe, ts_probe, amp_probe, info, rp)
        subs = {}

    # --- ECV-like series per probe cluster (the coarse cells containing it) ---------------------------------
    rpp = _rng(seed, ridx, _PRODUCTS)
    ecv_cl = []
    for k, members in enumerate(clus):
        sel = land_px & (px_cluster == k)
        m = theta[:, sel].mean(axis=1)
        m = np.convolve(np.pad(m, 1, mode="edge"), np.ones(3) / 3, mode="valid")  # 25 km footprint, 3-day composite
        # Coarse and biased (thesis 4.2: narrow spread, MAE ~0.1): damped response, regional bias, retrieval noise.
        ecv = np.clip(0.45 * m + 0.08 + rpp.normal(0, 0.04) + rpp.normal(0, 0.03, n_days), 0.02, 0.35)
        fz_share = np.mean(np.where(forest[sel][None, :], frozen_forest[:, site[sel]], frozen_open[:, site[sel]]),
                           axis=1)
        flag = np.zeros(n_days, dtype=np.int8)
        flag[(fz_share > 0.3) | (w.swe_mm[:, site[sel]].mean(axis=1) > 1.0)] = 1
        flag[(flag == 0) & (rpp.random(n_days) < 0.2)] = 4       # no valid retrieval (orbit gaps etc.)
        ecv = np.where(flag == 0, ecv, np.nan)
        unc = np.where(flag == 0, 0.04 + 0.01 * rpp.random(n_days), np.nan)
        sel_a = [a_i for a_i, a in enumerate(areas) if a.cluster == k]
        lons, lats = [], []
        for a_i in sel_a:
            a = areas[a_i]
            rr = np.array([a.row0, a.row0, a.row0 + a.size, a.row0 + a.size]) - 0.5
            cc = np.array([a.col0, a.col0 + a.size, a.col0, a.col0 + a.size]) - 0.5
            lo_, la_ = inv.transform(*lay.xy(rr, cc))
            lons += list(lo_)
            lats += list(la_)
        ecv_cl.append({"bounds": (min(lons), min(lats), max(lons), max(lats)), "ecv": ecv, "unc": unc, "flag": flag,
                       "members": members})
    ecv_probe = np.full((n_days, n_probes), np.nan)
    for c in ecv_cl:
        ecv_probe[:, c["members"]] = c["ecv"][:, None]

    area_of = [areas[lay.probe_area[k]] for k in range(n_probes)]
    probe_entries = []
    for k, (name, code) in enumerate(probes):
        a = area_of[k]
        if lay.probe_area[k] == 0:
            where, row, col = "tile", int(lay.probe_rc[k, 0] - a.row0), int(lay.probe_rc[k, 1] - a.col0)
        else:
            cname = lay.cluster_names[a.cluster]
            r0, c0 = clips[cname][0]
            where, row, col = cname, int(lay.probe_rc[k, 0] - r0), int(lay.probe_rc[k, 1] - c0)
        probe_entries.append({"probe_id": name, "network": region.network, "region": region.name,
                              "lat": round(float(plat[k]), 6), "lon": round(float(plon[k]), 6), "area": where,
                              "row": row, "col": col, "landcover_code": int(code),
                              "source": "icos" if region.icos else "ismn",
                              **({"sub_probes": subs[name]} if subs else {})})
    from rasterio.transform import array_bounds

    tb = array_bounds(tile, tile, t_trans)
    tlon, tlat = inv.transform([tb[0], tb[2], tb[0], tb[2]], [tb[1], tb[1], tb[3], tb[3]])
    entry = {"crs": f"EPSG:{region.epsg}", "transform": list(t_trans)[:6], "bounds": [float(v) for v in tb],
             "bounds_lonlat": [round(min(tlon), 6), round(min(tlat), 6), round(max(tlon), 6), round(max(tlat), 6)],
             "network": region.network, "climate": region.climate, "tile_px": tile, "patch_px": patch,
             "extent_km": region.extent_km,
             "clips": {c: {"transform": list(lay_transform(lay, *clips[c][0]))[:6], "shape": list(clips[c][1])}
                       for c in clips},
             "s1_tracks": region.s1_tracks, "s1_revisit_days": region.s1_revisit_days, "s1_scenes": len(sched),
             "s2_revisit_days": S2_REVISIT_DAYS, "s2_scenes": n_s2, "weather_stations": [s["station"] for s in stations],
             "weather_station": stations[0]["station"],
             "weather_resolution": "hourly" if region.weather_hourly else "daily",
             "frozen_days_open": int(frozen_open[:, 0].sum())}
    truth_frame = {"probe_id": np.repeat(names, n_days), "date": np.tile(dates, n_probes),
                   "region": region.name, "ssm_true": ssm_probe.T.ravel(),
                   "sigma0_vv_true": s1_true_probe.T.ravel(), "ndvi_true": ndvi_probe.T.ravel(),
                   "ts_max_true": tsmax_probe.T.ravel(), "frozen": (tsmax_probe <= 0).T.ravel(),
                   "ecv_sm": ecv_probe.T.ravel(), "csm": csm_probe.T.ravel(),
                   "wetness_true": np.repeat(wet_idx[probe_px], n_days),
                   "sand_true": np.repeat(sand[probe_px], n_days), "clay_true": np.repeat(clay[probe_px], n_days)}
    return {"name": region.name, "entry": entry, "probes": probe_entries, "truth": truth_frame, "ecv": ecv_cl,
            "info": info, "region": region, "stations": stations}


def lay_transform(lay: landscape.Layout, row0: int, col0: int) -> Any:
    """Affine transform of a window of the region grid starting at global (row0, col0)."""
    from rasterio.transform import Affine

    return Affine(lay.pixel_m, 0.0, lay.x0 + col0 * lay.pixel_m, 0.0, -lay.pixel_m, lay.y0 - row0 * lay.pixel_m)


def _trim(a: np.ndarray, bits: int = 16) -> np.ndarray:
    """float32 with the ``bits`` lowest mantissa bits cleared (16: relative precision 2^-8, 0.02 dB of sigma0):
    far below the speckle (~1 dB) and the calibration accuracy (~0.5 dB), and the rasters compress ~2x better
    (GDAL's DISCARD_LSB does the same)."""
    a = np.ascontiguousarray(a, np.float32)
    v = a.view(np.uint32)
    v &= np.uint32((0xFFFFFFFF << bits) & 0xFFFFFFFF)
    return a


def _area_speckle(rng: np.random.Generator, areas: list, px_area: np.ndarray) -> np.ndarray:
    """Speckle for all pixels, area by area (the tile, then the patches as one stack), in pixel order."""
    out = [physics.speckle(rng, (1, areas[0].size, areas[0].size), SPECKLE_LOOKS, SPECKLE_CORR_PX).ravel()]
    if len(areas) > 1:
        p = areas[1].size
        out.append(physics.speckle(rng, (len(areas) - 1, p, p), SPECKLE_LOOKS, SPECKLE_CORR_PX).ravel())
    return np.concatenate(out)


def _clip_grids(lay: landscape.Layout, patch: int, pixel_m: float) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Per probe cluster: (global row0, col0) and (rows, cols) of its clipped scenes: the bounding box of its patches
    (not the tile), snapped outwards to whole 64 px blocks of the region grid."""
    B = writers.SPARSE_BLOCK
    out = {}
    for k, name in enumerate(lay.cluster_names):
        ps = [a for a in lay.areas[1:] if a.cluster == k]
        if not ps:
            continue
        r0 = min(a.row0 for a in ps) // B * B
        c0 = min(a.col0 for a in ps) // B * B
        r1 = -(-max(a.row0 + a.size for a in ps) // B) * B
        c1 = -(-max(a.col0 + a.size for a in ps) // B) * B
        out[name] = ((r0, c0), (r1 - r0, c1 - c0))
    return out


def _clip_patches(values: np.ndarray, areas: list, px_area: np.ndarray, clips: dict, lay: landscape.Layout,
                  crop: int | None = None) -> dict[str, tuple[Any, tuple[int, int], list]]:
    """(bands, pixels) values -> per clip: (transform, shape, [(row0, col0, (bands, p, p) patch)]); ``crop``: keep
    only the central ``crop`` x ``crop`` pixels of each patch (the probe stays at the centre)."""
    out: dict[str, tuple[Any, tuple[int, int], list]] = {}
    starts = np.searchsorted(px_area, np.arange(len(areas) + 1))
    for a_i in range(1, len(areas)):
        a = areas[a_i]
        cname = lay.cluster_names[a.cluster]
        (r0, c0), shape = clips[cname]
        v = values[:, starts[a_i]:starts[a_i + 1]].reshape(values.shape[0], a.size, a.size)
        off = 0
        if crop is not None and crop < a.size:
            off = (a.size - crop) // 2
            v = v[:, off:off + crop, off:off + crop]
        entry = out.setdefault(cname, (lay_transform(lay, r0, c0), shape, []))
        entry[2].append((a.row0 - r0 + off, a.col0 - c0 + off, v))
    return out


def _write_areas(folder: Path, name: str, bands: np.ndarray, areas: list, px_area: np.ndarray, clips: dict,
                 lay: landscape.Layout, crs: Any, nodata: float | int, descriptions: list[str], tags: dict,
                 predictor: int, crop: int | None = None) -> None:
    """One acquisition: the tile scene ``folder/name`` and a clipped scene ``folder/<cluster>/name`` per cluster
    (patches cropped to their central ``crop`` pixels)."""
    a = areas[0]
    n0 = a.size * a.size
    writers.write_tif(folder / name, bands[:, :n0].reshape(bands.shape[0], a.size, a.size), crs,
                      lay_transform(lay, a.row0, a.col0), nodata=nodata, descriptions=descriptions, tags=tags,
                      predictor=predictor)
    for cname, (ctrans, cshape, patches) in _clip_patches(bands, areas, px_area, clips, lay, crop).items():
        (folder / cname).mkdir(exist_ok=True)
        writers.write_sparse_tif(folder / cname / name, cshape, patches, crs, ctrans, nodata, descriptions, tags,
                                 predictor)


def _csm_cells(lay: landscape.Layout, areas: list, px_area: np.ndarray, g_r: np.ndarray, g_c: np.ndarray,
               clips: dict, pixel_m: float) -> tuple[np.ndarray, dict[str, tuple[Any, tuple[int, int], int]]]:
    """1 km CSM cells per probe cluster (grid over the cluster's tile/patches, origin on whole km): cell index of
    every pixel (unique over the region) and per cluster (transform, shape, first cell index)."""
    from rasterio.transform import Affine

    x, y = lay.xy(g_r, g_c)
    px_cl = np.array([a.cluster for a in areas])[px_area]
    cells = np.empty(len(g_r), dtype=np.int64)
    grids = {}
    off = 0
    for k, cname in enumerate(lay.cluster_names):
        sel = px_cl == k
        gx0 = np.floor(x[sel].min() / CSM_CELL_M) * CSM_CELL_M
        gy0 = np.ceil(y[sel].max() / CSM_CELL_M) * CSM_CELL_M
        ci = ((x[sel] - gx0) // CSM_CELL_M).astype(int)
        ri = ((gy0 - y[sel]) // CSM_CELL_M).astype(int)
        shape = (int(ri.max()) + 1, int(ci.max()) + 1)
        cells[sel] = off + ri * shape[1] + ci
        grids[cname] = (Affine(CSM_CELL_M, 0.0, float(gx0), 0.0, -CSM_CELL_M, float(gy0)), shape, off)
        off += shape[0] * shape[1]
    return cells, grids


def _stations(region: Region, names: list[str], lay: landscape.Layout, fwd: Any
              ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Weather stations: ICOS sites measure their own weather (one station per site); elsewhere the region's main
    station at the network centre and its extra stations (east, north km from it)."""
    if region.icos:
        xs, ys = lay.xy(lay.probe_rc[:, 0], lay.probe_rc[:, 1])
        return list(names), xs + 150.0, ys - 150.0        # the mast a little away from the soil sensors
    cx, cy = fwd.transform(region.lon, region.lat)
    st = [(region.weather_station, 0.0, 0.0), *region.stations]
    return ([s[0] for s in st], np.array([cx + 1000 * s[1] for s in st]), np.array([cy + 1000 * s[2] for s in st]))


def _site_climate(region: Region, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean annual temperature and precipitation per site: the nearest fixed site's normals (ICOS), else the
    region's."""
    t = np.full(len(lat), region.t_mean_c)
    p = np.full(len(lat), region.p_annual_mm)
    if region.sites:
        s = np.array(list(region.sites.values()))
        d = np.hypot(lat[:, None] - s[None, :, 0], (lon[:, None] - s[None, :, 1]) * np.cos(np.deg2rad(lat[:, None])))
        j = d.argmin(axis=1)
        t, p = s[j, 2], s[j, 3]
    return t, p


def _write_soilgrids(folder: Path, soil: landscape.Soils, lay: landscape.Layout, rng: np.random.Generator,
                     fwd: Any, inv: Any, region: Region) -> None:
    """SoilGrids-like 250 m texture per probe cluster (``<folder>/<cluster>/{sand,silt,clay,soc}_0-5cm_mean.tif``)
    on the Homolosine grid: the regional texture fields averaged over 250 m plus a prediction error (smooth and
    local), never the field-to-field detail; what a map or the probe table can use as soil input."""
    from pyproj import Transformer
    from rasterio.transform import Affine

    res = writers.SOILGRIDS_RES_M
    to_igh = Transformer.from_crs(4326, writers.SOILGRIDS_CRS, always_xy=True)
    from_igh = Transformer.from_crs(writers.SOILGRIDS_CRS, 4326, always_xy=True)
    err = (landscape.Field(rng, 5000.0), landscape.Field(rng, 5000.0))
    for k, cname in enumerate(lay.cluster_names):
        ks = [i for i in range(len(lay.probe_rc)) if lay.areas[lay.probe_area[i]].cluster == k]
        xs, ys = lay.xy(lay.probe_rc[ks, 0], lay.probe_rc[ks, 1])
        lon, lat = inv.transform(np.concatenate([xs - 1500, xs + 1500]), np.concatenate([ys - 1500, ys + 1500]))
        ix, iy = to_igh.transform(lon, lat)
        gx0, gy0 = np.floor(min(ix) / res) * res, np.ceil(max(iy) / res) * res
        w_, h_ = int(np.ceil((max(ix) - gx0) / res)) + 1, int(np.ceil((gy0 - min(iy)) / res)) + 1
        cx = gx0 + (np.arange(w_) + 0.5) * res
        cy = gy0 - (np.arange(h_) + 0.5) * res
        CX, CY = np.meshgrid(cx, cy)
        lo, la = from_igh.transform(CX.ravel(), CY.ravel())
        ux, uy = fwd.transform(lo, la)
        ux, uy = np.asarray(ux), np.asarray(uy)
        sand, clay, oc = soil.regional(ux, uy, smooth_m=res / 2)
        sand = np.clip(sand + 0.3 * region.sand_sd_pct * err[0](ux, uy) + rng.normal(0, 2.0, sand.size), 2, 98)
        clay = np.clip(clay + 0.3 * region.clay_sd_pct * err[1](ux, uy) + rng.normal(0, 1.0, clay.size), 1, 60)
        clay = np.minimum(clay, 99 - sand)
        silt = 100 - sand - clay
        oc = oc * np.exp(rng.normal(0, 0.2, oc.size))
        out = folder / cname
        out.mkdir(parents=True, exist_ok=True)
        trans = Affine(res, 0.0, float(gx0), 0.0, -res, float(gy0))
        for prop, v in (("sand", sand), ("silt", silt), ("clay", clay), ("soc", oc)):
            writers.write_soilgrids(out / writers.soilgrids_name(prop), v.reshape(h_, w_), prop, trans)


class _DayTable:
    """A (days, pixels) array computed one day at a time (keeps bench-size memory small)."""

    def __init__(self, fn: Any, n: int) -> None:
        self.fn, self.shape = fn, (n, 0)

    def __getitem__(self, d: int) -> np.ndarray:
        return self.fn(d)


def _write_weather(folder: Path, region: Region, dates: np.ndarray, w: physics.Weather, names: list[str],
                   first: int, lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One hourly (Denmark, Sweden) or daily (Finland, Spain) CSV per station (``time`` ISO UTC, ``precip_mm``,
    ``ta_c``); station ``k`` is weather site ``first + k``. Returns the rows of ``stations.csv``."""
    folder.mkdir(exist_ok=True)
    rows = []
    for k, name in enumerate(names):
        j = first + k
        if region.weather_hourly:
            t = (dates.astype("datetime64[h]")[:, None] + np.arange(24).astype("timedelta64[h]")).ravel()
            ta_h, p_h = physics.hourly(rng, w, j)
            p, ta = p_h.ravel(), ta_h.ravel()
            time_s = np.strings.add(np.datetime_as_string(t, unit="m"), ":00")
        else:
            p, ta = w.precip_mm[:, j], w.ta_mean[:, j]
            time_s = np.datetime_as_string(dates, unit="D")
        lines = np.strings.add(np.strings.add(np.strings.add(time_s.astype("S19"), b","),
                                              np.strings.lstrip(writers.fixed(p, 1, 1))),
                               np.strings.add(b",", np.strings.lstrip(writers.fixed(ta, 1, 1))))
        (folder / f"{region.name}_{name}.csv").write_bytes(b"time,precip_mm,ta_c\n" + b"\n".join(lines.tolist()) + b"\n")
        rows.append({"station": name, "region": region.name, "lat": round(float(lat[j]), 6),
                     "lon": round(float(lon[j]), 6), "resolution": "hourly" if region.weather_hourly else "daily"})
    return rows


def _sensor_errors(rng: np.random.Generator, n_days: int, steps: int) -> tuple[np.ndarray, float]:
    """Probe error: installation/calibration (gain and bias: a probe in a stony or clayey field reads its soil
    differently, Hydra/5TE factory calibrations differ by +-0.03-0.05 m3/m3) + day-to-day drift (AR(1)) + reading
    noise (sd 0.01-0.03 m3/m3). Returns (additive error per reading, gain)."""
    sd = rng.uniform(0.01, 0.03)
    gain = float(np.clip(rng.normal(1.0, CALIBRATION_GAIN_SD), 0.7, 1.35))
    bias = rng.normal(0, CALIBRATION_BIAS_SD)
    drift = np.empty(n_days)
    a = 0.0
    e = rng.normal(0, sd / 2 * np.sqrt(1 - 0.9 ** 2), n_days)
    for i in range(n_days):
        a = 0.9 * a + e[i]
        drift[i] = a
    err = bias + np.repeat(drift, steps) + rng.normal(0, sd / 2, n_days * steps)
    # A malfunction episode (2-5 days of +0.2) in a quarter of the probes: the "questionable > 0.5" readings.
    if rng.random() < 0.25:
        d0 = int(rng.integers(0, max(n_days - 5, 1)))
        err[d0 * steps:(d0 + int(rng.integers(2, 6))) * steps] += 0.2
    return err, gain


def _gaps(rng: np.random.Generator, n_days: int, steps: int) -> np.ndarray:
    """Missing-reading mask: a few outages of days to weeks plus 1 % random missing readings."""
    miss = rng.random(n_days * steps) < 0.01
    for _ in range(int(rng.poisson(1.5 * n_days / 883))):
        d0 = int(rng.integers(0, n_days))
        miss[d0 * steps:(d0 + int(min(rng.geometric(1 / 15), 90))) * steps] = True
    return miss


def _hourly_ts(ts: np.ndarray, amp: np.ndarray, steps: int) -> np.ndarray:
    """Soil temperature at each reading: the daily mean plus a daily cycle peaking ~15 UTC, degC."""
    h = np.arange(steps) * 24.0 / steps
    return (ts[:, None] + amp[:, None] / 2 * np.sin(2 * np.pi * (h[None, :] - 9) / 24)).ravel()


def _write_ismn(folder: Path, region: Region, probes: list[tuple[str, int]], dates: np.ndarray, ssm: np.ndarray,
                ts: np.ndarray, amp: np.ndarray, info: dict, rng: np.random.Generator) -> None:
    """ISMN header+values folder: <NET>/<STATION>/*.stm (sm 0-0.05 m, ts 0.05 m) + static_variables.csv."""
    stamps = writers.ismn_stamps(dates)
    d0, d1 = str(dates[0]).replace("-", ""), str(dates[-1]).replace("-", "")
    net = region.network
    for i, (station, code) in enumerate(probes):
        sdir = folder / net / station
        sdir.mkdir(parents=True)
        ts_h = _hourly_ts(ts[:, i], amp[:, i], 24) + rng.normal(0, 0.2, len(stamps))
        err, gain = _sensor_errors(rng, len(dates), 24)
        frozen_h = ts_h <= 0.0
        diurnal = 0.003 * np.sin(2 * np.pi * (np.arange(len(stamps)) % 24 - 14) / 24)
        sm = gain * np.repeat(ssm[:, i], 24) * np.where(frozen_h, physics.LIQUID_FROZEN, 1.0) + diurnal + err
        sm = np.clip(sm, 0.0, 0.75)
        miss = _gaps(rng, len(dates), 24)
        sm = np.where(miss, np.nan, sm)
        # ISMN quality flags: D01 soil temperature < 0 degC, C03 above the HWSD saturation, a few D04/D05
        # (rise without / before precipitation); the rest 'G'.
        flags = np.full(len(stamps), "G", dtype="S3")
        spurious = rng.random(len(stamps))
        flags[spurious < 0.008] = "D04"
        flags[(spurious >= 0.008) & (spurious < 0.015)] = "D05"
        flags[sm > max(info["porosity"][i], info["true_porosity"][i]) + 0.02] = "C03"
        flags[frozen_h] = "D01"
        lat, lon, elev = float(info["lat"][i]), float(info["lon"][i]), float(info["elev"][i])
        base = f"{net}_{net}_{station}"
        # ISMN names a file by the first and last day it holds (a gap at the end shortens the name's range).
        s0, s1 = writers.ismn_range(stamps, sm, d0, d1)
        writers.write_stm(sdir / f"{base}_sm_0.000000_0.050000_{region.probe_sensor}_{s0}_{s1}.stm", net, station,
                          lat, lon, elev, (0.0, 0.05), region.probe_sensor, stamps, sm, flags, 4)
        ts_vals = np.where(miss, np.nan, ts_h)
        s0, s1 = writers.ismn_range(stamps, ts_vals, d0, d1)
        writers.write_stm(sdir / f"{base}_ts_0.050000_0.050000_{region.probe_sensor}_{s0}_{s1}.stm", net, station,
                          lat, lon, elev, (0.05, 0.05), region.probe_sensor, stamps, ts_vals,
                          np.full(len(stamps), "G", dtype="S3"), 2)
        writers.write_ismn_static(sdir / f"{base}_static_variables.csv", float(info["clay"][i]),
                                  float(info["silt"][i]), float(info["sand"][i]), float(info["oc"][i]),
                                  float(info["porosity"][i]), float(info["base_sat"][i]), code,
                                  CORINE.get(code, ""), region.climate)


def _write_icos(folder: Path, region: Region, probes: list[tuple[str, int]], dates: np.ndarray, ssm: np.ndarray,
                ts: np.ndarray, amp: np.ndarray, info: dict, rng: np.random.Generator) -> dict[str, int]:
    """ICOS-like half-hourly CSV per site with 2-4 sub-probes (SWC_n in %, TS_n in degC, -9999 missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    t = (dates.astype("datetime64[m]")[:, None] + (np.arange(48) * 30).astype("timedelta64[m]")).ravel()
    t_start = np.strings.replace(np.strings.replace(np.strings.replace(
        np.datetime_as_string(t, unit="m"), "-", ""), "T", ""), ":", "")
    t_end = np.strings.replace(np.strings.replace(np.strings.replace(
        np.datetime_as_string(t + np.timedelta64(30, "m"), unit="m"), "-", ""), "T", ""), ":", "")
    subs: dict[str, int] = {}
    for i, (site, _code) in enumerate(probes):
        n_sub = int(rng.integers(2, 5))
        subs[site] = n_sub
        cols: dict[str, Any] = {"TIMESTAMP_START": t_start, "TIMESTAMP_END": t_end}
        ts_h = _hourly_ts(ts[:, i], amp[:, i], 48)
        frozen_h = ts_h <= 0.0
        base = np.repeat(ssm[:, i], 48) * np.where(frozen_h, physics.LIQUID_FROZEN, 1.0)
        site_miss = _gaps(rng, len(dates), 48)
        swc, tss = {}, {}
        for k in range(1, n_sub + 1):
            err, gain = _sensor_errors(rng, len(dates), 48)
            offset = rng.normal(0, 0.02)      # sub-probes within ~10 m2 differ a little (thesis 3.2.1)
            v = np.clip(gain * base + offset + err, 0.0, 0.75) * 100.0
            miss = site_miss | (rng.random(len(v)) < 0.01)
            swc[f"SWC_{k}"] = np.where(miss, -9999.0, np.round(v, 2))
            tss[f"TS_{k}"] = np.where(miss, -9999.0, np.round(ts_h + rng.normal(0, 0.2, len(v)), 2))
        cols.update(swc)
        cols.update(tss)
        line = np.strings.add(np.strings.add(t_start.astype("S12"), b","), t_end.astype("S12"))
        for name in list(swc) + list(tss):
            v = cols[name]
            txt = np.where(v == -9999.0, b"-9999", np.strings.lstrip(writers.fixed(v, 1, 2)))
            line = np.strings.add(np.strings.add(line, b","), txt)
        (folder / f"{site}.csv").write_bytes((",".join(cols) + "\n").encode() + b"\n".join(line.tolist()) + b"\n")
    return subs


def _ecv_grid(results: list[dict]) -> dict[str, Any]:
    """The 0.25 deg grid cropped to the probe clusters' bounding box, and each cluster's cells and daily series."""
    clusters = [c for r in results for c in r["ecv"]]
    w_ = min(c["bounds"][0] for c in clusters)
    s_ = min(c["bounds"][1] for c in clusters)
    e_ = max(c["bounds"][2] for c in clusters)
    n_ = max(c["bounds"][3] for c in clusters)
    half = ECV_CELL_DEG / 2   # centres of every cell whose extent overlaps [w_, e_] x [s_, n_]
    lon = np.arange(np.floor(w_ / ECV_CELL_DEG) * ECV_CELL_DEG + half, e_ + half, ECV_CELL_DEG)
    lat = np.arange(np.floor(s_ / ECV_CELL_DEG) * ECV_CELL_DEG + half, n_ + half, ECV_CELL_DEG)[::-1]
    cells = []
    for c in clusters:   # every cell the cluster's areas touch gets the cluster's value
        bw, bs, be, bn = c["bounds"]
        iy = np.where((lat + ECV_CELL_DEG / 2 > bs) & (lat - ECV_CELL_DEG / 2 < bn))[0]
        ix = np.where((lon + ECV_CELL_DEG / 2 > bw) & (lon - ECV_CELL_DEG / 2 < be))[0]
        cells.append((iy, ix, c["ecv"], c["unc"], c["flag"]))
    return {"lat": lat.astype(np.float32), "lon": lon.astype(np.float32), "cells": cells}


def _write_ecv(args: tuple) -> None:
    """Daily ECV_SM-like NetCDF files for the day indices ``days``."""
    folder, dates, grid, days = args
    lat, lon = grid["lat"], grid["lon"]
    for d in days:
        sm = np.full((len(lat), len(lon)), np.nan, dtype=np.float32)
        unc = np.full_like(sm, np.nan)
        flag = np.full(sm.shape, 127, dtype=np.int8)
        for iy, ix, ecv, ecv_unc, ecv_flag in grid["cells"]:
            sm[np.ix_(iy, ix)] = ecv[d]
            unc[np.ix_(iy, ix)] = ecv_unc[d]
            flag[np.ix_(iy, ix)] = ecv_flag[d]
        writers.write_ecv(folder / writers.ecv_name(dates[d]), dates[d], lat, lon, sm, flag, unc)


def _write_tables(raw: Path, truth: Path, results: list[dict], *, seed: int, size: str, dates: np.ndarray,
                  tile_px: int, pixel_m: float, patch_px: int) -> dict[str, Any]:
    """manifest.json, weather/stations.csv, icos/sites.csv and truth/probes_truth.parquet."""
    import pandas as pd

    stations = []
    sites = []
    for r in results:
        reg: Region = r["region"]
        stations += r["stations"]
        if reg.icos:
            info = r["info"]
            for i, p in enumerate(r["probes"]):
                sites.append({"site": p["probe_id"], "lat": p["lat"], "lon": p["lon"],
                              "landcover_code": p["landcover_code"], "clay_pct": round(float(info["clay"][i]), 2),
                              "silt_pct": round(float(info["silt"][i]), 2), "sand_pct": round(float(info["sand"][i]), 2),
                              "organic_carbon_pct": round(float(info["oc"][i]), 2),
                              "base_saturation_pct": round(float(info["base_sat"][i]), 2),
                              "climate_class": "Dfc" if p["lat"] > 63 else reg.climate})
    pd.DataFrame(stations).to_csv(raw / "weather" / "stations.csv", index=False, lineterminator="\n")
    if sites:
        pd.DataFrame(sites).to_csv(raw / "icos" / "sites.csv", index=False, lineterminator="\n")
    frames = [pd.DataFrame(r["truth"]) for r in results]
    df = pd.concat(frames, ignore_index=True)
    df["date"] = pd.to_datetime(df["date"])
    df.to_parquet(truth / "probes_truth.parquet", index=False)
    manifest = {"generator": "soilmoisture.simulate", "seed": seed, "size": size, "start": str(dates[0]),
                "end": str(dates[-1]), "n_days": int(len(dates)), "tile_px": tile_px, "pixel_m": pixel_m,
                "patch_px": patch_px,
                "regions": {r["name"]: r["entry"] for r in results},
                "probes": [p for r in results for p in r["probes"]]}
    writers.write_json(raw / "manifest.json", manifest)
    return manifest
