"""Shared raster helpers: open a GeoTIFF once, locate every probe's pixel, sample all bands."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError

log = logging.getLogger(__name__)


def open_raster(path: Path) -> Any:
    """Open ``path`` with rasterio; an unreadable/truncated file raises DataError naming it."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        return rasterio.open(path)
    except (RasterioError, OSError) as e:
        raise DataError(path, f"cannot open as a GeoTIFF ({e}); the file may be truncated or not a raster") from None


def probe_pixels(src: Any, probes: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row/column of each probe (``lat``/``lon`` in WGS84 deg) in the raster ``src``.

    The probe coordinates are reprojected into the raster's CRS (rasterio.warp.transform).
    A probe outside the raster's extent raises DataError naming the file and the probe.
    """
    if src.crs is None:
        raise DataError(path, "raster has no CRS; cannot locate the probes")
    # Scenes of one region share a grid: the reprojection is computed once per grid (cached on the
    # CRS string as stored in the file, which is cheaper to get than a normalised WKT).
    rows, cols = _pixels(src.crs.to_string(), tuple(src.transform)[:6],
                         tuple(probes["lon"].to_numpy(float)), tuple(probes["lat"].to_numpy(float)))
    outside = (rows < 0) | (rows >= src.height) | (cols < 0) | (cols >= src.width)
    if outside.any():
        bad = probes["probe_id"].to_numpy()[outside]
        raise DataError(path, f"raster extent {tuple(src.bounds)} (CRS {src.crs}) does not contain probe(s) "
                              f"{', '.join(map(str, bad[:5]))}")
    return rows, cols


def covered_pixels(src: Any, probes: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row/column of each probe in ``src`` and whether it lies inside the raster's extent (no error for probes
    outside: a scene clipped to part of a region covers only some of its probes)."""
    if src.crs is None:
        raise DataError(path, "raster has no CRS; cannot locate the probes")
    rows, cols = _pixels(src.crs.to_string(), tuple(src.transform)[:6],
                         tuple(probes["lon"].to_numpy(float)), tuple(probes["lat"].to_numpy(float)))
    inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
    return rows, cols, inside


def sample_covered(src: Any, probes: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Values of every band at the probe pixels the raster covers: ((n_probes, bands) float64 with NaN for nodata
    and for probes outside the extent, covered (n_probes,) bool = inside and at least one band not nodata).

    Inside probes are read as 1 x 1 windows (a scene clipped to a whole network is mostly empty, sparse blocks),
    or with one read of everything for small rasters.
    """
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    rows, cols, inside = covered_pixels(src, probes, path)
    values = np.full((len(rows), src.count), np.nan, dtype="float64")
    try:
        if src.width * src.height <= 256 * 256:
            data = src.read()
            values[inside] = data[:, rows[inside], cols[inside]].T
        else:
            for i in np.flatnonzero(inside):
                values[i] = src.read(window=Window(int(cols[i]), int(rows[i]), 1, 1))[:, 0, 0]
    except (RasterioError, OSError) as e:
        raise DataError(path, f"cannot read raster data ({e}); the file may be truncated") from None
    for b, nd in enumerate(src.nodatavals):
        if nd is not None and not np.isnan(nd):
            values[:, b][values[:, b] == nd] = np.nan
    return values, inside & np.isfinite(values).any(axis=1)


def no_probe_error(src: Any, probes: pd.DataFrame, path: Path) -> DataError:
    """The error for a raster that covers none of the probes (named, with its extent and CRS)."""
    ids = probes["probe_id"].astype(str).to_numpy()
    return DataError(path, f"raster extent {tuple(src.bounds)} (CRS {src.crs}) does not contain probe(s) "
                           f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}: it covers none of the probes "
                           "(a scene must cover at least one; probes it does not cover get no value from it)")


def clip_files(folder: Path, pattern: str, name_re: Any) -> list[Path]:
    """Scene files of a region folder and of its clipped areas (one level of sub-folders, docs/raw-layout.md),
    sorted by name, then by folder."""
    folder = Path(folder)
    files = [p for p in folder.glob(pattern) if name_re.match(p.name)]
    files += [p for p in folder.glob(f"*/{pattern}") if name_re.match(p.name)]
    return sorted(files, key=lambda p: (p.name, str(p.parent)))


@functools.lru_cache(maxsize=64)
def _pixels(crs_wkt: str, affine: tuple, lons: tuple, lats: tuple) -> tuple[np.ndarray, np.ndarray]:
    from affine import Affine
    from rasterio.transform import rowcol
    from rasterio.warp import transform

    xs, ys = transform("EPSG:4326", crs_wkt, list(lons), list(lats))
    # op=floor: the pixel *containing* the point (not the nearest corner).
    rows, cols = rowcol(Affine(*affine), xs, ys, op=np.floor)
    return np.atleast_1d(np.asarray(rows, dtype=int)), np.atleast_1d(np.asarray(cols, dtype=int))


def read_all(src: Any, path: Path, window: Any = None) -> np.ndarray:
    """All bands (of ``window``) as a (bands, rows, cols) array; a read failure raises DataError."""
    from rasterio.errors import RasterioError

    try:
        return src.read(window=window)
    except (RasterioError, OSError) as e:
        raise DataError(path, f"cannot read raster data ({e}); the file may be truncated") from None


def raster_env() -> Any:
    """A GDAL environment for reading many small files quickly and strictly read-only.

    No directory scan on every open (GDAL otherwise lists the folder looking for side-car files,
    slow with hundreds of scenes); the CRS built from the GeoTIFF keys instead of an EPSG database
    lookup (halves the CPU cost of an open); no .aux.xml side-car files (never write into inputs).
    """
    import rasterio

    return rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GTIFF_SRS_SOURCE="GEOKEYS",
                        GDAL_PAM_ENABLED="NO")


def sample(src: Any, probes: pd.DataFrame, path: Path) -> np.ndarray:
    """Values of every band at every probe pixel: (n_probes, bands) float64, nodata -> NaN.

    The file is opened once by the caller; here each probe pixel is read as a 1 x 1 window, which
    costs one block decode per probe whatever the raster size (bench tiles are 500 x 500 px).
    """
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    rows, cols = probe_pixels(src, probes, path)
    values = np.empty((len(rows), src.count), dtype="float64")
    try:
        if src.width * src.height <= 256 * 256:
            # small raster: one read of everything is cheaper than many window reads
            data = src.read()
            values[:] = data[:, rows, cols].T
        else:
            for i, (r, c) in enumerate(zip(rows, cols)):
                values[i] = src.read(window=Window(int(c), int(r), 1, 1))[:, 0, 0]
    except (RasterioError, OSError) as e:
        raise DataError(path, f"cannot read raster data ({e}); the file may be truncated") from None
    for b, nd in enumerate(src.nodatavals):
        if nd is not None and not np.isnan(nd):
            values[:, b][values[:, b] == nd] = np.nan
    return values
