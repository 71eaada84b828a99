"""Map products: the daily SSM (with its interval and the reason of every nodata) predicted window by window
into staged tiled GeoTIFFs (validated as they are written), then written in the format ``map.format`` asks for
(:mod:`.formats`) and PNG quicklooks beside it. Memory is bounded by one window (``window_px``^2 pixels x series
days x a few features), whatever the area. The product appears under its name only when complete."""
from __future__ import annotations

import contextlib
import logging
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.config import Runner
from soilmoisture.errors import DataError
from soilmoisture.mapping.formats import (REASON_LAYER, SSM_LAYER, Provenance, Staged, interval_layers, nodata_reason,
                                          write_product)
from soilmoisture.mapping.inputs import Cube, Sources, build_cube, day_numbers, windows
from soilmoisture.mapping.predict import MapModel, WindowJob, predict_cube, predict_window
from soilmoisture.mapping.validate import Validation

log = logging.getLogger(__name__)

COG_OVERVIEWS_MIN_PX = 2048  # cog-stack overviews only for maps wider than this: on a 883-band stack they triple the
                             # COG conversion time, and small maps are viewed at full resolution (quicklooks for a look)
GDAL_CACHE_MB = 256          # GDAL block cache while mapping (default 5 % of RAM): memory stays bounded
NODATA = float("nan")       # output nodata (float32 layers)
MAX_QUICKLOOKS = 6          # PNG quicklooks per map (days evenly spread over the period)


@dataclass
class MapResult:
    path: Path                          # the product (file, or folder for cog-daily / zarr)
    dates: pd.DatetimeIndex             # its days
    seconds: dict[str, float]           # wall time per phase
    validation: Validation | None
    window: Any                         # the area of interest in the region grid
    fmt: str = "cog-stack"
    files: list[Path] = field(default_factory=list)       # every published file or folder (layers of cog-stack)
    layers: list[str] = field(default_factory=list)       # ssm, interval bounds, nodata_reason
    quicklooks: list[Path] = field(default_factory=list)
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)   # in the map CRS
    crs: Any = None
    transform: Any = None
    shape: tuple[int, int] = (0, 0)                       # (rows, cols)


