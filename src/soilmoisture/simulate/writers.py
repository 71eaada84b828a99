"""File writers of the simulated area, each in the real format of its source (docs/raw-layout.md).

Deterministic bytes: no timestamps in any metadata, fixed compression settings, sorted JSON keys.
Text is formatted with numpy string ufuncs (no per-line Python loop): ~1.3 M hourly lines per variable.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

# ISMN "header+values" line layout, as in the real archives (see ../shared/data/ismn/*header*.zip):
# "COSMOS     COSMOS          ARM-1             36.60540   -97.48780  322.00    0.00    0.19 Cosmic-ray-Probe"
# "2017/08/10 00:00   0.1410 G M"
ISMN_STATIC_COLUMNS = ("quantity_name;unit;depth_from[m];depth_to[m];value;description;quantity_source_name;"
                       "quantity_source_description;quantity_source_provider;quantity_source_version;"
                       "quantity_source_resolution;quantity_source_timerange;quantity_source_url;")
_HWSD = ('HWSD;Harmonized World Soil Database v1.2 by IIASA;IIASA;v1.2;30";;'
         'http://webarchive.iiasa.ac.at/Research/LUC/External-World-soil-database/HTML/;')
# CORINE -> ESA CCI land cover (what ISMN static files carry as lc_2010).
CORINE_TO_CCI = {211: 10, 212: 20, 221: 10, 242: 30, 243: 30, 312: 70, 321: 130, 322: 120, 331: 200,
                 412: 180, 512: 210, 112: 190}
CCI_NAMES = {10: "Cropland, rainfed", 20: "Cropland, irrigated or post-flooding",
             30: "Mosaic cropland (>50%) / natural vegetation (tree, shrub, herbaceous cover) (<50%)",
             70: "Tree cover, needleleaved, evergreen, closed to open (>15%)", 120: "Shrubland",
             130: "Grassland", 180: "Shrub or herbaceous cover, flooded, fresh/saline/brakish water",
             190: "Urban areas", 200: "Bare areas", 210: "Water bodies"}


def fixed(values: np.ndarray, width: int, decimals: int) -> np.ndarray:
    """Right-aligned fixed-point byte strings like ``b'%{width}.{decimals}f' % v`` (wider when needed).

    Vectorised through a (n, width) matrix of ASCII codes: ~50x faster than Python formatting.
    """
    v = np.asarray(values, dtype=np.float64)
    scaled = np.round(np.abs(v) * 10 ** decimals).astype(np.int64)
    neg = (v < 0) & (scaled > 0)
    n_int = max(1, len(str(int(scaled.max(initial=0)) // 10 ** decimals)))
    width = max(width, n_int + decimals + (1 if decimals else 0) + int(neg.any()))
    out = np.full((v.size, width), ord(" "), dtype=np.uint8)
    rest = scaled.copy()
    pos = width - 1
    for k in range(decimals):
        out[:, pos] = 48 + rest % 10
        rest //= 10
        pos -= 1
    if decimals:
        out[:, pos] = ord(".")
        pos -= 1
    first = np.full(v.size, pos)
    for k in range(n_int):
        show = (rest > 0) | (k == 0)
        out[show, pos] = 48 + (rest[show] % 10)
        first = np.where(show, pos, first)
        rest //= 10
        pos -= 1
    rows = np.nonzero(neg)[0]
    out[rows, first[rows] - 1] = ord("-")
    return out.view(f"S{width}").ravel()


def ismn_stamps(dates: np.ndarray) -> np.ndarray:
    """b'YYYY/mm/dd HH:MM' for every hour of ``dates`` (datetime64[D]), shape (days * 24,)."""
    hours = (dates.astype("datetime64[h]")[:, None] + np.arange(24).astype("timedelta64[h]")[None, :]).ravel()
    s = np.datetime_as_string(hours, unit="m")          # 'YYYY-mm-ddTHH:MM'
    return np.strings.replace(np.strings.replace(s, "-", "/"), "T", " ").astype("S16")


def ismn_range(stamps: np.ndarray, values: np.ndarray, d0: str, d1: str) -> tuple[str, str]:
    """('YYYYmmdd', 'YYYYmmdd') of the first and last reading :func:`write_stm` writes (``d0``, ``d1`` if none)."""
    keep = np.nonzero(np.isfinite(values))[0]
    if not len(keep):
        return d0, d1
    return tuple(stamps[i][:10].decode().replace("/", "") for i in (keep[0], keep[-1]))  # type: ignore[return-value]


def write_stm(path: Path, network: str, station: str, lat: float, lon: float, elev: float, depth: tuple[float, float],
              sensor: str, stamps: np.ndarray, values: np.ndarray, flags: np.ndarray, decimals: int) -> None:
    """One ISMN header+values file; rows whose value is NaN are left out (ISMN writes no fill values)."""
    keep = np.isfinite(values)
    header = (f"{network:<10} {network:<15} {station:<17}{lat:9.5f} {lon:12.5f} {elev:8.2f} "
              f"{depth[0]:8.2f} {depth[1]:8.2f} {sensor}")
    body = np.strings.add(np.strings.add(stamps[keep], b" "), fixed(values[keep], 8, decimals))
    body = np.strings.add(np.strings.add(body, b" "), np.strings.add(flags[keep].astype("S3"), b" M"))
    path.write_bytes(header.encode() + b"\n" + b"\n".join(body.tolist()) + b"\n")


def write_ismn_static(path: Path, clay: float, silt: float, sand: float, oc: float, porosity: float,
                      base_sat: float, clc: int, clc_name: str, climate: str) -> None:
    """The station's ``static_variables.csv`` (semicolon separated, as ISMN writes it).

    Land cover: the ESA CCI class ISMN gives (lc_2010) and the CORINE 2018 class as an ``insitu``
    classification (the ismn package reads it as ``lc_insitu``) so that metadata and the CLC raster agree.
    """
    cci = CORINE_TO_CCI.get(clc, 10)
    rows = [ISMN_STATIC_COLUMNS]
    for d0, d1, f in ((0.0, 0.3, 1.0), (0.3, 1.0, 0.95)):
        rows += [f"saturation;m^3*m^-3;{d0:.2f};{d1:.2f};{porosity * f:.2f};;{_HWSD}",
                 f"clay fraction;% weight;{d0:.2f};{d1:.2f};{clay * f:.2f};;{_HWSD}",
                 f"organic carbon;% weight;{d0:.2f};{d1:.2f};{oc * f:.2f};;{_HWSD}",
                 f"sand fraction;% weight;{d0:.2f};{d1:.2f};{sand:.2f};;{_HWSD}",
                 f"silt fraction;% weight;{d0:.2f};{d1:.2f};{100 - sand - clay * f:.2f};;{_HWSD}"]
    rows.append(f"base saturation;%;0.00;0.30;{base_sat:.2f};;{_HWSD}")
    for year, rng in ((2000, "1998-2002"), (2005, "2003-2007"), (2010, "2008-2012")):
        rows.append(f"land cover classification;;;;{cci};{CCI_NAMES.get(cci, '')};CCI_landcover_{year};"
                    f"ESA CCI Land Cover;ESA;{year}-v1.6.1;300m;{rng};http://www.esa-landcover-cci.org/;")
    rows.append(f"land cover classification;;;;{clc};{clc_name};insitu;CORINE Land Cover 2018;EEA;2018;100m;;;")
    rows.append(f"climate classification;;;;{climate};;koeppen_geiger_2007;Koeppen-Geiger Climate Classification;"
                ";Peel2007;0.1\u00b0;;http://www.hydrol-earth-syst-sci.net/11/1633/2007/;")
    path.write_text("\n".join(rows) + "\n")


def write_tif(path: Path, data: np.ndarray, crs: Any, transform: Any, nodata: float | int | None = None,
              descriptions: list[str] | None = None, tags: dict[str, str] | None = None,
              predictor: int = 1) -> None:
    """A deflate-compressed GeoTIFF (bands x rows x cols); no timestamp tags, so bytes are reproducible."""
    import rasterio

    data = data if data.ndim == 3 else data[None]
    bands, h, w = data.shape
    # zlevel 1: these rasters are noisy floats; higher levels cost time and save ~1 %.
    opts: dict[str, Any] = {"compress": "deflate", "zlevel": 1, "predictor": predictor}
    if h > 256 and w > 256:
        opts.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype, crs=crs,
                       transform=transform, nodata=nodata, **opts) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)


SPARSE_BLOCK = 64   # block edge of clipped scenes: only blocks holding a patch are stored (GDAL SPARSE_OK)


def write_sparse_tif(path: Path, shape: tuple[int, int], patches: list[tuple[int, int, np.ndarray]], crs: Any,
                     transform: Any, nodata: float | int, descriptions: list[str] | None = None,
                     tags: dict[str, str] | None = None, predictor: int = 1) -> None:
    """A tiled, deflate-compressed GeoTIFF of ``shape`` (rows, cols) that stores only the blocks touched by
    ``patches`` [(row0, col0, (bands, h, w) array)]; every other pixel reads as ``nodata`` (a scene clipped to a
    network's bounding box where only the patches around the probes were simulated). Blocks are written in a
    fixed order, so the bytes are reproducible."""
    import rasterio
    from rasterio.windows import Window

    B = SPARSE_BLOCK
    h, w = shape
    bands, dtype = patches[0][2].shape[0], patches[0][2].dtype
    blocks: dict[tuple[int, int], list[tuple[int, int, np.ndarray]]] = {}
    for r0, c0, a in patches:
        for br in range(r0 // B, (r0 + a.shape[1] - 1) // B + 1):
            for bc in range(c0 // B, (c0 + a.shape[2] - 1) // B + 1):
                blocks.setdefault((br, bc), []).append((r0, c0, a))
    opts: dict[str, Any] = {"compress": "deflate", "zlevel": 1, "predictor": predictor, "tiled": True,
                            "blockxsize": B, "blockysize": B, "sparse_ok": True}
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=dtype, crs=crs,
                       transform=transform, nodata=nodata, **opts) as ds:
        for (br, bc) in sorted(blocks):
            y0, x0 = br * B, bc * B
            bh, bw = min(B, h - y0), min(B, w - x0)
            buf = np.full((bands, bh, bw), nodata, dtype=dtype)
            for r0, c0, a in blocks[(br, bc)]:
                ys, xs = max(r0, y0), max(c0, x0)
                ye, xe = min(r0 + a.shape[1], y0 + bh), min(c0 + a.shape[2], x0 + bw)
                buf[:, ys - y0:ye - y0, xs - x0:xe - x0] = a[:, ys - r0:ye - r0, xs - c0:xe - c0]
            ds.write(buf, window=Window(x0, y0, bw, bh))
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)


# SoilGrids 2.0 (ISRIC): one GeoTIFF per property, depth and statistic, e.g. sand_0-5cm_mean.tif, on the 250 m
# Interrupted Goode Homolosine grid, int16 in "mapped units" (nodata -32768).
SOILGRIDS_CRS = "+proj=igh +lat_0=0 +lon_0=0 +datum=WGS84 +units=m +no_defs"
SOILGRIDS_RES_M = 250.0
SOILGRIDS_NODATA = -32768
# property -> (mapped unit, divisor from mapped units to %); SoilGrids' own conversion factor is 10 for all four
# (sand/silt/clay g/kg -> %, soc dg/kg -> g/kg)
SOILGRIDS_UNITS = {"sand": ("g/kg", 10.0), "silt": ("g/kg", 10.0), "clay": ("g/kg", 10.0), "soc": ("dg/kg", 100.0)}


def soilgrids_name(prop: str, depth: str = "0-5cm", stat: str = "mean") -> str:
    return f"{prop}_{depth}_{stat}.tif"


def write_soilgrids(path: Path, values_pct: np.ndarray, prop: str, transform: Any) -> None:
    """One SoilGrids-like property raster from values in % (sand/silt/clay by mass, soc as % organic carbon)."""
    from rasterio.crs import CRS

    unit, factor = SOILGRIDS_UNITS[prop]
    v = np.where(np.isfinite(values_pct), np.round(values_pct * factor), SOILGRIDS_NODATA).astype(np.int16)
    write_tif(path, v[None], CRS.from_string(SOILGRIDS_CRS), transform, nodata=SOILGRIDS_NODATA,
              descriptions=[path.stem], tags={"UNITS": unit, "CONVERSION_FACTOR": "10",
                                              "SOURCE": "SoilGrids 2.0 layout (simulated)"})


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# Sentinel scene names the simulator writes (docs/raw-layout.md): <stamp> = acquisition YYYYMMDDTHHMMSS (UTC).
SCENE_STAMP_FORMAT = "%Y%m%dT%H%M%S"
_SCENE_NAME_RE = re.compile(r"^S1[AB]_IW_GRDH_1SDV_(\d{8}T\d{6})_(?:ASC|DSC)\.tif$|^S2[AB]_MSIL2A_(\d{8}T\d{6})_T[^.]+\.tif$")


def s1_name(sat: str, stamp: str, direction: str) -> str:
    """A Sentinel-1 scene file name: ``sat`` A|B, ``stamp`` YYYYMMDDTHHMMSS, ``direction`` ASC|DSC."""
    return f"S1{sat}_IW_GRDH_1SDV_{stamp}_{direction}.tif"


def s2_name(sat: str, stamp: str, tile: str) -> str:
    """A Sentinel-2 scene file name: ``sat`` A|B, ``stamp`` YYYYMMDDTHHMMSS, ``tile`` the MGRS tile id."""
    return f"S2{sat}_MSIL2A_{stamp}_T{tile}.tif"


def scene_day(name: str) -> dt.date | None:
    """Acquisition day of a scene name written by :func:`s1_name`/:func:`s2_name`, None for any other name."""
    m = _SCENE_NAME_RE.match(name)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1) or m.group(2), SCENE_STAMP_FORMAT).date()


ECV_VERSION = "05.2"


def ecv_name(day: np.datetime64) -> str:
    return f"ESACCI-SOILMOISTURE-L3S-SSMV-COMBINED-{str(day).replace('-', '')}000000-fv{ECV_VERSION}.nc"


def write_ecv(path: Path, day: np.datetime64, lat: np.ndarray, lon: np.ndarray, sm: np.ndarray, flag: np.ndarray,
              unc: np.ndarray) -> None:
    """One daily ESA CCI SM v05.2 COMBINED-like file (variable names, dims, fills and attributes as the real one,
    cropped to ``lat`` x ``lon``). ``sm``/``unc`` NaN -> -9999; ``flag`` 127 where no data."""
    import netCDF4

    t = float((day - np.datetime64("1970-01-01", "D")).astype(np.int64))
    # diskless + persist: built in memory, written once at close (same bytes, ~20 % faster for small files)
    ds = netCDF4.Dataset(path, "w", format="NETCDF4_CLASSIC", diskless=True, persist=True)
    try:
        ds.createDimension("time", 1)
        ds.createDimension("lat", len(lat))
        ds.createDimension("lon", len(lon))
        v = ds.createVariable("lat", "f4", ("lat",))
        v.setncatts({"units": "degrees_north", "standard_name": "latitude", "valid_range": np.array([-90.0, 90.0])})
        v[:] = lat
        v = ds.createVariable("lon", "f4", ("lon",))
        v.setncatts({"units": "degrees_east", "standard_name": "longitude", "valid_range": np.array([-180.0, 180.0])})
        v[:] = lon
        v = ds.createVariable("time", "f8", ("time",))
        v.setncatts({"units": "days since 1970-01-01 00:00:00 UTC", "standard_name": "time", "calendar": "standard"})
        v[:] = [t]
        dims = ("time", "lat", "lon")
        kw = {"zlib": True, "complevel": 4}
        v = ds.createVariable("sm", "f4", dims, fill_value=np.float32(-9999.0), **kw)
        v.setncatts({"long_name": "Volumetric Soil Moisture", "units": "m3 m-3",
                     "valid_range": np.array([0.0, 1.0], dtype=np.float32)})
        v[:] = np.where(np.isfinite(sm), sm, -9999.0).astype(np.float32)[None]
        v = ds.createVariable("sm_uncertainty", "f4", dims, fill_value=np.float32(-9999.0), **kw)
        v.setncatts({"long_name": "Volumetric Soil Moisture Uncertainty", "units": "m3 m-3",
                     "valid_range": np.array([0.0, 1.0], dtype=np.float32)})
        v[:] = np.where(np.isfinite(unc), unc, -9999.0).astype(np.float32)[None]
        v = ds.createVariable("flag", "i1", dims, fill_value=np.int8(127), **kw)
        v.setncatts({"long_name": "Flag", "flag_meanings": "no_data_inconsistency_detected "
                     "snow_coverage_or_temperature_below_zero dense_vegetation combination_of_flag_values_1_and_2 "
                     "others_no_convergence_in_the_model_thus_no_valid_sm_estimates"})
        v[:] = flag.astype(np.int8)[None]
        v = ds.createVariable("sensor", "i2", dims, fill_value=np.int16(0), **kw)
        v.setncatts({"long_name": "Sensor"})
        v[:] = np.where(np.isfinite(sm), 1344, 0).astype(np.int16)[None]   # SMOS+ASCATA+SMAP
        v = ds.createVariable("t0", "f8", dims, fill_value=-9999.0, **kw)
        v.setncatts({"long_name": "Observation Timestamp", "units": "days since 1970-01-01 00:00:00 UTC"})
        v[:] = np.where(np.isfinite(sm), t + 0.5, -9999.0)[None]
        ds.setncatts({"title": "ESA CCI Surface Soil Moisture COMBINED active+passive Product (SIMULATED)",
                      "product_version": ECV_VERSION, "id": path.name, "Conventions": "CF-1.6",
                      "comment": "Simulated by soilmoisture.simulate; not real data.",
                      "geospatial_lat_resolution": "0.25 degree", "geospatial_lon_resolution": "0.25 degree",
                      "spatial_resolution": "25km", "time_coverage_resolution": "P1D"})
    finally:
        ds.close()
