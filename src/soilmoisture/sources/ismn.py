"""ISMN archives (zip or folder; "header+values" and CEOP formats) through the ``ismn`` package.

Thesis 3.2.1: hourly SSM and soil temperature at 0-0.05 m, resampled to the daily mean SSM and
the daily maximum soil temperature (TS_max). Only values whose ISMN quality flag is in
``ingest.ismn_quality_flags`` (default 'G', good) are used.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.schema import CORINE

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "<NETWORK>/<STATION>/<NETWORK>_<NETWORK>_<STATION>_<var>_<depth_from>_<depth_to>_<SENSOR>_<YYYYmmdd>_<YYYYmmdd>.stm"
DATE_FORMAT = "%Y/%m/%d %H:%M"          # as written in the .stm files (parsed by the ismn package), UTC
VARIABLES = {"soil_moisture": ("ssm", "m3/m3"), "soil_temperature": ("ts", "degC")}
NODATA = None                            # ISMN files have no fill value: missing hours are absent rows
TIME_STEP = "hourly"

# ISMN station metadata gives ESA CCI land cover (lc_2010), not CORINE. Approximate mapping to the
# nearest CORINE class, used only when no CORINE raster covers the probe (documented in docs/data.md).
ESA_CCI_TO_CORINE = {10: 211, 11: 211, 12: 211, 20: 212, 30: 242, 40: 243, 50: 311, 60: 311, 61: 311, 62: 311,
                     70: 312, 71: 312, 72: 312, 80: 312, 90: 311, 100: 243, 110: 321, 120: 322, 121: 322,
                     122: 322, 130: 321, 140: 322, 150: 322, 152: 322, 153: 322, 160: 411, 170: 411, 180: 411,
                     190: 111, 200: 331, 201: 331, 202: 331, 210: 512, 220: 331}

STATIC_MAP = {"clay_fraction": "clay_pct", "silt_fraction": "silt_pct", "sand_fraction": "sand_pct",
              "organic_carbon": "organic_carbon_pct"}


def _check_archive(path: Path) -> None:
    if path.is_dir():
        return
    if not path.exists():
        raise DataError(path, "ISMN archive not found (expected a zip file or a folder)")
    if not zipfile.is_zipfile(path):
        first = path.read_bytes()[:60].decode("utf-8", "replace").splitlines()[:1]
        raise DataError(path, "is not an ISMN archive: expected a zip file or a folder of ISMN .stm files "
                              f"(header+values or CEOP format); first line reads {first[0] if first else ''!r}")


_MALFORMED_RE = re.compile(r"Error loading ismn file (\S+\.stm)\. We will skip this file")


def _raise_malformed(path: Path, meta_dir: Path) -> None:
    """DataError naming the first data file the ismn package reported as malformed (in its log)."""
    bad: list[str] = []
    for log_file in meta_dir.glob("*.log"):
        bad += _MALFORMED_RE.findall(log_file.read_text(errors="replace"))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{path}/{bad[0]}", f"malformed ISMN data file: not in header+values or CEOP format{more}")


def _meta_value(meta: pd.Series, name: str) -> object:
    try:
        v = meta[name]
        if isinstance(v, pd.Series):
            v = v.iloc[0]
        return v
    except KeyError:
        return None


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def read_ismn(path: Path, work_dir: Path, max_depth_m: float = 0.05,
              quality_flags: list[str] | tuple[str, ...] = ("G",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an ISMN archive into (daily, probes).

    daily: ``probe_id, date, network, ssm`` (m3/m3, daily mean of flagged-good hours), ``ts_max``
    (degC, daily max); probes: ``probe_id, network, lat, lon, landcover_code, landcover_name,
    clay_pct, silt_pct, sand_pct, organic_carbon_pct, climate_class``. ``work_dir`` receives the ismn
    package's metadata cache (never the input folder). Stations without any sensor within
    0..``max_depth_m`` are left out (logged).
    """
    path = Path(path)
    _check_archive(path)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    meta_dir = Path(tempfile.mkdtemp(prefix="ismn_meta_", dir=work_dir))
    try:
        return _read(path, meta_dir, max_depth_m, quality_flags)
    finally:
        shutil.rmtree(meta_dir, ignore_errors=True)


