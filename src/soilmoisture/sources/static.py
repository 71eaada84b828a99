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
from soilmoisture.sources._raster import open_raster, probe_pixels, read_all, sample

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = {"dtm": "static/<region>_dtm.tif", "clc": "static/<region>_clc.tif", "soil": "static/<region>_soil.tif"}
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


def read_static(folder: Path, region: str, probes: pd.DataFrame) -> pd.DataFrame:
    """Static attributes of the probes of one region from whichever layers exist under ``folder``.

    Returns ``probe_id`` plus elevation_m, slope_pct, aspect_x, aspect_y, landcover_code,
    landcover_name and the soil columns (those whose layer exists).
    """
    folder = Path(folder)
    out = pd.DataFrame({"probe_id": probes["probe_id"].to_numpy()})
    dtm_path = folder / f"{region}_dtm.tif"
    if dtm_path.is_file():
        with open_raster(dtm_path) as src:
            rows, cols = probe_pixels(src, probes, dtm_path)
            z = read_all(src, dtm_path)[0]
            res_x, res_y = src.res
            nd = src.nodata
        if nd is not None and not np.isnan(nd):
            z = np.where(z == nd, np.nan, z)
        vals = [terrain(z, r, c, res_x, res_y) for r, c in zip(rows, cols)]
        out[["elevation_m", "slope_pct", "aspect_x", "aspect_y"]] = np.array(vals, dtype="float64")
    clc_path = folder / f"{region}_clc.tif"
    if clc_path.is_file():
        with open_raster(clc_path) as src:
            codes = sample(src, probes, clc_path)[:, 0]
        out["landcover_code"] = np.where(np.isfinite(codes), codes, -1).astype("int64")
        unknown = sorted(set(out["landcover_code"]) - set(CORINE))
        if unknown:
            log.warning("%s: CORINE code(s) %s not in schema.CORINE", clc_path, unknown)
        out["landcover_name"] = out["landcover_code"].map(lambda c: CORINE.get(int(c), "unknown"))
    soil_path = folder / f"{region}_soil.tif"
    if soil_path.is_file():
        with open_raster(soil_path) as src:
            v = sample(src, probes, soil_path)
        if v.shape[1] < len(BANDS["soil"]):
            raise DataError(soil_path, f"expected {len(BANDS['soil'])} bands, found {v.shape[1]}")
        for i, name in enumerate(BANDS["soil"]):
            out[name] = v[:, i]
    return out