def make_map(model: MapModel, src: Sources, out: Path, *, start: str, end: str, warmup_start: str,
             stat_range: tuple[str, str], window_px: int, aoi: Any = None, truth: Path | None = None,
             sigma0_zscore: float = 2.0, sigma0_max: float = 0.35, vi_max_gap_days: int = 30,
             dry_day_mm: float = 0.1, runner: Runner | None = None, fmt: str = "cog-stack",
             provenance: Provenance | None = None, quicklook_folder: Path | None = None,
             network: Any = None) -> MapResult:
    """Write the daily SSM of ``start..end`` for the area ``aoi`` (a window of the region grid; None = all) as the
    product ``fmt`` at ``out`` (:func:`soilmoisture.mapping.formats.product_path`), window by window.

    The layers (``ssm``, with ``provenance.interval_offsets`` the interval bounds ``ssm_pLL``/``ssm_pHH`` =
    ssm + offsets (lower bound >= 0), ``nodata_reason``) are staged as tiled GeoTIFFs (band i = day i) beside
    ``out`` and turned into the product at the end. The series of every pixel starts at ``warmup_start``
    (spin-up of the recurrent state). With ``truth`` (a raster on the same grid, band i = its START_DATE tag +
    i - 1 days) the map and its interval are validated as they are written. With a Dask ``runner`` the windows
    are built and predicted on its workers, at most two per worker in flight, and written here in window order.
    ``network`` (:class:`soilmoisture.mapping.network.MapNetwork`, ``map.method: network``): every window's
    satellite series is combined with the region's probe readings; its GP band replaces the constant interval.
    """
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import bounds as win_bounds
    from rasterio.windows import transform as win_transform

    req = pd.date_range(start, end, freq="D")
    series = pd.date_range(min(pd.Timestamp(warmup_start), req[0]), req[-1], freq="D")
    first = len(series) - len(req)
    aoi = aoi or Window(0, 0, src.grid.width, src.grid.height)
    H, W = int(aoi.height), int(aoi.width)
    prov = provenance or Provenance(model.name, "", "", "", model.name, "unknown", f"{series[0]:%Y-%m-%d}",
                                    f"{req[-1]:%Y-%m-%d}", src.region, tuple(model.features))
    lo_name, hi_name = interval_layers(prov.interval_coverage) if prov.has_interval else ("", "")
    layers = [SSM_LAYER] + ([lo_name, hi_name] if prov.has_interval else []) + [REASON_LAYER]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage_dir = out.with_name(f".{out.name}.stage")
    truth_ds, truth_first = None, 0
    validation = Validation(req) if truth is not None else None
    secs = {"features": 0.0, "predict": 0.0, "write": 0.0, "truth": 0.0, "product": 0.0}
    transform = win_transform(aoi, src.grid.transform)
    profile = dict(driver="GTiff", width=W, height=H, count=len(req), crs=src.grid.crs, transform=transform,
                   tiled=True, blockxsize=256, blockysize=256, interleave="band", BIGTIFF="IF_SAFER")
    staged = {name: stage_dir / f"{name}.tif" for name in layers}
    looks: list[Path] = []
    try:
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
        stage_dir.mkdir()
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
            dst = {name: stack.enter_context(rasterio.open(
                       path, "w", **profile, **(dict(dtype="uint8") if name == REASON_LAYER
                                                else dict(dtype="float32", nodata=NODATA))))
                   for name, path in staged.items()}
            wins = list(windows(H, W, window_px, int(aoi.row_off), int(aoi.col_off)))

            cube_kwargs = dict(stat_range=stat_range, sigma0_zscore=sigma0_zscore, sigma0_max=sigma0_max,
                               vi_max_gap_days=vi_max_gap_days, dry_day_mm=dry_day_mm)

            def cube_of(win: Any) -> Cube:
                return build_cube(src, win, series, model.features, **cube_kwargs)

            def put(n_done: int, win: Any, pred: np.ndarray, landcover: np.ndarray, full: np.ndarray | None = None
                    ) -> None:
                """Write one window's (D, N) prediction, interval and nodata reasons; validate against the truth.

                ``full``: the window's satellite series from the warm-up on (S, N), for the network map."""
                t = time.perf_counter()
                sat, bounds = pred, None
                if network is not None:
                    pred, lo_b, hi_b = network.apply(win, full)
                    bounds = (lo_b, hi_b) if lo_b is not None else None
                h, w = int(win.height), int(win.width)
                local = Window(int(win.col_off - aoi.col_off), int(win.row_off - aoi.row_off), w, h)
                shape = (len(req), h, w)
                dst[SSM_LAYER].write(pred.reshape(shape), window=local)
                lower = upper = None
                if prov.has_interval:
                    # the ensemble module's interval: lower bound clipped at 0 (SSM cannot be negative)
                    from soilmoisture.protocol.ensemble import interval

                    lower, upper = bounds if bounds is not None else \
                        (a.astype(np.float32) for a in interval(pred, prov.interval_offsets))
                    dst[lo_name].write(lower.reshape(shape), window=local)
                    dst[hi_name].write(upper.reshape(shape), window=local)
                dst[REASON_LAYER].write(nodata_reason(pred, landcover).reshape(shape), window=local)
                secs["write"] += time.perf_counter() - t
                if truth_ds is not None:
                    t = time.perf_counter()
                    tr = truth_ds.read(list(range(truth_first + 1, truth_first + len(req) + 1)), window=win)
                    tr = tr.reshape(len(req), -1)
                    validation.add(pred, tr, landcover)
                    if network is not None:
                        network.validation.add(network.distance_km(win), pred, sat, tr)
                    if lower is not None:
                        validation.add_interval(lower, upper, tr)
                    secs["truth"] += time.perf_counter() - t
                log.info("map window %d/%d (%d x %d px, %d series days) done", n_done, len(wins), win.width,
                         win.height, len(series))

            from soilmoisture.runner import is_distributed, map_in_runner

            if runner is not None and is_distributed(runner) and network is not None:
                raise DataError(out, "map.method network runs with runner.kind local (the probes' GP is applied "
                                     "where the windows are written)", field="runner.kind")
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
                    full = predict_cube(model, cube)
                    pred = full[first:]                                           # (D, N) requested days only
                    secs["predict"] += time.perf_counter() - t
                    put(n_done, win, pred, cube.landcover, full)
            for ds in dst.values():
                for i, d in enumerate(req, start=1):
                    ds.set_band_description(i, f"{d:%Y-%m-%d}")
        extra = dict(QUANTITY="surface soil moisture 0-5 cm", START_DATE=f"{req[0]:%Y-%m-%d}",
                     END_DATE=f"{req[-1]:%Y-%m-%d}", WARMUP_START=f"{series[0]:%Y-%m-%d}", MODEL=model.name,
                     FEATURES=",".join(model.features), REGION=src.region)
        st = Staged(staged, req, src.grid.crs, transform, W, H, extra)
        t = time.perf_counter()
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            files = write_product(st, fmt, out, prov, overviews=max(H, W) > COG_OVERVIEWS_MIN_PX)
        secs["product"] += time.perf_counter() - t
        if quicklook_folder is not None:
            looks = quicklooks(staged[SSM_LAYER], src, quicklook_folder,
                               quicklook_days(req, {d for d, _ in src.s1}))
    finally:
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
    return MapResult(out, req, secs, validation, aoi, fmt, files, layers, looks,
                     tuple(win_bounds(aoi, src.grid.transform)), src.grid.crs, transform, (H, W))


def quicklooks(cog: Path, src: Sources, folder: Path, days: list[pd.Timestamp], max_px: int = 800) -> list[Path]:
    """PNG per day of a stack (band descriptions = dates, e.g. the staged ssm layer or a cog-stack): the SSM map with a colour bar next to that day's sigma0 (dB, scenes of the day averaged)."""
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


__all__ = ["MapResult", "make_map", "quicklook_days", "quicklooks"]
