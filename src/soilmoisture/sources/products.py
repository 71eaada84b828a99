"""Evaluation products (never model inputs): ESA CCI SM (ECV_SM) daily NetCDF and CSM rasters.

Thesis 3.3.5: the product cell containing each probe is compared on the same dates.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.sources._raster import clip_files, open_raster, raster_env, sample_covered

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
ECV_PATTERN = "products/ecv_sm/ESACCI-SOILMOISTURE-L3S-SSMV-COMBINED-<YYYYmmdd>000000-fv05.2.nc"
ECV_RE = re.compile(r"^ESACCI-SOILMOISTURE-L3S-SSMV-COMBINED-(\d{8})000000-fv[\d.]+\.nc$")
ECV_VARIABLES = {"sm": "m3/m3", "flag": "0 = no flag (kept); anything else dropped"}
ECV_NODATA = -9999.0
ECV_CRS = "EPSG:4326 (0.25 deg grid, no CRS in the file)"
CSM_PATTERN = "products/csm/<region>/[<area>/]CSM_SSM1km_<YYYYmmdd>.tif"
CSM_RE = re.compile(r"^CSM_SSM1km_(\d{8})\.tif$")
CSM_BANDS = {1: "csm"}
CSM_UNITS = "m3/m3"
CSM_NODATA = float("nan")
DATE_FORMAT = "%Y%m%d"


def ecv_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.nc") if ECV_RE.match(p.name))


def read_ecv_file(path: Path, probes: pd.DataFrame, strict: bool = False, warn: bool = True) -> pd.DataFrame:
    """One daily ECV_SM file -> ``probe_id, date, ecv_sm`` (flag == 0 only; fill -9999 -> NaN).

    The cell containing a probe is the one whose centre is nearest (cells are 0.25 deg squares
    around their centres). A probe outside the file's grid gets NaN with a warning (the product is
    for evaluation only and cropped files are common), or raises DataError when ``strict``.
    Read with netCDF4 directly, only the probe cells (xarray's decoding cost 40 ms per file).
    """
    import netCDF4

    path = Path(path)
    try:
        ds = netCDF4.Dataset(path)
    except OSError as e:
        raise DataError(path, f"cannot open as NetCDF: {e}") from None
    with ds:
        ds.set_auto_maskandscale(False)
        for v in ("sm", "flag", "lat", "lon", "time"):
            if v not in ds.variables:
                raise DataError(path, "missing variable", field=v)
        lat = np.asarray(ds["lat"][:], dtype="float64")
        lon = np.asarray(ds["lon"][:], dtype="float64")
        dlat = abs(float(lat[1] - lat[0])) if lat.size > 1 else 0.25
        dlon = abs(float(lon[1] - lon[0])) if lon.size > 1 else 0.25
        plat = probes["lat"].to_numpy(float)
        plon = probes["lon"].to_numpy(float)
        outside = ((plat < lat.min() - dlat / 2) | (plat > lat.max() + dlat / 2)
                   | (plon < lon.min() - dlon / 2) | (plon > lon.max() + dlon / 2))
        if outside.any():
            names = ", ".join(map(str, probes["probe_id"].to_numpy()[outside][:5]))
            if strict:
                raise DataError(path, f"grid does not contain probe(s) {names}")
            if warn:
                log.warning("%s: grid does not contain probe(s) %s: ecv_sm NaN there", path, names)
        iy = np.abs(lat[None, :] - plat[:, None]).argmin(axis=1)
        ix = np.abs(lon[None, :] - plon[:, None]).argmin(axis=1)
        y0, y1, x0, x1 = iy.min(), iy.max() + 1, ix.min(), ix.max() + 1
        sm = np.asarray(ds["sm"][0, y0:y1, x0:x1], dtype="float64")[iy - y0, ix - x0]
        flag = np.asarray(ds["flag"][0, y0:y1, x0:x1], dtype="float64")[iy - y0, ix - x0]
        fill = float(getattr(ds["sm"], "_FillValue", ECV_NODATA))
        t = ds["time"]
        date = pd.Timestamp(netCDF4.num2date(t[0], t.units, getattr(t, "calendar", "standard"),
                                             only_use_cftime_datetimes=False, only_use_python_datetimes=True))
    sm[(sm == fill) | (sm == ECV_NODATA) | ~(flag == 0) | outside] = np.nan
    return pd.DataFrame({"probe_id": probes["probe_id"].to_numpy(), "date": date.normalize(), "ecv_sm": sm})


def read_ecv_sm(folder: Path, probes: pd.DataFrame, strict: bool = False) -> pd.DataFrame:
    """Every daily ECV_SM file in ``folder`` -> ``probe_id, date, ecv_sm``."""
    return read_ecv_list(ecv_files(folder), probes, strict)


def read_ecv_list(files: list[Path], probes: pd.DataFrame, strict: bool = False) -> pd.DataFrame:
    """The given daily ECV_SM files -> ``probe_id, date, ecv_sm`` (one warning for probes outside)."""
    frames = [read_ecv_file(f, probes, strict, warn=(i == 0)) for i, f in enumerate(files)]
    if not frames:
        return pd.DataFrame(columns=["probe_id", "date", "ecv_sm"])
    return pd.concat(frames, ignore_index=True)


def read_csm(folder: Path, probes: pd.DataFrame) -> pd.DataFrame:
    """Every CSM raster in one region folder and its area sub-folders -> ``probe_id, date, csm`` (m3/m3).

    A raster covers the probes inside its extent (the product is for evaluation: probes it does not cover get
    NaN); rasters of the same day (areas) are combined."""
    ids = probes["probe_id"].to_numpy()
    dates, values = [], []
    with raster_env():
        for path in clip_files(folder, "CSM_SSM1km_*.tif", CSM_RE):
            m = CSM_RE.match(path.name)
            with open_raster(path) as src:
                v, covered = sample_covered(src, probes, path)
            values.append(np.where(covered, v[:, 0], np.nan))
            dates.append(pd.to_datetime(m.group(1), format=DATE_FORMAT))  # type: ignore[union-attr]
    if not dates:
        return pd.DataFrame(columns=["probe_id", "date", "csm"])
    out = pd.DataFrame({"probe_id": np.tile(ids, len(dates)),
                        "date": np.repeat(np.array(dates, dtype="datetime64[ns]"), len(ids)),
                        "csm": np.concatenate(values)})
    return out.groupby(["probe_id", "date"], as_index=False, sort=False).mean()
