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
_LAND, _WEATHER, _PROBES, _S1, _S2, _PRODUCTS, _ICOS, _NAMES = range(8)


def run(params: Params) -> None:
    """Stage entry point: simulate the area configured in ``params.simulate`` into ``paths.raw``/``paths.truth``."""
    s = params.simulate
    raw, truth = params.path(params.paths.raw), params.path(params.paths.truth)
    end = s.end
    if s.hold_back_days:   # one longer world; its last scenes wait in <truth>/held_back (simulate/deliver.py)
        end = str(np.datetime64(s.end, "D") + s.hold_back_days)
    generate(raw, truth, seed=s.seed, size=s.size, start=s.start, end=end, probes_per_region=s.probes_per_region,
             tile_px=s.tile, pixel_m=s.pixel_m)
    if s.hold_back_days:
        import datetime as dt

        from soilmoisture.simulate.deliver import hold_back

        n = hold_back(raw, truth, dt.date.fromisoformat(s.end))
        log.info("held back %d Sentinel scenes after %s in %s (soilmoisture deliver)", n, s.end, truth)


def _rng(seed: int, region_idx: int, component: int) -> np.random.Generator:
    return np.random.default_rng([seed, region_idx, component])


def generate(raw_dir: Path, truth_dir: Path, *, seed: int, size: str, start: str, end: str,
             probes_per_region: dict[str, int], tile_px: int, pixel_m: float,
             workers: int | None = None) -> dict[str, Any]:
    """Write the whole simulated area; returns the manifest. Regions with 0 probes are not generated.

    ``workers``: processes (default: up to 2, the cores of the reference machine); 1 = in this process.
    """
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    for name, n in probes_per_region.items():   # checked before any work (the loader cannot know tile x probes)
        if n > landscape.max_probes(tile_px):
            raise ConfigError(f"simulate.probes_per_region.{name}", f"{n} probes do not fit a {tile_px} px tile "
                              f"(at most {landscape.max_probes(tile_px)}); raise simulate.tile_px or lower it")
    t0 = time.perf_counter()
    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    dates = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    tmp_raw = raw_dir.parent / f".{raw_dir.name}.tmp"
    tmp_truth = truth_dir.parent / f".{truth_dir.name}.tmp"
    for tmp in (tmp_raw, tmp_truth):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        jobs = [(REGION_SPECS[name], ridx, int(probes_per_region.get(name, 0)), seed, dates, tile_px, pixel_m,
                 tmp_raw, tmp_truth) for ridx, name in enumerate(REGIONS) if probes_per_region.get(name, 0) > 0]
        # The work is mostly writing many small files (GDAL/HDF5 open-close dominates): one process per core.
        with _pool(workers) as pool:
            results = list(pool.map(_region_job, jobs))
            for r in results:   # logged here: worker processes may have no logging configured
                log.info("simulated %s: %d probes, %d days, %d x %d px in %.1f s", r["name"], len(r["probes"]),
                         len(dates), tile_px, tile_px, r["seconds"])
            (tmp_raw / "products" / "ecv_sm").mkdir(parents=True)
            grid = _ecv_grid(results)
            chunks = np.array_split(np.arange(len(dates)), max(workers, 1))
            list(pool.map(_write_ecv, [(tmp_raw / "products" / "ecv_sm", dates, grid, c) for c in chunks if len(c)]))
        manifest = _write_tables(tmp_raw, tmp_truth, results, seed=seed, size=size, dates=dates,
                                 tile_px=tile_px, pixel_m=pixel_m)
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
    region, ridx, n, seed, dates, tile_px, pixel_m, raw, truth = args
    import rasterio

    tr = time.perf_counter()
    with rasterio.Env():   # one GDAL environment for the thousands of files (not one per open)
        out = _region(region, ridx, n, seed, dates, tile_px, pixel_m, raw, truth)
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
def _geo(region: Region, tile: int, pixel_m: float) -> tuple[Any, Any, Any]:
    """CRS, affine transform (north-up, origin snapped to the pixel size) and a pixel->lon/lat function."""
    from pyproj import Transformer
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    crs = CRS.from_epsg(region.epsg)
    fwd = Transformer.from_crs(4326, region.epsg, always_xy=True)
    inv = Transformer.from_crs(region.epsg, 4326, always_xy=True)
    cx, cy = fwd.transform(region.lon, region.lat)
    half = tile * pixel_m / 2
    x0 = np.round((cx - half) / pixel_m) * pixel_m
    y0 = np.round((cy + half) / pixel_m) * pixel_m
    transform = Affine(pixel_m, 0.0, float(x0), 0.0, -pixel_m, float(y0))

    def lonlat(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = x0 + (np.asarray(cols) + 0.5) * pixel_m
        ys = y0 - (np.asarray(rows) + 0.5) * pixel_m
        lon, lat = inv.transform(xs, ys)
        return np.asarray(lon), np.asarray(lat)

    return crs, transform, lonlat


def _s1_schedule(region: Region, dates: np.ndarray) -> list[tuple[int, str, str, str, float]]:
    """(day index, satellite, ASC|DSC, HHMMSS, incidence at tile centre) of every Sentinel-1 acquisition.

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


def _region(region: Region, ridx: int, n_probes: int, seed: int, dates: np.ndarray, tile: int, pixel_m: float,
            raw: Path, truth: Path) -> dict[str, Any]:
    """Simulate and write one region; returns what the area-wide files need (small)."""
    n_days = len(dates)
    doy = (dates - dates.astype("datetime64[Y]")).astype(int) + 1
    probes = probe_list(region, n_probes, _rng(seed, ridx, _NAMES))
    land = landscape.build(_rng(seed, ridx, _LAND), region, tile, [c for _, c in probes])
    crs, transform, lonlat = _geo(region, tile, pixel_m)
    clc = land.clc.ravel()
    codes, cls_idx = np.unique(clc, return_inverse=True)
    forest = clc == landscape.FOREST
    peat = clc == landscape.PEAT
    land_px = (clc != landscape.WATER) & (clc != landscape.BUILT)

    # --- weather, snow, soil temperature, vegetation, water balance -----------------------------------
    rw = _rng(seed, ridx, _WEATHER)
    w = physics.weather(rw, region, doy)
    ts_open, tsmax_open = physics.soil_temperature(w, forest=False)
    ts_forest, tsmax_forest = physics.soil_temperature(w, forest=True)
    frozen_open, frozen_forest = tsmax_open <= 0.0, tsmax_forest <= 0.0
    ndvi_tab = physics.ndvi_table(region, doy, codes)
    ndvi_off = (0.03 * landscape.smooth_noise(rw, (tile, tile), 3.0)).ravel()

    def ndvi_day(d: int) -> np.ndarray:
        return np.clip(ndvi_tab[d][cls_idx] + np.where(clc == landscape.WATER, 0.0, ndvi_off), -0.5, 0.95)

    def frozen_day(d: int) -> np.ndarray:
        return np.where(forest, frozen_forest[d], frozen_open[d])

    ndvi_all = _DayTable(ndvi_day, n_days)
    frozen_all = _DayTable(frozen_day, n_days)
    theta = physics.water_balance(w, frozen_all, ndvi_all, land.porosity.ravel(), land.residual.ravel(),
                                  land.ks_mm_day.ravel(), land.b.ravel(), forest, peat, clc == 212)
    stem = np.array([physics.STEM_KG_M2.get(int(c), 0.0) for c in codes])[cls_idx]
    rough = (1.5 * landscape.smooth_noise(rw, (tile, tile), 2.0)).ravel()

    pr = land.probe_rc[:, 0] * tile + land.probe_rc[:, 1]
    plon, plat = lonlat(land.probe_rc[:, 0], land.probe_rc[:, 1])

    # --- Sentinel-1 -------------------------------------------------------------------------------------
    rs = _rng(seed, ridx, _S1)
    s1_dir = raw / "sentinel1" / region.name
    s1_dir.mkdir(parents=True)
    sched = _s1_schedule(region, dates)
    col_offset_m = (np.arange(tile * tile) % tile - tile / 2) * pixel_m
    bright = np.where(clc == landscape.BUILT, 10 ** (rs.uniform(0, 12, clc.size) / 10), 0.0)
    csm_cells, csm_transform, csm_shape = _csm_grid(transform, tile, pixel_m)
    s1_cell_db = np.empty((len(sched), csm_cells.max() + 1))
    s1_true_probe = np.full((n_days, n_probes), np.nan)
    vv_prev_day = -1
    for i, (d, sat, direction, hhmmss, inc0) in enumerate(sched):
        nd = ndvi_day(d)
        fz = frozen_day(d)
        th_liq = np.where(fz, theta[d] * physics.LIQUID_FROZEN, theta[d])
        # Range direction: ascending looks east, descending west; ~6.8e-5 deg of incidence per metre across the swath.
        inc = inc0 + (1 if direction == "ASC" else -1) * 6.8e-5 * col_offset_m
        wet_snow = bool(w.swe_mm[d] > 1.0 and w.ta_mean[d] > 0.0)
        vv, vh = physics.sigma0(th_liq, physics.vwc_kg_m2(nd, stem), inc, rough, wet_snow)
        water = clc == landscape.WATER
        vv = np.where(water, 0.004, vv)
        vh = np.where(water, 0.0008, vh)
        vv = np.where(bright > 0, bright, vv)
        vh = np.where(bright > 0, 0.1 * bright, vh)
        if d != vv_prev_day:   # the truth table keeps the first pass of the day, before speckle
            s1_true_probe[d] = vv[pr]
            vv_prev_day = d
        vv = vv * rs.gamma(SPECKLE_LOOKS, 1 / SPECKLE_LOOKS, vv.size)
        vh = vh * rs.gamma(SPECKLE_LOOKS, 1 / SPECKLE_LOOKS, vh.size)
        out = rs.random(vv.size) < OUTLIER_P
        vv = np.where(out, vv * rs.uniform(15, 80, vv.size), vv)
        stamp = f"{str(dates[d]).replace('-', '')}T{hhmmss}"
        iso = f"{dates[d]}T{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:]}"
        arr = np.stack([vv, vh, inc]).reshape(3, tile, tile).astype(np.float32)
        writers.write_tif(s1_dir / writers.s1_name(sat, stamp, direction), arr, crs, transform,
                          nodata=float("nan"), descriptions=["sigma0_vv", "sigma0_vh", "incidence_angle_deg"],
                          tags={"ACQUISITION_TIME": iso, "ORBIT_DIRECTION": "ASCENDING" if direction == "ASC"
                                else "DESCENDING", "UNITS": "linear", "PLATFORM": f"SENTINEL-1{sat}"},
                          predictor=3)
        # The 1 km change-detection product sees the cell mean of the speckled scene (in dB).
        s1_cell_db[i] = 10 * np.log10(np.bincount(csm_cells, weights=vv) / np.bincount(csm_cells))

    # --- CSM-like product: change detection per 1 km cell --------------------------------------------------
    csm_dir = raw / "products" / "csm" / region.name
    csm_dir.mkdir(parents=True)
    lo = np.percentile(s1_cell_db, 10, axis=0)   # historical dry / wet references, 10 % trimmed each side
    hi = np.percentile(s1_cell_db, 90, axis=0)
    ssi = np.clip((s1_cell_db - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    cell_porosity = np.bincount(csm_cells, weights=land.porosity.ravel()) / np.bincount(csm_cells)
    csm = (ssi * cell_porosity).astype(np.float32)
    csm_days: dict[int, np.ndarray] = {}
    for i, (d, *_rest) in enumerate(sched):
        csm_days.setdefault(d, []).append(csm[i])  # type: ignore[arg-type]
    csm_probe = np.full((n_days, n_probes), np.nan)
    for d, vals in csm_days.items():
        v = np.mean(vals, axis=0).astype(np.float32)
        writers.write_tif(csm_dir / f"CSM_SSM1km_{str(dates[d]).replace('-', '')}.tif",
                          v.reshape(csm_shape), crs, csm_transform, nodata=float("nan"),
                          descriptions=["ssm"], tags={"UNITS": "m3/m3"}, predictor=3)
        csm_probe[d] = v[csm_cells[pr]]

    # --- Sentinel-2 ---------------------------------------------------------------------------------------
    r2 = _rng(seed, ridx, _S2)
    s2_dir = raw / "sentinel2" / region.name
    s2_dir.mkdir(parents=True)
    ndvi_probe = np.stack([ndvi_day(d)[pr] for d in range(n_days)])
    n_s2 = 0
    for k, d in enumerate(range(region.s2_offset_days, n_days, S2_REVISIT_DAYS)):
        if region.polar_night and (doy[d] >= region.polar_night[0] or doy[d] <= region.polar_night[1]):
            continue
        nd = ndvi_day(d)
        phi = land.porosity.ravel()
        ndwi = np.clip(-0.25 + 0.85 * nd + 0.15 * (theta[d] / phi - 0.5), -0.6, 0.8)
        winter = -np.cos(2 * np.pi * (doy[d] - 20) / 365.0) < 0
        p_cloudy = min(region.cloudy_scene_p + (0.1 if winter else -0.1), 0.95)
        cover = r2.uniform(0.5, 1.0) if r2.random() < p_cloudy else r2.uniform(0.0, 0.15)
        field = landscape.smooth_noise(r2, (tile, tile), max(tile / 4.0, 2.0)).ravel()
        thr = np.quantile(field, 1 - cover) if cover > 0 else np.inf
        cld = np.clip(100 / (1 + np.exp(-(field - thr) / 0.15)), 0, 100)
        snow = w.swe_mm[d] > 2.0
        snw = np.where(snow, np.where(forest, 60.0, 97.0), 0.0) * (1 - cld / 100)
        b4, b8a, b12 = physics.reflectance(nd, ndwi, cld, snw, r2)
        arr = np.stack([b4, b8a, b12]) * 10000
        arr = np.clip(np.round(arr), 1, 65535)
        arr = np.concatenate([arr, np.round(np.stack([cld, snw]))]).reshape(5, tile, tile).astype(np.uint16)
        hh = region.s2_utc
        sat = "A" if k % 2 == 0 else "B"
        stamp = f"{str(dates[d]).replace('-', '')}T{hh}"
        writers.write_tif(s2_dir / writers.s2_name(sat, stamp, region.s2_tile), arr, crs, transform, nodata=0,
                          descriptions=["B04", "B8A", "B12", "CLD", "SNW"],
                          tags={"ACQUISITION_TIME": f"{dates[d]}T{hh[:2]}:{hh[2:4]}:{hh[4:]}",
                                "TILE_ID": region.s2_tile, "PROCESSING_LEVEL": "Level-2A",
                                "SCALE": "reflectance x 10000 (B04, B8A, B12); % (CLD, SNW)"})
        n_s2 += 1

    # --- static layers and truth ----------------------------------------------------------------------
    st = raw / "static"
    st.mkdir(exist_ok=True)
    writers.write_tif(st / f"{region.name}_dtm.tif", land.elevation_m[None], crs, transform, nodata=float("nan"),
                      descriptions=["elevation_m"], tags={"UNITS": "m"}, predictor=3)
    writers.write_tif(st / f"{region.name}_clc.tif", land.clc[None], crs, transform, nodata=0,
                      descriptions=["landcover_code"], tags={"CLASSIFICATION": "CORINE Land Cover 2018"})
    soil = np.stack([land.clay_pct, land.silt_pct, land.sand_pct, land.oc_pct, land.base_sat_pct]).astype(np.float32)
    writers.write_tif(st / f"{region.name}_soil.tif", soil, crs, transform, nodata=float("nan"),
                      descriptions=["clay_pct", "silt_pct", "sand_pct", "organic_carbon_pct", "base_saturation_pct"],
                      tags={"UNITS": "%"}, predictor=3)
    writers.write_tif(truth / f"{region.name}_ssm.tif", theta.reshape(n_days, tile, tile), crs, transform,
                      nodata=float("nan"), tags={"START_DATE": str(dates[0]), "UNITS": "m3/m3",
                                                 "BAND_STEP": "1 day (band i = START_DATE + i - 1 days)"},
                      predictor=3)

    # --- weather station ------------------------------------------------------------------------------
    _write_weather(raw / "weather", region, dates, w)

    # --- probes -----------------------------------------------------------------------------------------
    ts_probe = np.where(forest[pr][None, :], ts_forest[:, None], ts_open[:, None])
    tsmax_probe = np.where(forest[pr][None, :], tsmax_forest[:, None], tsmax_open[:, None])
    ssm_probe = theta[:, pr].astype(np.float64)
    elev = land.elevation_m.ravel()[pr]
    info = {"lat": plat, "lon": plon, "elev": elev, "pr": pr, "porosity": land.porosity.ravel()[pr],
            "clay": land.clay_pct.ravel()[pr], "silt": land.silt_pct.ravel()[pr], "sand": land.sand_pct.ravel()[pr],
            "oc": land.oc_pct.ravel()[pr], "base_sat": land.base_sat_pct.ravel()[pr]}
    rp = _rng(seed, ridx, _ICOS if region.icos else _PROBES)
    amp_probe = np.where(forest[pr][None, :], 0.3, 0.6) * (w.ta_max - w.ta_min)[:, None]
    amp_probe = np.where((w.swe_mm > 5.0)[:, None], 0.3, amp_probe)
    if region.icos:
        subs = _write_icos(raw / "icos", region, probes, dates, ssm_probe, ts_probe, amp_probe, info, rp)
    else:
        _write_ismn(raw / "ismn", region, probes, dates, ssm_probe, ts_probe, amp_probe, info, rp)
        subs = {}

    # --- ECV-like series of the region (the coarse cell containing the tile) -----------------------------
    rpp = _rng(seed, ridx, _PRODUCTS)
    m = theta[:, land_px].mean(axis=1)
    m = np.convolve(np.pad(m, 1, mode="edge"), np.ones(3) / 3, mode="valid")   # 25 km footprint, 3-day composite
    # Coarse and biased (thesis 4.2: narrow spread, MAE ~0.1): damped response, regional bias, retrieval noise.
    ecv = np.clip(0.45 * m + 0.08 + rpp.normal(0, 0.04) + rpp.normal(0, 0.03, n_days), 0.02, 0.35)
    frozen_share = np.mean(np.where(forest[land_px][None, :], frozen_forest[:, None], frozen_open[:, None]), axis=1)
    ecv_flag = np.zeros(n_days, dtype=np.int8)
    ecv_flag[(frozen_share > 0.3) | (w.swe_mm > 1.0)] = 1
    ecv_flag[(ecv_flag == 0) & (rpp.random(n_days) < 0.2)] = 4       # no valid retrieval (orbit gaps etc.)
    ecv = np.where(ecv_flag == 0, ecv, np.nan)
    unc = np.where(ecv_flag == 0, 0.04 + 0.01 * rpp.random(n_days), np.nan)
    bounds = _bounds_lonlat(transform, tile, lonlat)

    probe_entries = [{"probe_id": name, "network": region.network, "region": region.name,
                      "lat": round(float(plat[i]), 6), "lon": round(float(plon[i]), 6),
                      "row": int(land.probe_rc[i, 0]), "col": int(land.probe_rc[i, 1]), "landcover_code": int(code),
                      "source": "icos" if region.icos else "ismn", **({"sub_probes": subs[name]} if subs else {})}
                     for i, (name, code) in enumerate(probes)]
    from rasterio.transform import array_bounds

    b = array_bounds(tile, tile, transform)
    entry = {"crs": f"EPSG:{region.epsg}", "transform": list(transform)[:6], "bounds": [float(v) for v in
             (b[0], b[1], b[2], b[3])], "bounds_lonlat": [round(v, 6) for v in bounds], "network": region.network,
             "climate": region.climate, "tile_px": tile, "s1_tracks": region.s1_tracks,
             "s1_revisit_days": region.s1_revisit_days, "s1_scenes": len(sched), "s2_revisit_days": S2_REVISIT_DAYS,
             "s2_scenes": n_s2, "weather_station": region.weather_station,
             "weather_resolution": "hourly" if region.weather_hourly else "daily",
             "frozen_days_open": int(frozen_open.sum())}
    truth_frame = {"probe_id": np.repeat([p for p, _ in probes], n_days), "date": np.tile(dates, n_probes),
                   "region": region.name, "ssm_true": ssm_probe.T.ravel(),
                   "sigma0_vv_true": s1_true_probe.T.ravel(), "ndvi_true": ndvi_probe.T.ravel(),
                   "ts_max_true": tsmax_probe.T.ravel(), "frozen": (tsmax_probe <= 0).T.ravel(),
                   "ecv_sm": np.tile(ecv, n_probes), "csm": csm_probe.T.ravel()}
    return {"name": region.name, "entry": entry, "probes": probe_entries, "truth": truth_frame, "ecv": ecv,
            "ecv_flag": ecv_flag, "ecv_unc": unc, "bounds": bounds, "info": info, "region": region}


class _DayTable:
    """A (days, pixels) array computed one day at a time (keeps bench-size memory small)."""

    def __init__(self, fn: Any, n: int) -> None:
        self.fn, self.shape = fn, (n, 0)

    def __getitem__(self, d: int) -> np.ndarray:
        return self.fn(d)


def _bounds_lonlat(transform: Any, tile: int, lonlat: Any) -> tuple[float, float, float, float]:
    rows = np.array([0, 0, tile, tile]) - 0.5
    cols = np.array([0, tile, 0, tile]) - 0.5
    lon, lat = lonlat(rows, cols)
    return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())


def _csm_grid(transform: Any, tile: int, pixel_m: float) -> tuple[np.ndarray, Any, tuple[int, int]]:
    """1 km cells (origin snapped to whole km) covering the tile: cell index of every pixel, transform, shape."""
    from rasterio.transform import Affine

    x0, y0 = transform.c, transform.f
    gx0 = np.floor(x0 / CSM_CELL_M) * CSM_CELL_M
    gy0 = np.ceil(y0 / CSM_CELL_M) * CSM_CELL_M
    xs = x0 + (np.arange(tile) + 0.5) * pixel_m
    ys = y0 - (np.arange(tile) + 0.5) * pixel_m
    ci = ((xs - gx0) // CSM_CELL_M).astype(int)
    ri = ((gy0 - ys) // CSM_CELL_M).astype(int)
    shape = (int(ri.max()) + 1, int(ci.max()) + 1)
    cells = (ri[:, None] * shape[1] + ci[None, :]).ravel()
    return cells, Affine(CSM_CELL_M, 0.0, float(gx0), 0.0, -CSM_CELL_M, float(gy0)), shape


def _write_weather(folder: Path, region: Region, dates: np.ndarray, w: physics.Weather) -> None:
    """Hourly (Denmark, Sweden) or daily (Finland, Spain) station CSV: time (ISO, UTC), precip_mm, ta_c."""
    folder.mkdir(exist_ok=True)
    if region.weather_hourly:
        t = (dates.astype("datetime64[h]")[:, None] + np.arange(24).astype("timedelta64[h]")).ravel()
        p, ta = w.precip_hourly.ravel(), w.ta_hourly.ravel()
        time_s = np.strings.add(np.datetime_as_string(t, unit="m"), ":00")
    else:
        p, ta = w.precip_mm, w.ta_mean
        time_s = np.datetime_as_string(dates, unit="D")
    lines = np.strings.add(np.strings.add(np.strings.add(time_s.astype("S19"), b","),
                                          np.strings.lstrip(writers.fixed(p, 1, 1))),
                           np.strings.add(b",", np.strings.lstrip(writers.fixed(ta, 1, 1))))
    (folder / f"{region.name}_{region.weather_station}.csv").write_bytes(
        b"time,precip_mm,ta_c\n" + b"\n".join(lines.tolist()) + b"\n")


def _sensor_errors(rng: np.random.Generator, n_days: int, steps: int) -> tuple[np.ndarray, float]:
    """Probe error: calibration bias + day-to-day drift (AR(1)) + reading noise; total sd 0.02-0.05 m3/m3."""
    sd = rng.uniform(0.02, 0.05)
    bias = rng.normal(0, sd / 2)
    drift = np.empty(n_days)
    a = 0.0
    e = rng.normal(0, sd / 2 * np.sqrt(1 - 0.9 ** 2), n_days)
    for i in range(n_days):
        a = 0.9 * a + e[i]
        drift[i] = a
    err = bias + np.repeat(drift, steps) + rng.normal(0, sd / 2, n_days * steps)
    # A malfunction episode (2-5 days of +0.2) in half of the probes: the "questionable > 0.5" readings.
    if rng.random() < 0.5:
        d0 = int(rng.integers(0, max(n_days - 5, 1)))
        err[d0 * steps:(d0 + int(rng.integers(2, 6))) * steps] += 0.2
    return err, sd


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
        err, _ = _sensor_errors(rng, len(dates), 24)
        frozen_h = ts_h <= 0.0
        diurnal = 0.003 * np.sin(2 * np.pi * (np.arange(len(stamps)) % 24 - 14) / 24)
        sm = np.repeat(ssm[:, i], 24) * np.where(frozen_h, physics.LIQUID_FROZEN, 1.0) + diurnal + err
        sm = np.clip(sm, 0.0, 0.75)
        miss = _gaps(rng, len(dates), 24)
        sm = np.where(miss, np.nan, sm)
        # ISMN quality flags: D01 soil temperature < 0 degC, C03 above the HWSD saturation, a few D04/D05
        # (rise without / before precipitation); the rest 'G'.
        flags = np.full(len(stamps), "G", dtype="S3")
        spurious = rng.random(len(stamps))
        flags[spurious < 0.008] = "D04"
        flags[(spurious >= 0.008) & (spurious < 0.015)] = "D05"
        flags[sm > info["porosity"][i] + 0.02] = "C03"
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
            err, _ = _sensor_errors(rng, len(dates), 48)
            offset = rng.normal(0, 0.02)      # sub-probes within ~10 m2 differ a little (thesis 3.2.1)
            v = np.clip(base + offset + err, 0.0, 0.75) * 100.0
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
    """The 0.25 deg grid cropped to the regions' bounding box, and each region's cells and daily series."""
    w_ = min(r["bounds"][0] for r in results)
    s_ = min(r["bounds"][1] for r in results)
    e_ = max(r["bounds"][2] for r in results)
    n_ = max(r["bounds"][3] for r in results)
    half = ECV_CELL_DEG / 2   # centres of every cell whose extent overlaps [w_, e_] x [s_, n_]
    lon = np.arange(np.floor(w_ / ECV_CELL_DEG) * ECV_CELL_DEG + half, e_ + half, ECV_CELL_DEG)
    lat = np.arange(np.floor(s_ / ECV_CELL_DEG) * ECV_CELL_DEG + half, n_ + half, ECV_CELL_DEG)[::-1]
    cells = []
    for r in results:   # every cell the tile touches gets the region's value (the tile is far smaller than a cell)
        bw, bs, be, bn = r["bounds"]
        iy = np.where((lat + ECV_CELL_DEG / 2 > bs) & (lat - ECV_CELL_DEG / 2 < bn))[0]
        ix = np.where((lon + ECV_CELL_DEG / 2 > bw) & (lon - ECV_CELL_DEG / 2 < be))[0]
        cells.append((iy, ix, r["ecv"], r["ecv_unc"], r["ecv_flag"]))
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
                  tile_px: int, pixel_m: float) -> dict[str, Any]:
    """manifest.json, weather/stations.csv, icos/sites.csv and truth/probes_truth.parquet."""
    import pandas as pd

    stations = []
    sites = []
    for r in results:
        reg: Region = r["region"]
        lon0, lat0, lon1, lat1 = r["bounds"]
        stations.append({"station": reg.weather_station, "region": reg.name, "lat": round((lat0 + lat1) / 2, 6),
                         "lon": round((lon0 + lon1) / 2, 6),
                         "resolution": "hourly" if reg.weather_hourly else "daily"})
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
                "regions": {r["name"]: r["entry"] for r in results},
                "probes": [p for r in results for p in r["probes"]]}
    writers.write_json(raw / "manifest.json", manifest)
    return manifest
