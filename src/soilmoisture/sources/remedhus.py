"""The thesis author's own daily export for 5 REMEDHUS probes (``SM_Data_REMEDHUS.csv``).

Units are converted explicitly (DESIGN: never guess silently): VV/VH dB -> linear 10**(dB/10),
total precipitation m -> mm. The export has no soil temperature (``ts_max`` stays NaN, so the frozen
rule of thesis 3.2.1 cannot apply) and no products (``ecv_sm``/``csm`` NaN).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.schema import CORINE

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "SM_Data_REMEDHUS.csv"
DATE_FORMAT = "%d/%m/%Y"
COLUMNS = {  # column -> (unit in the file, harmonised name)
    "Date": ("dd/mm/YYYY", "date"),
    "LST_Day_1km": ("degC", "lst_day_c"),
    "VV": ("dB", "sigma0_vv"),
    "VH": ("dB", "sigma0_vh"),
    "angle": ("deg", "incidence_angle_deg"),
    "NDVI": ("", "ndvi"),
    "NDWI": ("", "ndwi"),
    "mean_2m_air_temperature": ("degC", "ta_mean"),
    "total_precipitation": ("m", "precip_mm"),
    "Dry_days": ("days", "dry_days"),
    "ID": ("", "probe_id"),
    "soil_moisture": ("m3/m3", "ssm"),
}
NODATA = ""        # empty cells
PRECIP_NEGATIVE_TOLERANCE_MM = 0.01   # ERA5 packing noise below 0 that is read as 0 mm
NETWORK = "REMEDHUS"
REGION = "spain"
# Land cover from thesis Table B1 (Canizal: 212 permanently irrigated land; the others 211).
LANDCOVER = {"Canizal": 212}
DEFAULT_LANDCOVER = 211
# APPROXIMATE coordinates: the export has none; the centre of the REMEDHUS network (~41.3 N, 5.4 W)
# is used for every probe. Good enough to pick the regional weather/product cell, not a pixel.
APPROX_LAT, APPROX_LON = 41.3, -5.4


def db_to_linear(db: pd.Series | np.ndarray) -> pd.Series | np.ndarray:
    """Backscatter dB -> linear power ratio: 10 ** (dB / 10)."""
    return 10.0 ** (np.asarray(db, dtype="float64") / 10.0) if not isinstance(db, pd.Series) else 10.0 ** (db / 10.0)


def read_remedhus(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the export into (daily, probes), schema names and units (sigma0 linear, precip mm)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype={"ID": str, "Date": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(path, f"cannot read the REMEDHUS export: {e}") from None
    missing = [c for c in COLUMNS if c not in raw]
    if missing:
        raise DataError(path, "missing column(s)", field=",".join(missing))
    try:
        date = pd.to_datetime(raw["Date"], format=DATE_FORMAT)
    except ValueError as e:
        raise DataError(path, f"dates are not {DATE_FORMAT}: {e}", field="Date") from None
    df = raw.rename(columns={k: v[1] for k, v in COLUMNS.items()})
    df["date"] = date.astype("datetime64[ns]")
    dup = df.duplicated(["probe_id", "date"])
    if dup.any():
        r = df.loc[dup].iloc[0]
        raise DataError(path, f"duplicate timestamps: probe {r['probe_id']} on {r['date']:%d/%m/%Y}", field="Date")
    for c in ("lst_day_c", "sigma0_vv", "sigma0_vh", "incidence_angle_deg", "ndvi", "ndwi", "ta_mean",
              "precip_mm", "dry_days", "ssm"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    # Explicit conversions (DESIGN "convert explicitly"): dB -> linear; metres -> millimetres.
    df["sigma0_vv"] = db_to_linear(df["sigma0_vv"])
    df["sigma0_vh"] = db_to_linear(df["sigma0_vh"])
    df["precip_mm"] = df["precip_mm"] * 1000.0
    # ERA5 accumulations carry tiny negative values from GRIB packing (down to ~-1e-4 mm here): they
    # mean "no rain". Clip those to 0 and say how many; a clearly negative value is an error.
    neg = df["precip_mm"] < 0
    if (df.loc[neg, "precip_mm"] < -PRECIP_NEGATIVE_TOLERANCE_MM).any():
        r = df.loc[df["precip_mm"] < -PRECIP_NEGATIVE_TOLERANCE_MM].iloc[0]
        raise DataError(path, f"negative precipitation {r['precip_mm'] / 1000.0} m on {r['date']:%d/%m/%Y} "
                        f"(probe {r['probe_id']})", field="total_precipitation")
    if neg.any():
        log.info("%s: %d days of slightly negative ERA5 precipitation (>= -%g mm) set to 0", path.name,
                 int(neg.sum()), PRECIP_NEGATIVE_TOLERANCE_MM)
        df.loc[neg, "precip_mm"] = 0.0
    df["network"] = NETWORK
    df["region"] = REGION
    ids = sorted(df["probe_id"].unique())
    probes = pd.DataFrame({
        "probe_id": ids, "network": NETWORK, "region": REGION, "lat": APPROX_LAT, "lon": APPROX_LON,
        "landcover_code": [LANDCOVER.get(i, DEFAULT_LANDCOVER) for i in ids],
    })
    probes["landcover_name"] = probes["landcover_code"].map(CORINE)
    return df, probes
