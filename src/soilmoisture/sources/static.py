"""Static layers per region: DTM (elevation, slope, aspect), CORINE land cover, soil texture.

Thesis 3.2.5: elevation, slope and aspect of each probe from the DTM; aspect split into
aspect_x = cos(aspect), aspect_y = sin(aspect). (The thesis' Eq. 4-5 multiply cos(deg) by pi/180,
which reads as a typo for converting degrees to radians before the cosine; we use cos/sin of the
aspect in radians so the vector has unit length.) Land cover from CORINE 2018.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.schema import CORINE
from soilmoisture.sources._raster import covered_pixels, open_raster, raster_env, read_all, sample_covered

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = {"dtm": "static/<region>_dtm.tif | static/<region>/<area>_dtm.tif",
                "clc": "static/<region>_clc.tif | static/<region>/<area>_clc.tif",
                "soil": "static/<region>_soil.tif | static/<region>/<area>_soil.tif"}
BANDS = {"dtm": ["elevation_m"], "clc": ["landcover_code"],
         "soil": ["clay_pct", "silt_pct", "sand_pct", "organic_carbon_pct", "base_saturation_pct"]}
UNITS = {"elevation_m": "m", "landcover_code": "CLC 2018 code", "clay_pct": "%", "silt_pct": "%",
         "sand_pct": "%", "organic_carbon_pct": "%", "base_saturation_pct": "%"}
NODATA = "raster nodata (NaN for float32)"
DATE_FORMAT = None  # static


def terrain(dtm: np.ndarray, row: int, col: int, res_x: float, res_y: float) -> tuple[float, float, float, float]:
    """Elevation (m), slope (%), aspect_x, aspect_y at one pixel of a north-up DTM.

    Gradients by central differences (numpy.gradient; one-sided at edges); aspect is the compass
    direction the slope faces (0 = north, 90 = east), so a surface falling to the east has aspect 90.
    A flat pixel has slope 0 and aspect vector (0, 0).
    """
    z = dtm.astype("float64")
    # numpy.gradient over rows increases southwards in a north-up raster.
    dz_drow, dz_dcol = np.gradient(z, abs(res_y), abs(res_x))
    dzdx = dz_dcol[row, col]            # east
    dzdy = -dz_drow[row, col]           # north
    slope_pct = float(np.hypot(dzdx, dzdy) * 100.0)
    if dzdx == 0 and dzdy == 0:
        return float(z[row, col]), 0.0, 0.0, 0.0
    # Downslope direction is -grad; compass angle measured clockwise from north.
    aspect = np.arctan2(-dzdx, -dzdy)
    return float(z[row, col]), slope_pct, float(np.cos(aspect)), float(np.sin(aspect))


def layer_files(folder: Path, region: str, layer: str) -> list[Path]:
    """The region's raster of ``layer`` and those clipped to its areas (``<folder>/<region>/<area>_<layer>.tif``)."""
    folder = Path(folder)
    out = [folder / f"{region}_{layer}.tif"] if (folder / f"{region}_{layer}.tif").is_file() else []
    return out + sorted((folder / region).glob(f"*_{layer}.tif")) if (folder / region).is_dir() else out


def _sample_layers(files: list[Path], probes: pd.DataFrame) -> tuple[np.ndarray, Path | None]:
    """Per probe, the values of the first file among ``files`` that covers it: (n_probes, bands), NaN if none."""
    vals = None
    for path in files:
        with open_raster(path) as src:
            v, covered = sample_covered(src, probes, path)
        if vals is None:
            vals = np.full(v.shape, np.nan)
        take = covered & ~np.isfinite(vals).any(axis=1)
        vals[take] = v[take]
    return (vals if vals is not None else np.zeros((len(probes), 0))), (files[0] if files else None)


def _terrain_at_probes(files: list[Path], probes: pd.DataFrame) -> np.ndarray:
    """Elevation, slope, aspect_x, aspect_y per probe from the first DTM covering it; a 3 x 3 window around the
    probe pixel (clipped at the raster's edge) gives the same central/one-sided differences as the whole raster."""
    from rasterio.windows import Window

    out = np.full((len(probes), 4), np.nan)
    done = np.zeros(len(probes), bool)
    for path in files:
        with open_raster(path) as src:
            rows, cols, inside = covered_pixels(src, probes, path)
            res_x, res_y = src.res
            nd = src.nodata
            for i in np.flatnonzero(inside & ~done):
                r0, c0 = max(int(rows[i]) - 1, 0), max(int(cols[i]) - 1, 0)
                r1, c1 = min(int(rows[i]) + 2, src.height), min(int(cols[i]) + 2, src.width)
                z = read_all(src, path, Window(c0, r0, c1 - c0, r1 - r0))[0].astype("float64")
                if nd is not None and not np.isnan(nd):
                    z = np.where(z == nd, np.nan, z)
                if not np.isfinite(z[int(rows[i]) - r0, int(cols[i]) - c0]):
                    continue
                if z.shape[0] < 2 or z.shape[1] < 2:
                    out[i] = (z[int(rows[i]) - r0, int(cols[i]) - c0], np.nan, np.nan, np.nan)
                else:
                    out[i] = terrain(z, int(rows[i]) - r0, int(cols[i]) - c0, res_x, res_y)
                done[i] = True
    return out


def read_static(folder: Path, region: str, probes: pd.DataFrame) -> pd.DataFrame:
    """Static attributes of the probes of one region from whichever layers exist under ``folder``: the region's
    rasters (``<region>_<layer>.tif``) and those clipped to its areas (``<region>/<area>_<layer>.tif``); each probe
    takes the first raster that covers it.

    Returns ``probe_id`` plus elevation_m, slope_pct, aspect_x, aspect_y, landcover_code,
    landcover_name and the soil columns (those whose layer exists).
    """
    folder = Path(folder)
    out = pd.DataFrame({"probe_id": probes["probe_id"].to_numpy()})
    with raster_env():
        dtm = layer_files(folder, region, "dtm")
        if dtm:
            out[["elevation_m", "slope_pct", "aspect_x", "aspect_y"]] = _terrain_at_probes(dtm, probes)
        clc = layer_files(folder, region, "clc")
        if clc:
            codes = _sample_layers(clc, probes)[0][:, 0]
            out["landcover_code"] = np.where(np.isfinite(codes), codes, -1).astype("int64")
            unknown = sorted(set(out["landcover_code"]) - set(CORINE))
            if unknown:
                log.warning("%s: CORINE code(s) %s not in schema.CORINE", clc[0], unknown)
            out["landcover_name"] = out["landcover_code"].map(lambda c: CORINE.get(int(c), "unknown"))
        soil = layer_files(folder, region, "soil")
        if soil:
            v, path = _sample_layers(soil, probes)
            if v.shape[1] < len(BANDS["soil"]):
                raise DataError(path, f"expected {len(BANDS['soil'])} bands, found {v.shape[1]}")
            for i, name in enumerate(BANDS["soil"]):
                out[name] = v[:, i]
    return out
