"""Map products in the formats GIS and xarray users open (docs/maps.md "Formats").

A map is first staged as one tiled GeoTIFF per layer (band i = day i, written window by window by
:func:`soilmoisture.mapping.products.make_map`); the writers here turn the staged layers into the product of
``map.format``:

* ``cog-stack`` - one multi-band Cloud-Optimised GeoTIFF per layer and period (band = day);
* ``cog-daily`` - one single-band COG per layer and day (``ssm_YYYYMMDD.tif``), tiled, with overviews;
* ``netcdf`` - one CF-1.8 NetCDF file (``time``, ``y``, ``x``, a ``grid_mapping`` variable, ``lat``/``lon``
  auxiliary coordinates), chunked one day at a time and compressed;
* ``zarr`` - the same dataset as a Zarr store (consolidated metadata, Zarr format 2: GDAL 3.10 and every
  zarr-python read it).

Layers: ``ssm`` (m3/m3), the interval bounds ``ssm_pLL``/``ssm_pHH`` (see :class:`Provenance`) and
``nodata_reason`` (uint8, :data:`REASONS`). Every product is written under a temporary name beside its final
place and renamed when complete: a failure leaves the previous product (or nothing), never a partial one.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.config import MAP_FORMATS
from soilmoisture.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = MAP_FORMATS            # cog-stack, cog-daily, netcdf, zarr

# Why a pixel-day is nodata (layer ``nodata_reason``, uint8). Land cover decides first (docs/maps.md "Nodata").
REASONS = {0: "valid", 1: "water", 2: "built_up", 3: "unknown_land_cover", 4: "missing_input"}
REASON_LAYER = "nodata_reason"
SSM_LAYER = "ssm"
SSM_STANDARD_NAME = "volume_fraction_of_condensed_water_in_soil"  # CF standard name (canonical units 1 = m3 m-3)
SSM_UNITS_CF = "m3 m-3"          # as ESA CCI SM; udunits-convertible to the canonical 1
FILL_VALUE = -9999.0             # NetCDF/Zarr _FillValue of the float layers (decoded to NaN by xarray/GDAL)
DEPTH_M = (0.0, 0.05)            # the layer the model estimates (thesis: 0-5 cm probes)
COG_BLOCK = 256                  # COG tile edge (px)
NC_CHUNK_PX = 1024               # NetCDF/Zarr spatial chunk edge at most (a day of a <= 1024 px map is one chunk)
COMPRESS = dict(compress="ZSTD", level=1)   # ZSTD level 1: as small as DEFLATE, faster (measured, session 1)


def nodata_reason(pred: np.ndarray, landcover: np.ndarray) -> np.ndarray:
    """(D, N) uint8 reason codes (:data:`REASONS`) of a window's prediction ``pred`` (D, N, NaN = nodata) and its
    CORINE codes ``landcover`` (N,): water (5xx) and built-up (1xx) land cover, unknown land cover (no or
    non-positive code), else a missing input that day (static layer, weather or no sigma0 for a repeat cycle)."""
    lc = np.asarray(landcover)
    known = np.isfinite(lc) & (lc > 0) if lc.dtype.kind == "f" else lc > 0
    cls = np.where(known, lc, 0).astype(np.int64) // 100
    per_px = np.where(~known, 3, np.where(cls == 5, 1, np.where(cls == 1, 2, 4))).astype(np.uint8)
    return np.where(np.isfinite(pred), np.uint8(0), per_px[None, :]).astype(np.uint8)


def interval_layers(coverage: float) -> tuple[str, str]:
    """Names of the lower/upper interval layers of a central ``coverage`` interval: 0.9 -> ssm_p05, ssm_p95."""
    lo = round(100 * (1 - coverage) / 2, 1)
    hi = round(100 - lo, 1)
    fmt = (lambda v: f"{v:02.0f}") if float(lo).is_integer() else (lambda v: f"{v:04.1f}".replace(".", "_"))
    return f"ssm_p{fmt(lo)}", f"ssm_p{fmt(hi)}"


@dataclass(frozen=True)
class Provenance:
    """What a user needs to trust a map: which model (registry name, version, alias, training run), which code,
    which inputs, and how the interval was made. Written into every product (tags, attributes, STAC)."""

    model_name: str
    model_version: str
    model_alias: str
    model_run_id: str               # the MLflow run that logged the registered model
    model_uri: str
    code_version: str               # git commit of the platform that wrote the map
    input_start: str                # first day of the input series (warm-up start), YYYY-MM-DD
    input_end: str                  # last day of the input series (= last mapped day)
    region: str
    features: tuple[str, ...] = ()
    interval_coverage: float = float("nan")   # nominal coverage of [lower, upper]; NaN = no interval layers
    interval_offsets: tuple[float, float] = (float("nan"), float("nan"))  # (q_lo, q_hi) m3/m3 added to ssm
    interval_method: str = ""       # how the offsets were obtained (one sentence)
    protocol_run_id: str = ""       # the protocol run whose held-out residuals give the offsets

    @property
    def has_interval(self) -> bool:
        return bool(np.isfinite(self.interval_coverage) and np.all(np.isfinite(self.interval_offsets)))

    def as_dict(self) -> dict[str, str]:
        """Flat string fields (snake case) for NetCDF attributes and STAC properties."""
        d = {"model_name": self.model_name, "model_version": self.model_version, "model_alias": self.model_alias,
             "model_run_id": self.model_run_id, "model_uri": self.model_uri, "code_version": self.code_version,
             "input_start": self.input_start, "input_end": self.input_end, "region": self.region,
             "features": ",".join(self.features)}
        if self.has_interval:
            d.update(interval_coverage=f"{self.interval_coverage:g}",
                     interval_offsets_m3m3=f"{self.interval_offsets[0]:.6f},{self.interval_offsets[1]:.6f}",
                     interval_method=self.interval_method, protocol_run_id=self.protocol_run_id)
        else:
            d.update(interval_method=self.interval_method or "none")
        return d

    def tags(self) -> dict[str, str]:
        """GDAL metadata tags (upper case) of every GeoTIFF."""
        return {k.upper(): v for k, v in self.as_dict().items()}


@dataclass
class Staged:
    """The staged layers of one map: tiled GeoTIFFs on the map grid, band i = ``dates[i]``."""

    layers: dict[str, Path]         # layer name -> staged GeoTIFF (float32 NaN nodata; nodata_reason uint8)
    dates: pd.DatetimeIndex
    crs: Any
    transform: Any
    width: int
    height: int
    extra_tags: dict[str, str] = field(default_factory=dict)   # UNITS, START_DATE, ... (as the stack always had)


def product_path(folder: Path, start: str, end: str, fmt: str) -> Path:
    """Where the product of ``fmt`` for ``start..end`` lives (the file, or the folder of cog-daily/zarr)."""
    period = f"{start.replace('-', '')}_{end.replace('-', '')}"
    check_format(fmt)
    return {"cog-stack": folder / f"ssm_{period}.tif", "cog-daily": folder / f"ssm_{period}_daily",
            "netcdf": folder / f"ssm_{period}.nc", "zarr": folder / f"ssm_{period}.zarr"}[fmt]


def check_format(fmt: str, key: str = "map.format") -> None:
    if fmt not in FORMATS:
        raise ConfigError(key, f"unknown map format {fmt!r}; allowed: {', '.join(FORMATS)}")


def layer_file(out: Path, layer: str) -> Path:
    """cog-stack: the file of ``layer`` beside the ssm stack ``out``: ssm_<period>.tif -> <layer>_<period>.tif
    (another name: <stem>_<layer>.tif)."""
    if layer == SSM_LAYER:
        return out
    if out.name.startswith(SSM_LAYER + "_"):
        return out.with_name(layer + out.name[len(SSM_LAYER):])
    return out.with_name(f"{out.stem}_{layer}{out.suffix}")


def daily_file(folder: Path, layer: str, day: pd.Timestamp) -> Path:
    return folder / f"{layer}_{day:%Y%m%d}.tif"


# ----------------------------------------------------------------------------------------------
# atomic publication
# ----------------------------------------------------------------------------------------------
def tmp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary ``tmp`` onto ``out`` (files or folders). A folder being replaced is moved
    aside first and removed after, so readers see the old or the new product, never a mix."""
    from soilmoisture.harmonise import file_mode

    mode = file_mode()
    for tmp, out in pairs:
        if tmp.is_dir():
            for p in [tmp, *tmp.rglob("*")]:
                os.chmod(p, mode | 0o111 if p.is_dir() else mode)
            old = out.with_name(f".{out.name}.old")
            _remove(old)
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.chmod(tmp, mode)
            if out.is_dir():
                shutil.rmtree(out)
            os.replace(tmp, out)


