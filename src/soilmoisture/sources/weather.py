"""Weather stations (hourly or daily CSV): daily precipitation sum, air temperature min/mean/max.

Thesis 3.2.4: readings resampled to daily TA_min/TA_mean/TA_max and the precipitation sum; the
number of consecutive dry days (< 0.1 mm) is added (:func:`dry_days`, computed on the full range).
Each probe takes its region's nearest station (:func:`nearest_station`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "weather/<region>_<STATION>.csv"
STATIONS_FILE = "weather/stations.csv"      # station,region,lat,lon,resolution (hourly|daily)
DATE_FORMAT = "ISO 8601"                    # column `time`, UTC
COLUMNS = {"time": "", "precip_mm": "mm per time step", "ta_c": "degC"}
NODATA = "empty cell / NaN"


def read_station(path: Path) -> pd.DataFrame:
    """One station file (hourly or daily) -> daily ``date, precip_mm, ta_min, ta_mean, ta_max``.

    For daily input ta_min = ta_mean = ta_max = the day's value unless the file has ta_min/ta_max.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(path, f"cannot read weather CSV: {e}") from None
    for c in ("time", "precip_mm", "ta_c"):
        if c not in raw:
            raise DataError(path, "missing column", field=c)
    try:
        t = pd.to_datetime(raw["time"], utc=True).dt.tz_localize(None)
    except (ValueError, TypeError) as e:
        raise DataError(path, f"times are not ISO 8601: {e}", field="time") from None
    if t.duplicated().any():
        raise DataError(path, f"duplicate timestamps (first: {t[t.duplicated()].iloc[0]})", field="time")
    df = pd.DataFrame({"precip_mm": pd.to_numeric(raw["precip_mm"], errors="coerce").to_numpy(),
                       "ta": pd.to_numeric(raw["ta_c"], errors="coerce").to_numpy()},
                      index=pd.DatetimeIndex(t).normalize())
    g = df.groupby(level=0)
    # min_count=1: a day with no reading stays NaN instead of becoming 0 mm.
    daily = pd.DataFrame({"precip_mm": g["precip_mm"].sum(min_count=1), "ta_min": g["ta"].min(),
                          "ta_mean": g["ta"].mean(), "ta_max": g["ta"].max()})
    if "ta_min_c" in raw and "ta_max_c" in raw:
        daily["ta_min"] = pd.Series(pd.to_numeric(raw["ta_min_c"], errors="coerce").to_numpy(),
                                    index=df.index).groupby(level=0).min()
        daily["ta_max"] = pd.Series(pd.to_numeric(raw["ta_max_c"], errors="coerce").to_numpy(),
                                    index=df.index).groupby(level=0).max()
    daily.index.name = "date"
    return daily.reset_index()


def read_weather(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All stations under ``folder`` -> (daily per station with ``station`` column, station table)."""
    folder = Path(folder)
    sfile = folder / "stations.csv"
    try:
        stations = pd.read_csv(sfile, dtype={"station": str, "region": str})
    except (OSError, ValueError) as e:
        raise DataError(sfile, f"cannot read station table: {e}") from None
    for c in ("station", "region", "lat", "lon"):
        if c not in stations:
            raise DataError(sfile, "missing column", field=c)
    frames = []
    for st in stations.itertuples():
        f = folder / f"{st.region}_{st.station}.csv"
        if not f.is_file():
            raise DataError(f, f"weather station {st.station!r} is listed in stations.csv but its file is missing")
        d = read_station(f)
        d.insert(0, "station", st.station)
        frames.append(d)
    daily = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["station", "date"])
    return daily, stations


def nearest_station(probes: pd.DataFrame, stations: pd.DataFrame) -> pd.Series:
    """For each probe (``probe_id, region, lat, lon``) the nearest station of its region (great circle).

    A probe whose region has no station gets the nearest station overall (logged).
    """
    out = {}
    for p in probes.itertuples():
        cand = stations[stations["region"] == p.region]
        if cand.empty:
            log.warning("no weather station in region %s: probe %s takes the nearest overall", p.region, p.probe_id)
            cand = stations
        if cand.empty:
            out[p.probe_id] = None
            continue
        lat1, lon1 = np.radians(p.lat), np.radians(p.lon)
        lat2, lon2 = np.radians(cand["lat"].to_numpy(float)), np.radians(cand["lon"].to_numpy(float))
        a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
        out[p.probe_id] = cand["station"].iloc[int(np.argmin(a))]
    return pd.Series(out, name="station")


def dry_days(precip_mm: np.ndarray, dry_day_mm: float) -> np.ndarray:
    """Consecutive days with precipitation < ``dry_day_mm`` up to and including each day (thesis 3.2.4).

    A wet day is 0; a missing day (NaN) is NaN and restarts the count.
    """
    p = np.asarray(precip_mm, dtype=float)
    out = np.full(p.shape, np.nan)
    run = 0
    for i, v in enumerate(p):
        if np.isnan(v):
            # After a gap the count restarts: the length of the dry spell before it is unknown.
            run = 0
            continue
        run = run + 1 if v < dry_day_mm else 0
        out[i] = run
    return out