def _read(path: Path, meta_dir: Path, max_depth_m: float,
          quality_flags: list[str] | tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ismn.interface import ISMN_Interface

    if path.is_dir():
        n_files = sum(1 for _ in path.rglob("*.stm"))
    else:
        with zipfile.ZipFile(path) as z:
            n_files = sum(1 for n in z.namelist() if n.endswith(".stm"))
    if n_files == 0:
        raise DataError(path, "no ISMN data file (*.stm) in this archive; give one ISMN zip or unzipped folder")
    try:
        # The metadata scan reads every file: in parallel processes when the archive is large.
        ds = ISMN_Interface(str(path), meta_path=str(meta_dir), parallel=n_files >= 40)
    except Exception as e:  # the ismn package raises many kinds on bad input
        _raise_malformed(path, meta_dir)
        raise DataError(path, f"the ismn package cannot read this archive: {e}") from None
    # The ismn package skips malformed data files with a note in its log: refuse them instead, so
    # a probe never silently loses its record.
    _raise_malformed(path, meta_dir)

    flags = set(quality_flags)
    day_frames: list[pd.DataFrame] = []
    probe_rows: list[dict] = []
    for net in ds.collection.iter_networks():
        for st in net.iter_stations():
            series: dict[str, pd.Series] = {}
            network = net.name
            meta_src = None
            for sensor in st.iter_sensors():
                short = VARIABLES.get(sensor.variable, (None,))[0]
                # Inclusive depth range (STACK-NOTES): a 0-0.19 m cosmic-ray probe is not a 0-0.05 m sensor.
                if short is None or sensor.depth.start < 0 or sensor.depth.end > max_depth_m + 1e-9:
                    continue
                fname = Path(str(sensor.filehandler.file_path)).name
                # Archives with an extra top folder (SMOSMANIA) report that folder as network: the file
                # name starts with the real network name.
                network = fname.split("_")[0] or net.name
                try:
                    data = sensor.read_data()  # (the .data property would read the file again)
                except Exception as e:
                    raise DataError(f"{path}/{sensor.filehandler.file_path}", f"cannot read ISMN data file: {e}") from None
                var = sensor.variable
                ok = data[f"{var}_flag"].astype(str).isin(flags)
                vals = data.loc[ok, var].astype("float64")
                if vals.index.has_duplicates:
                    raise DataError(f"{path}/{sensor.filehandler.file_path}", "duplicate timestamps", field=var)
                series.setdefault(short, []).append(vals)  # type: ignore[arg-type]
                meta_src = sensor.metadata
            if "ssm" not in series:
                log.info("ISMN station %s/%s has no %s sensor within 0-%.2f m: skipped",
                         net.name, st.name, "soil_moisture", max_depth_m)
                continue
            daily = _to_daily(series)
            daily["probe_id"] = str(st.name)
            daily["network"] = network
            day_frames.append(daily)
            probe_rows.append(_probe_row(str(st.name), network, st, meta_src))
    if not probe_rows:
        log.warning("%s: no station with soil moisture within 0-%.2f m", path, max_depth_m)
        return (pd.DataFrame(columns=["probe_id", "date", "network", "ssm", "ts_max"]),
                pd.DataFrame(columns=["probe_id", "network", "lat", "lon"]))
    daily = pd.concat(day_frames, ignore_index=True)
    probes = pd.DataFrame(probe_rows)
    if probes["probe_id"].duplicated().any():
        dup = probes.loc[probes["probe_id"].duplicated(), "probe_id"].tolist()
        raise DataError(path, f"station names are not unique across networks: {dup}", field="station")
    return daily[["probe_id", "date", "network", "ssm", "ts_max"]], probes


def _to_daily(series: dict[str, list[pd.Series]]) -> pd.DataFrame:
    """Hourly -> daily: mean SSM, max soil temperature (thesis 3.2.1). Several sensors: averaged first."""
    out = {}
    for short, parts in series.items():
        s = pd.concat(parts, axis=1).mean(axis=1) if len(parts) > 1 else parts[0]
        s.index = pd.DatetimeIndex(s.index).normalize()
        grp = s.groupby(level=0)
        out["ssm" if short == "ssm" else "ts_max"] = grp.mean() if short == "ssm" else grp.max()
    df = pd.DataFrame(out)
    if "ts_max" not in df:
        df["ts_max"] = np.nan
    df.index.name = "date"
    return df.reset_index()


def _probe_row(probe_id: str, network: str, st: object, meta: object) -> dict:
    m = meta.to_pd() if meta is not None else pd.Series(dtype=object)  # type: ignore[union-attr]
    if isinstance(m.index, pd.MultiIndex):
        m = m.xs("val", level=1) if "val" in m.index.get_level_values(1) else m.droplevel(1)
        m = m[~m.index.duplicated()]
    # An in-situ land cover that is a CORINE code wins (the simulator writes CLC 2018 there);
    # otherwise ESA CCI lc_2010 mapped to the nearest CORINE class (approximate).
    lc_insitu = _num(_meta_value(m, "lc_insitu"))
    lc_raw = _num(_meta_value(m, "lc_2010"))
    if np.isfinite(lc_insitu) and int(lc_insitu) in CORINE:
        code = int(lc_insitu)
    else:
        code = ESA_CCI_TO_CORINE.get(int(lc_raw), -1) if np.isfinite(lc_raw) else -1
    row = {"probe_id": probe_id, "network": network, "lat": float(st.lat), "lon": float(st.lon),  # type: ignore[attr-defined]
           "landcover_code": code, "landcover_name": CORINE.get(code, "unknown"),
           "climate_class": str(_meta_value(m, "climate_KG") or "unknown")}
    for src, dst in STATIC_MAP.items():
        row[dst] = _num(_meta_value(m, src))
    # ISMN's "saturation" is the saturated water content (m3/m3), not base saturation: not mapped.
    row["base_saturation_pct"] = float("nan")
    return row
