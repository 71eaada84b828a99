"""ICOS half-hourly soil water content and soil temperature (one CSV per site) + a site table.

Thesis 3.2.1: up to four sub-probes per ICOS site are averaged; half-hourly values are resampled to
the daily mean SSM and the daily maximum soil temperature.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.schema import CORINE

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "icos/<SITE>.csv"
SITES_FILE = "icos/sites.csv"
DATE_FORMAT = "%Y%m%d%H%M"       # TIMESTAMP_START / TIMESTAMP_END, UTC
SWC_PATTERN = re.compile(r"^SWC_(\d+)$")   # volumetric soil water content, % (0-100)
TS_PATTERN = re.compile(r"^TS_(\d+)$")     # soil temperature, degC
NODATA = -9999.0
NETWORK = "ICOS"
SITE_COLUMNS = ["site", "lat", "lon", "landcover_code", "clay_pct", "silt_pct", "sand_pct",
                "organic_carbon_pct", "base_saturation_pct", "climate_class"]


def read_icos_site(path: Path) -> pd.DataFrame:
    """One site's CSV -> daily ``date, ssm`` (m3/m3, mean over sub-probes then day), ``ts_max`` (degC)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype={"TIMESTAMP_START": str, "TIMESTAMP_END": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(path, f"cannot read ICOS CSV: {e}") from None
    if "TIMESTAMP_START" not in raw:
        raise DataError(path, "missing column", field="TIMESTAMP_START")
    swc = [c for c in raw.columns if SWC_PATTERN.match(c)]
    ts = [c for c in raw.columns if TS_PATTERN.match(c)]
    if not swc:
        raise DataError(path, "no soil water content column (SWC_1..SWC_4)", field="SWC_*")
    try:
        t = pd.to_datetime(raw["TIMESTAMP_START"], format=DATE_FORMAT)
    except ValueError as e:
        raise DataError(path, f"timestamps are not {DATE_FORMAT}: {e}", field="TIMESTAMP_START") from None
    if t.duplicated().any():
        first = t[t.duplicated()].iloc[0]
        raise DataError(path, f"duplicate timestamps (first: {first:%Y-%m-%d %H:%M})", field="TIMESTAMP_START")
    vals = raw[swc + ts].astype("float64").replace(NODATA, np.nan)
    # Mean over sub-probes first (thesis 3.2.1), then the daily aggregate; % -> m3/m3.
    half_hourly = pd.DataFrame({"ssm": vals[swc].mean(axis=1) / 100.0,
                                "ts": vals[ts].mean(axis=1) if ts else np.nan})
    half_hourly.index = pd.DatetimeIndex(t).normalize()
    grp = half_hourly.groupby(level=0)
    daily = pd.DataFrame({"ssm": grp["ssm"].mean(), "ts_max": grp["ts"].max()})
    daily.index.name = "date"
    return daily.reset_index()


def read_sites(path: Path) -> pd.DataFrame:
    """The ICOS site table -> probe frame (``probe_id`` = site name)."""
    path = Path(path)
    try:
        sites = pd.read_csv(path, dtype={"site": str})
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read ICOS site table: {e}") from None
    missing = [c for c in ("site", "lat", "lon") if c not in sites]
    if missing:
        raise DataError(path, "missing column(s)", field=",".join(missing))
    probes = sites.rename(columns={"site": "probe_id"})
    probes["network"] = NETWORK
    if "landcover_code" in probes:
        probes["landcover_name"] = probes["landcover_code"].map(lambda c: CORINE.get(int(c), "unknown"))
    return probes


def read_icos(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All ICOS sites under ``folder`` (``<SITE>.csv`` + ``sites.csv``) -> (daily, probes)."""
    folder = Path(folder)
    probes = read_sites(folder / "sites.csv")
    frames = []
    for site in probes["probe_id"]:
        f = folder / f"{site}.csv"
        if not f.is_file():
            raise DataError(f, f"ICOS site {site!r} is listed in sites.csv but its file is missing")
        d = read_icos_site(f)
        d["probe_id"] = site
        d["network"] = NETWORK
        frames.append(d)
    daily = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["probe_id", "date"])
    return daily[["probe_id", "date", "network", "ssm", "ts_max"]], probes