# ----------------------------------------------------------------------------------------------
# GeoTIFF writers (rasterio)
# ----------------------------------------------------------------------------------------------
def _cog_options(dtype: str, overviews: bool) -> dict:
    """COG creation options: ZSTD, predictor (floating point / horizontal), 256 px tiles, overviews averaged for
    SSM and nearest for the reason codes."""
    return dict(driver="COG", **COMPRESS, predictor=3 if dtype == "float32" else 2, blocksize=COG_BLOCK,
                BIGTIFF="IF_SAFER", num_threads="ALL_CPUS", overviews="AUTO" if overviews else "NONE",
                overview_resampling="average" if dtype == "float32" else "nearest")


def _cog_from_array(arr: np.ndarray, path: Path, st: Staged, tags: dict[str, str], description: str) -> None:
    """One single-band COG of ``arr`` (H, W) on the map grid, with overviews (``AUTO``: down to one tile)."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    dtype = str(arr.dtype)
    profile = dict(driver="GTiff", width=st.width, height=st.height, count=1, dtype=dtype, crs=st.crs,
                   transform=st.transform, nodata=float("nan") if dtype == "float32" else None)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
            ds.set_band_description(1, description)
            ds.update_tags(**tags)
        with mem.open() as ds, rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            rio_copy(ds, path, **_cog_options(dtype, overviews=True))


def write_cog_stack(st: Staged, out: Path, prov: Provenance, overviews: bool) -> list[tuple[Path, Path]]:
    """Each staged layer as one multi-band COG (band descriptions = dates) next to ``out``; returns the
    (temporary, final) pairs to publish."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    pairs = []
    for layer, staged in st.layers.items():
        final = layer_file(out, layer)
        tmp = tmp_name(final)
        pairs.append((tmp, final))
        with rasterio.open(staged, "r+") as ds:
            for i, d in enumerate(st.dates, start=1):
                ds.set_band_description(i, f"{d:%Y-%m-%d}")
            ds.update_tags(**_tags(st, prov, layer))
            dtype = ds.dtypes[0]
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            rio_copy(staged, tmp, **_cog_options(dtype, overviews))
    return pairs


