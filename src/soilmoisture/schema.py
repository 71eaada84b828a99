"""Column names and units of the data contract (documented in docs/data.md).

``data/interim`` and ``data/processed`` hold two tables:

* ``daily.parquet``: one row per probe and day over the full daily range (``DAILY_COLUMNS``);
* ``probes.parquet``: one row per probe (``PROBE_COLUMNS``).

Names carry units: ``precip_mm``, ``sigma0_vv`` is *linear* (``sigma0_vv_db`` would be dB).
"""
from __future__ import annotations

# --- daily table ---------------------------------------------------------------------------------
# column -> (dtype, unit, meaning)
DAILY_COLUMNS: dict[str, tuple[str, str, str]] = {
    "probe_id": ("string", "", "probe (station) identifier, unique over all networks"),
    "date": ("datetime64[ns]", "", "day (UTC)"),
    "network": ("string", "", "probe network (HOBE, FMI, REMEDHUS, ICOS, ...)"),
    "region": ("string", "", "study region (denmark, finland, spain, sweden, ...)"),
    "ssm": ("float64", "m3/m3", "surface soil moisture 0-0.05 m, daily mean; NaN where not observed or frozen"),
    "ssm_flag_gt50": ("bool", "", "observed SSM above quality.ssm_flag_threshold (questionable)"),
    "frozen": ("bool", "", "ts_max <= 0 degC: SSM removed (thesis 3.2.1)"),
    "ts_max": ("float64", "degC", "daily maximum soil temperature at the probe"),
    "sigma0_vv": ("float64", "linear", "Sentinel-1 VV backscatter on overpass days (NaN otherwise)"),
    "sigma0_outlier": ("bool", "", "sigma0 removed as an outlier (|z| > ingest.sigma0_zscore or > sigma0_max)"),
    "ndvi": ("float64", "", "NDVI = (B8A-B4)/(B8A+B4), interpolated <= vi_max_gap_days"),
    "ndwi": ("float64", "", "NDWI = (B8A-B12)/(B8A+B12), interpolated <= vi_max_gap_days"),
    "precip_mm": ("float64", "mm/day", "daily precipitation sum"),
    "dry_days": ("float64", "days", "consecutive days with precipitation < dry_day_mm, up to this day"),
    "ta_min": ("float64", "degC", "daily minimum air temperature"),
    "ta_mean": ("float64", "degC", "daily mean air temperature"),
    "ta_max": ("float64", "degC", "daily maximum air temperature"),
    "ecv_sm": ("float64", "m3/m3", "ESA CCI SM (ECV_SM) cell containing the probe; evaluation only"),
    "csm": ("float64", "m3/m3", "Copernicus SSM 1 km (CSM) cell containing the probe; evaluation only"),
}
# Optional extra columns some sources provide (kept as optional features).
OPTIONAL_DAILY_COLUMNS: dict[str, tuple[str, str, str]] = {
    "sigma0_vh": ("float64", "linear", "Sentinel-1 VH backscatter"),
    "incidence_angle_deg": ("float64", "deg", "Sentinel-1 local incidence angle"),
    "lst_day_c": ("float64", "degC", "MODIS daytime land surface temperature"),
}

# --- probe table ---------------------------------------------------------------------------------
PROBE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "probe_id": ("string", "", "probe identifier"),
    "network": ("string", "", "probe network"),
    "region": ("string", "", "study region"),
    "lat": ("float64", "deg", "WGS84 latitude"),
    "lon": ("float64", "deg", "WGS84 longitude"),
    "landcover_code": ("int64", "", "CORINE Land Cover 2018 class code (e.g. 211)"),
    "landcover_name": ("string", "", "CORINE class name"),
    "elevation_m": ("float64", "m", "elevation from the DTM"),
    "slope_pct": ("float64", "%", "slope from the DTM"),
    "aspect_x": ("float64", "", "cos(aspect)"),
    "aspect_y": ("float64", "", "sin(aspect)"),
    "clay_pct": ("float64", "%", "clay fraction"),
    "silt_pct": ("float64", "%", "silt fraction"),
    "sand_pct": ("float64", "%", "sand fraction"),
    "organic_carbon_pct": ("float64", "%", "organic carbon"),
    "base_saturation_pct": ("float64", "%", "base saturation"),
    "climate_class": ("string", "", "Koeppen-Geiger class, where known"),
}

# --- model features --------------------------------------------------------------------------------
DYNAMIC_FEATURES = ("ts_max", "sigma0_vv", "ndvi", "ndwi", "precip_mm", "dry_days", "ta_min", "ta_mean", "ta_max",
                    "sigma0_vh", "incidence_angle_deg", "lst_day_c")
STATIC_FEATURES = ("elevation_m", "slope_pct", "aspect_x", "aspect_y", "landcover_code", "clay_pct", "silt_pct",
                   "sand_pct", "organic_carbon_pct", "base_saturation_pct")
FEATURES = DYNAMIC_FEATURES + STATIC_FEATURES
# Features that exist at every pixel of a map (probe soil temperature does not).
MAPPABLE_FEATURES = frozenset(FEATURES) - {"ts_max", "lst_day_c", "clay_pct", "silt_pct", "sand_pct",
                                           "organic_carbon_pct", "base_saturation_pct"}
TARGET = "ssm"
PRODUCTS = ("ecv_sm", "csm")

# CORINE Land Cover classes used by the platform (code -> name).
CORINE = {
    111: "Continuous urban fabric",
    112: "Discontinuous urban fabric",
    211: "Non-irrigated arable land",
    212: "Permanently irrigated land",
    221: "Vineyards",
    231: "Pastures",
    242: "Complex cultivation patterns",
    243: "Land principally occupied by agriculture",
    311: "Broad-leaved forest",
    312: "Coniferous forest",
    321: "Natural grasslands",
    322: "Moors and heathland",
    331: "Beaches, dunes, sands",
    411: "Inland marshes",
    412: "Peat bogs",
    512: "Water bodies",
}
