"""SoilGrids 2.0 soil-texture rasters (ISRIC): sand, silt, clay and organic carbon at each probe.

SoilGrids publishes one raster per property, depth and statistic (``sand_0-5cm_mean.tif``, ...) on a 250 m
Interrupted Goode Homolosine grid, int16 in "mapped units": sand/silt/clay in g/kg, soil organic carbon (soc) in
dg/kg, nodata -32768. Users clip them to their area (``gdal_translate -projwin`` on the WebDAV VRTs); any CRS
works here, the probe coordinates are reprojected. The thesis (3.2.5) took texture from ISMN's HWSD values; a
250 m raster is finer and, unlike a probe's own metadata, exists at every map pixel.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.sources._raster import open_raster, raster_env, sample_covered

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "soilgrids/<region>/[<area>/]<property>_0-5cm_mean.tif"
NAME_RE = re.compile(r"^(sand|silt|clay|soc)_0-5cm_mean\.tif$")
# property -> (output column, mapped unit, divisor from mapped units to %)
PROPERTIES = {"sand": ("sand_pct", "g/kg", 10.0), "silt": ("silt_pct", "g/kg", 10.0),
              "clay": ("clay_pct", "g/kg", 10.0), "soc": ("organic_carbon_pct", "dg/kg", 100.0)}
NODATA = -32768
DATE_FORMAT = None  # static


def property_files(folder: Path) -> dict[str, list[Path]]:
    """Rasters per property in ``folder`` and its area sub-folders (one level), sorted."""
    folder = Path(folder)
    out: dict[str, list[Path]] = {}
    for p in sorted(list(folder.glob("*.tif")) + list(folder.glob("*/*.tif"))):
        m = NAME_RE.match(p.name)
        if m:
            out.setdefault(m.group(1), []).append(p)
    return out


def read_soilgrids(folder: Path, probes: pd.DataFrame) -> pd.DataFrame:
    """``probe_id`` + sand_pct, silt_pct, clay_pct, organic_carbon_pct (those whose raster exists) at each probe
    (``probe_id, lat, lon``), from the first raster of each property that covers the probe; NaN where none does.

    A value outside the physical range (texture 0-100 %, after the unit conversion) means the file is not in
    SoilGrids' mapped units: refused, naming the file."""
    files = property_files(folder)
    out = pd.DataFrame({"probe_id": probes["probe_id"].to_numpy()})
    if not files:
        log.warning("no SoilGrids raster in %s", folder)
        return out
    with raster_env():
        for prop, paths in files.items():
            col, unit, div = PROPERTIES[prop]
            vals = np.full(len(probes), np.nan)
            for path in paths:
                with open_raster(path) as src:
                    v, covered = sample_covered(src, probes, path)
                    declared = (src.tags().get("UNITS") or unit).lower()
                if declared != unit.lower():
                    raise DataError(path, f"tag UNITS={declared!r}, expected SoilGrids mapped units {unit!r}",
                                    field=prop)
                pct = v[:, 0] / div
                bad = covered & ((pct < 0) | (pct > 100))
                if bad.any():
                    raise DataError(path, f"{prop} {v[bad, 0][0]:g} {unit} is outside 0-100 % after the unit "
                                          f"conversion (/{div:g}); expected SoilGrids mapped units", field=prop)
                take = covered & np.isnan(vals)
                vals[take] = pct[take]
            out[col] = vals
    missing = out.drop(columns="probe_id").isna().all(axis=1)
    if missing.any():
        log.warning("SoilGrids rasters in %s cover no value at probe(s) %s", folder,
                    ", ".join(out.loc[missing, "probe_id"].astype(str).head(5)))
    return out