def write_cog_daily(st: Staged, out: Path, prov: Provenance) -> list[tuple[Path, Path]]:
    """One single-band COG per layer and day in the folder ``out`` (written as ``.<name>.tmp``)."""
    import rasterio

    tmp = tmp_name(out)
    _remove(tmp)
    tmp.mkdir(parents=True)
    for layer, staged in st.layers.items():
        with rasterio.open(staged) as ds:
            for i, d in enumerate(st.dates, start=1):
                _cog_from_array(ds.read(i), daily_file(tmp, layer, d), st, _tags(st, prov, layer, DATE=f"{d:%Y-%m-%d}"),
                                layer)
    return [(tmp, out)]


def _tags(st: Staged, prov: Provenance, layer: str, **more: str) -> dict[str, str]:
    """GDAL tags of a layer: the stack's own (UNITS, START_DATE, ...), the provenance, the layer's meaning."""
    return {**st.extra_tags, **prov.tags(), "LAYER": layer, **_layer_tags(layer, prov), **more}


def _layer_tags(layer: str, prov: Provenance) -> dict[str, str]:
    if layer == REASON_LAYER:
        return {"CODES": ";".join(f"{k}={v}" for k, v in REASONS.items())}
    if layer == SSM_LAYER:
        return {"UNITS": "m3/m3"}
    side = "lower" if layer == interval_layers(prov.interval_coverage)[0] else "upper"
    return {"UNITS": "m3/m3", "QUANTITY": f"{side} bound of the {prov.interval_coverage:.0%} prediction interval"}


# ----------------------------------------------------------------------------------------------
# the CF dataset (xarray / rioxarray): NetCDF and Zarr
# ----------------------------------------------------------------------------------------------
def lonlat(st: Staged) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees, (H, W)) of the pixel centres of the map grid."""
    from rasterio.warp import transform as warp

    cols, rows = np.meshgrid(np.arange(st.width) + 0.5, np.arange(st.height) + 0.5)
    a, b, c, d, e, f = tuple(st.transform)[:6]
    xs, ys = a * cols.ravel() + b * rows.ravel() + c, d * cols.ravel() + e * rows.ravel() + f
    lon, lat = warp(st.crs, "EPSG:4326", np.asarray(xs), np.asarray(ys))
    return np.asarray(lon).reshape(st.height, st.width), np.asarray(lat).reshape(st.height, st.width)


def chunk_shape(st: Staged) -> tuple[int, int, int]:
    """(1 day, y, x): a day's read touches one chunk on maps up to ``NC_CHUNK_PX`` px a side."""
    return 1, min(st.height, NC_CHUNK_PX), min(st.width, NC_CHUNK_PX)


def dataset(st: Staged, prov: Provenance) -> Any:
    """The map as a lazy (dask) CF-1.8 ``xarray.Dataset``: ``ssm`` (+ interval bounds) and ``nodata_reason`` over
    (time, y, x), ``crs`` grid mapping, 2-D ``lat``/``lon``, the 0-5 cm ``depth`` as a scalar coordinate."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    _, cy, cx = chunk_shape(st)
    first = None
    data_vars = {}
    for layer, staged in st.layers.items():
        da = rioxarray.open_rasterio(staged, chunks={"band": 1, "y": cy, "x": cx}, mask_and_scale=False, lock=False)
        if first is None:
            first = da
        data_vars[layer] = (("time", "y", "x"), da.data)
    x, y = first["x"].to_numpy(), first["y"].to_numpy()
    lon, lat = lonlat(st)
    t = pd.DatetimeIndex(st.dates)
    ds = xr.Dataset(data_vars, coords={"time": t, "y": y, "x": x, "lat": (("y", "x"), lat), "lon": (("y", "x"), lon),
                                       "depth": np.float64(np.mean(DEPTH_M))})
    ds["time_bnds"] = (("time", "nv"), np.stack([t.values, (t + pd.Timedelta(days=1)).values], axis=1))
    ds["depth_bnds"] = (("nv",), np.array(DEPTH_M, np.float64))
    ds = ds.rio.write_crs(st.crs, grid_mapping_name="crs").rio.write_transform(st.transform)
    ds = ds.rio.write_coordinate_system()
    ds["time"].attrs.update(standard_name="time", long_name="day (UTC)", axis="T", bounds="time_bnds")
    ds["lat"].attrs.update(standard_name="latitude", long_name="latitude of the pixel centre", units="degrees_north")
    ds["lon"].attrs.update(standard_name="longitude", long_name="longitude of the pixel centre", units="degrees_east")
    ds["depth"].attrs.update(standard_name="depth", long_name="depth of the soil layer (0-5 cm)", units="m",
                             positive="down", axis="Z", bounds="depth_bnds")
    anc = [k for k in st.layers if k != SSM_LAYER]
    for layer in st.layers:
        a = ds[layer].attrs
        a["grid_mapping"] = "crs"
        if layer == REASON_LAYER:
            a.update(long_name="why the pixel-day has no soil moisture", flag_values=np.arange(len(REASONS), dtype=np.uint8),
                     flag_meanings=" ".join(REASONS.values()), valid_range=np.array([0, len(REASONS) - 1], np.uint8))
            continue
        a.update(units=SSM_UNITS_CF, coordinates="lat lon depth")
        if layer == SSM_LAYER:
            a.update(standard_name=SSM_STANDARD_NAME, long_name="surface soil moisture (0-5 cm), daily",
                     cell_methods="time: mean", ancillary_variables=" ".join(anc))
        else:
            side = "lower" if layer == interval_layers(prov.interval_coverage)[0] else "upper"
            a.update(long_name=f"{side} bound of the {prov.interval_coverage:.0%} prediction interval of ssm "
                               f"({prov.interval_method})", cell_methods="time: mean")
    ds.attrs.update(Conventions="CF-1.8", title=f"Daily surface soil moisture, region {prov.region}",
                    institution="soilmoisture platform", source=f"LSTM {prov.model_name} version {prov.model_version} "
                    f"({prov.model_uri}) on Sentinel-1/2, weather, terrain and land cover",
                    history=f"{pd.Timestamp.now(tz='UTC'):%Y-%m-%dT%H:%M:%SZ} soilmoisture map (code {prov.code_version})",
                    references="docs/maps.md", time_coverage_start=f"{t[0]:%Y-%m-%d}",
                    time_coverage_end=f"{t[-1]:%Y-%m-%d}", **prov.as_dict())
    return ds


def _encoding(ds: Any, st: Staged, zarr: bool) -> dict:
    chunks = chunk_shape(st)
    enc: dict[str, dict] = {"time": {"units": "days since 1970-01-01", "calendar": "standard", "dtype": "int32"},
                            "time_bnds": {"units": "days since 1970-01-01", "calendar": "standard", "dtype": "int32"}}
    for layer in st.layers:
        float_layer = layer != REASON_LAYER
        e: dict[str, Any] = {"dtype": "float32" if float_layer else "uint8",
                             "_FillValue": FILL_VALUE if float_layer else None}
        if zarr:
            e["chunks"] = chunks
        else:
            e.update(zlib=True, complevel=1, shuffle=True, chunksizes=chunks)
        enc[layer] = e
    for c in ("lat", "lon"):
        enc[c] = {"dtype": "float64", "_FillValue": None}
    for c in ("x", "y", "depth", "depth_bnds"):
        enc[c] = {"_FillValue": None}
    return enc


def write_netcdf(st: Staged, out: Path, prov: Provenance) -> list[tuple[Path, Path]]:
    """The CF dataset as one NetCDF-4 file (zlib level 1 + shuffle, one chunk per day up to 1024 px a side)."""
    ds = dataset(st, prov)
    tmp = tmp_name(out)
    _remove(tmp)
    try:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds, st, zarr=False))
    except BaseException:
        # After a failed dask write the netCDF4 handle is only released when collected, and closing it writes the
        # file header again: collect first, then remove the partial file.
        import gc

        del ds
        gc.collect()
        _remove(tmp)
        raise
    return [(tmp, out)]


def write_zarr(st: Staged, out: Path, prov: Provenance) -> list[tuple[Path, Path]]:
    """The CF dataset as a Zarr store (format 2, consolidated metadata, the same chunks as the NetCDF)."""
    import warnings

    ds = dataset(st, prov)
    tmp = tmp_name(out)
    _remove(tmp)
    with warnings.catch_warnings():
        # flag_values/valid_range arrays as attributes are fine in Zarr v2 JSON; zarr-python warns about v2 itself
        warnings.simplefilter("ignore", category=FutureWarning)
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True, encoding=_encoding(ds, st, zarr=True))
    return [(tmp, out)]


def write_product(st: Staged, fmt: str, out: Path, prov: Provenance, *, overviews: bool = False) -> list[Path]:
    """Write the staged map as ``fmt`` at ``out`` atomically; returns the published paths (files or folders).

    ``overviews``: cog-stack only (on a long stack they triple the conversion time; cog-daily always has them).
    """
    check_format(fmt)
    writer = {"cog-stack": lambda: write_cog_stack(st, out, prov, overviews),
              "cog-daily": lambda: write_cog_daily(st, out, prov),
              "netcdf": lambda: write_netcdf(st, out, prov), "zarr": lambda: write_zarr(st, out, prov)}[fmt]
    pairs: list[tuple[Path, Path]] = []
    try:
        pairs = writer()
        publish(pairs)
    finally:
        for tmp, _ in pairs:
            _remove(tmp)
        for layer in st.layers:                     # a writer that failed before returning its pairs
            _remove(tmp_name(layer_file(out, layer)))
        _remove(tmp_name(out))
    return [o for _, o in pairs]


__all__ = ["FORMATS", "FILL_VALUE", "Provenance", "REASONS", "REASON_LAYER", "SSM_LAYER", "SSM_STANDARD_NAME",
           "Staged", "check_format", "daily_file", "dataset", "interval_layers", "layer_file", "lonlat",
           "nodata_reason", "product_path", "publish", "write_product"]
