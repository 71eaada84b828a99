"""ISMN archives (zip or folder; "header+values" and CEOP formats) through the ``ismn`` package.

Thesis 3.2.1: hourly SSM and soil temperature at 0-0.05 m, resampled to the daily mean SSM and
the daily maximum soil temperature (TS_max). Only values whose ISMN quality flag is in
``ingest.ismn_quality_flags`` (default 'G', good) are used.

Before the ismn package sees an archive, members that would land outside its folder (``../``, absolute
paths: zip-slip) refuse it. Every data file within the depth range is checked for a cut end (an aborted
transfer): a last line without its line end, or a record that stops before the end date in the file
name, is an error naming the file and the line. What the flag filter removed is counted per flag
(``read_ismn(..., report=)``). The package's metadata cache is kept in ``work_dir`` under a key of the
archive's content (zip: member names, sizes and CRCs; folder: names, sizes and modification times), so it
is collected once per archive, not once per run.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.lifetime import pid_alive
from soilmoisture.schema import CORINE

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "<NETWORK>/<STATION>/<NETWORK>_<NETWORK>_<STATION>_<var>_<depth_from>_<depth_to>_<SENSOR>_<YYYYmmdd>_<YYYYmmdd>.stm"
NAME_DATES_RE = re.compile(r"_(\d{8})_(\d{8})\.stm$")   # first and last day of the record (ISMN naming)
DATE_FORMAT = "%Y/%m/%d %H:%M"          # as written in the .stm files (parsed by the ismn package), UTC
VARIABLES = {"soil_moisture": ("ssm", "m3/m3"), "soil_temperature": ("ts", "degC")}
NODATA = None                            # ISMN files have no fill value: missing hours are absent rows
TIME_STEP = "hourly"
# Value column (0-based, whitespace-separated) of each file format; header+values has one header line.
VALUE_TOKEN = {"header_values": 2, "ceop_sep": 12}
HEADER_LINES = {"header_values": 1, "ceop_sep": 0}
CACHE_KEEP = 8                           # metadata caches of this many archives are kept in work_dir

# ISMN station metadata gives ESA CCI land cover (lc_2010), not CORINE. Approximate mapping to the
# nearest CORINE class, used only when no CORINE raster covers the probe (documented in docs/data.md).
ESA_CCI_TO_CORINE = {10: 211, 11: 211, 12: 211, 20: 212, 30: 242, 40: 243, 50: 311, 60: 311, 61: 311, 62: 311,
                     70: 312, 71: 312, 72: 312, 80: 312, 90: 311, 100: 243, 110: 321, 120: 322, 121: 322,
                     122: 322, 130: 321, 140: 322, 150: 322, 152: 322, 153: 322, 160: 411, 170: 411, 180: 411,
                     190: 111, 200: 331, 201: 331, 202: 331, 210: 512, 220: 331}

STATIC_MAP = {"clay_fraction": "clay_pct", "silt_fraction": "silt_pct", "sand_fraction": "sand_pct",
              "organic_carbon": "organic_carbon_pct"}


# --- the archive ------------------------------------------------------------------------------
def unsafe_members(names: list[str]) -> list[str]:
    """Zip member names that would be written outside the archive's folder: absolute, drive-letter or ``..``."""
    bad = []
    for n in names:
        p = n.replace("\\", "/")
        if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or ".." in PurePosixPath(p).parts:
            bad.append(n)
    return bad


def _check_archive(path: Path) -> None:
    if path.is_dir():
        return
    if not path.exists():
        raise DataError(path, "ISMN archive not found (expected a zip file or a folder)")
    if not zipfile.is_zipfile(path):
        first = path.read_bytes()[:60].decode("utf-8", "replace").splitlines()[:1]
        raise DataError(path, "is not an ISMN archive: expected a zip file or a folder of ISMN .stm files "
                              f"(header+values or CEOP format); first line reads {first[0] if first else ''!r}")
    with zipfile.ZipFile(path) as z:
        bad = unsafe_members(z.namelist())
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(path, f"refused: {len(bad)} member(s) would be written outside the archive's folder "
                              f"(absolute or '..' paths, 'zip-slip'): {', '.join(map(repr, bad[:5]))}{more}; "
                              "an ISMN download never holds such paths")


def archive_key(path: Path) -> str:
    """A key of the archive's content: zip member names, sizes and CRCs, or a folder's names, sizes and mtimes."""
    h = hashlib.sha256(path.name.encode() + b"\n")   # the package names its cache file after the archive
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with zipfile.ZipFile(path) as z:
            for i in sorted(z.infolist(), key=lambda i: i.filename):
                h.update(f"{i.filename}\0{i.file_size}\0{i.CRC}\n".encode())
    from importlib.metadata import version

    h.update(f"ismn {version('ismn')}".encode())
    return h.hexdigest()[:20]


def remove_stale(work_dir: Path) -> list[Path]:
    """Remove temporary folders (``.build-<pid>-*``, ``.tmp-<pid>-*``) left by runs whose process is gone."""
    removed = []
    for p in Path(work_dir).glob(".*-*-*"):
        m = re.match(r"^\.(build|tmp)-(\d+)-", p.name)
        if m and p.is_dir() and not pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary folder(s) of interrupted runs from %s", len(removed), work_dir)
    return removed


def _prune_caches(work_dir: Path, keep: str) -> None:
    caches = sorted((p for p in work_dir.glob("meta-*") if p.is_dir() and p.name != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for p in caches[CACHE_KEEP - 1:]:
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _quiet_ismn():
    """The ismn package prints its metadata collection (one log line per file, print(), tqdm bars): to DEBUG."""
    collector, pkg = logging.getLogger("ismn_meta_collector"), logging.getLogger("ismn")
    saved = collector.propagate, pkg.level
    collector.propagate = False         # still written to its own log file (read by _raise_malformed)
    pkg.setLevel(logging.WARNING)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        collector.propagate = saved[0]
        pkg.setLevel(saved[1])
        text = (out.getvalue() + err.getvalue()).strip()
        if text:
            log.debug("ismn package: %s", text[-2000:])


_MALFORMED_RE = re.compile(r"Error loading ismn file (\S+\.stm)\. We will skip this file")


def _raise_malformed(path: Path, meta_dir: Path) -> None:
    """DataError naming the first data file the ismn package reported as malformed (in its log)."""
    bad: list[str] = []
    for log_file in meta_dir.glob("*.log"):
        bad += _MALFORMED_RE.findall(log_file.read_text(errors="replace"))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{path}/{bad[0]}", f"malformed ISMN data file: not in header+values or CEOP format{more}")


def _interface(path: Path, work_dir: Path, temp_root: Path) -> Any:
    """``ISMN_Interface`` with its metadata cache in ``work_dir/meta-<archive key>`` (collected once)."""
    from ismn.interface import ISMN_Interface

    key = f"meta-{archive_key(path)}"
    cache = work_dir / key
    if not any(cache.glob("*.csv")):
        # Collected into a private folder and renamed into place when complete: a killed run leaves no
        # half cache (its folder is removed by the next run, remove_stale).
        build = Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}-", dir=work_dir))
        try:
            with _quiet_ismn():
                ISMN_Interface(str(path), meta_path=str(build), parallel=False, temp_root=str(temp_root))
        except Exception as e:  # the ismn package raises many kinds on bad input
            _raise_malformed(path, build)
            shutil.rmtree(build, ignore_errors=True)
            raise DataError(path, f"the ismn package cannot read this archive: {str(e).splitlines()[0]}") from None
        try:
            _raise_malformed(path, build)
        except DataError:
            shutil.rmtree(build, ignore_errors=True)
            raise
        shutil.rmtree(cache, ignore_errors=True)
        try:
            os.replace(build, cache)
        except OSError:  # another run published the same cache meanwhile
            shutil.rmtree(build, ignore_errors=True)
        _prune_caches(work_dir, key)
    else:
        os.utime(cache)   # most recently used
        log.debug("ISMN metadata from the cache %s", cache)
    with _quiet_ismn():
        return ISMN_Interface(str(path), meta_path=str(cache), parallel=False, temp_root=str(temp_root))


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


# --- one data file -----------------------------------------------------------------------------
def check_complete(raw: bytes, name: str, file_type: str) -> None:
    """Refuse a data file whose end is cut: last line without its line end, or a record ending before the
    end date in the file name (ISMN names a file by the first and last day it holds). Raises DataError
    (path filled in by the caller) with the line number."""
    lines = raw.splitlines()
    n = len(lines)
    problems = []
    if raw and not raw.endswith((b"\n", b"\r")):
        problems.append(f"its last line {n} is incomplete ({lines[-1].decode('ascii', 'replace')[:60]!r})")
    m = NAME_DATES_RE.search(name)
    last_day = None
    for i in range(n - 1 - (1 if problems else 0), HEADER_LINES.get(file_type, 0) - 1, -1):
        tok = lines[i].split()
        if len(tok) >= 2:
            try:
                last_day = pd.Timestamp(pd.to_datetime(b" ".join(tok[:2]).decode(), format=DATE_FORMAT))
                last_line = i + 1
                break
            except ValueError:
                continue
    if m and last_day is not None:
        named_end = pd.to_datetime(m.group(2), format="%Y%m%d")
        if last_day.normalize() < named_end:
            problems.append(f"the record ends {last_day:%Y-%m-%d %H:%M} (line {last_line}) although the file "
                            f"name says it runs to {named_end:%Y-%m-%d} ({(named_end - last_day.normalize()).days} "
                            "days missing)")
    if problems:
        raise DataError(None, "data file is cut short (an aborted transfer?): " + " and ".join(problems)
                        + "; download it again")


def first_bad_line(raw: bytes, file_type: str) -> str:
    """'line N: <text>' of the first data line that is not 'YYYY/mm/dd HH:MM ... value flag', else ''."""
    skip = HEADER_LINES.get(file_type, 1)
    vt = VALUE_TOKEN.get(file_type, 2)
    for i, line in enumerate(raw.splitlines()[skip:], start=skip + 1):
        tok = line.split()
        if not tok:
            continue
        try:
            pd.to_datetime(b" ".join(tok[:2]).decode(), format=DATE_FORMAT)
            float(tok[vt])
            tok[vt + 1].decode("ascii")
        except (ValueError, IndexError, UnicodeDecodeError):
            return f"line {i}: {line.decode('ascii', 'replace')[:80]!r}"
    return ""


def _raw_bytes(path: Path, member: str, zf: zipfile.ZipFile | None) -> bytes:
    return zf.read(member) if zf is not None else (path / member).read_bytes()


# --- the reader ------------------------------------------------------------------------------------
def read_ismn(path: Path, work_dir: Path, max_depth_m: float = 0.05,
              quality_flags: list[str] | tuple[str, ...] = ("G",),
              report: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an ISMN archive into (daily, probes).

    daily: ``probe_id, date, network, ssm`` (m3/m3, daily mean of flagged-good hours), ``ts_max``
    (degC, daily max); probes: ``probe_id, network, lat, lon, landcover_code, landcover_name,
    clay_pct, silt_pct, sand_pct, organic_carbon_pct, climate_class``. ``work_dir`` receives the ismn
    package's metadata cache (never the input folder). Stations without any sensor within
    0..``max_depth_m`` are left out (logged). ``report`` (if given) receives ``ismn``: the flags found
    per variable, the values each filter removed, and ``no_kept_values`` (probe -> why it has no SSM).
    """
    path = Path(path)
    _check_archive(path)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(work_dir)
    # The ismn package extracts zip members into temporary folders: here, not in /tmp, so that a killed
    # run's leftovers are found and removed by the next one.
    temp_root = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=work_dir))
    try:
        return _read(path, work_dir, temp_root, max_depth_m, quality_flags, report)
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


def _read(path: Path, work_dir: Path, temp_root: Path, max_depth_m: float,
          quality_flags: list[str] | tuple[str, ...], report: dict[str, Any] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    if path.is_dir():
        n_files = sum(1 for _ in path.rglob("*.stm"))
    else:
        with zipfile.ZipFile(path) as z:
            n_files = sum(1 for n in z.namelist() if n.endswith(".stm"))
    if n_files == 0:
        raise DataError(path, "no ISMN data file (*.stm) in this archive; give one ISMN zip or unzipped folder")
    # The metadata scan reads every file once per archive (then cached). Serial: the package's parallel mode
    # (threads + a multiprocessing manager process that outlives a killed run) was slower on 112 files on a
    # quiet machine (2.0-2.2 s serial, 2.6-2.9 s parallel; benchmarks/RESULTS.md "ISMN metadata").
    ds = _interface(path, work_dir, temp_root)

    flags = set(quality_flags)
    counts: dict[str, dict[str, Any]] = {}
    no_kept: dict[str, str] = {}
    day_frames: list[pd.DataFrame] = []
    probe_rows: list[dict] = []
    zf = None if path.is_dir() else zipfile.ZipFile(path)
    try:
        for net in ds.collection.iter_networks():
            for st in net.iter_stations():
                series: dict[str, list[pd.Series]] = {}
                network = net.name
                meta_src = None
                ssm_found: dict[str, int] = {}
                for sensor in st.iter_sensors():
                    short = VARIABLES.get(sensor.variable, (None,))[0]
                    if short is None:
                        continue
                    c = counts.setdefault(sensor.variable, {"files": 0, "values": 0, "flags_found": {},
                                                            "removed_by_flag": 0, "files_out_of_depth": 0})
                    # Inclusive depth range (STACK-NOTES): a 0-0.19 m cosmic-ray probe is not a 0-0.05 m sensor.
                    if sensor.depth.start < 0 or sensor.depth.end > max_depth_m + 1e-9:
                        c["files_out_of_depth"] += 1
                        continue
                    member = PurePosixPath(str(sensor.filehandler.file_path)).as_posix()
                    where = f"{path}/{member}"
                    fname = PurePosixPath(member).name
                    # Archives with an extra top folder (SMOSMANIA) report that folder as network: the file
                    # name starts with the real network name.
                    network = fname.split("_")[0] or net.name
                    raw = _raw_bytes(path, member, zf)
                    ftype = getattr(sensor.filehandler, "file_type", "header_values")
                    try:
                        check_complete(raw, fname, ftype)
                    except DataError as e:
                        raise DataError(where, e.problem) from None
                    try:
                        data = sensor.read_data()  # (the .data property would read the file again)
                    except Exception as e:
                        bad = first_bad_line(raw, ftype)
                        what = f"{bad} does not read as 'YYYY/mm/dd HH:MM value flag'" if bad else \
                            f"cannot read ISMN data file ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                        raise DataError(where, what) from None
                    var = sensor.variable
                    flag = data[f"{var}_flag"].astype(str)
                    found = flag.value_counts()
                    for k, v in found.items():
                        c["flags_found"][k] = c["flags_found"].get(k, 0) + int(v)
                    ok = flag.isin(flags)
                    c["files"] += 1
                    c["values"] += int(len(flag))
                    c["removed_by_flag"] += int((~ok).sum())
                    if short == "ssm":
                        for k, v in found.items():
                            ssm_found[k] = ssm_found.get(k, 0) + int(v)
                    vals = data.loc[ok, var].astype("float64")
                    if vals.index.has_duplicates:
                        dup = vals.index[vals.index.duplicated()]
                        stamp = f"{dup[0]:{DATE_FORMAT}}".encode()
                        at = [str(i) for i, line in enumerate(raw.splitlines(), start=1)
                              if b" ".join(line.split()[:2]) == stamp]
                        raise DataError(where, f"duplicate timestamps: {len(dup)} hour(s) appear more than once, the "
                                               f"first {dup[0]:%Y-%m-%d %H:%M} (lines {', '.join(at[:4])})", field=var)
                    series.setdefault(short, []).append(vals)
                    meta_src = sensor.metadata
                if "ssm" not in series:
                    log.info("ISMN station %s/%s has no %s sensor within 0-%.2f m: skipped",
                             net.name, st.name, "soil_moisture", max_depth_m)
                    continue
                if not any(s.notna().any() for s in series["ssm"]):
                    listed = ", ".join(f"{k} ({v})" for k, v in sorted(ssm_found.items(), key=lambda kv: -kv[1]))
                    reason = (f"none of its {sum(ssm_found.values())} soil-moisture values carries a kept quality "
                              f"flag (ingest.ismn_quality_flags = {sorted(flags)}); flags found: {listed or 'none'}")
                    no_kept[str(st.name)] = reason
                    log.warning("ISMN station %s/%s: %s", network, st.name, reason)
                daily = _to_daily(series)
                daily["probe_id"] = str(st.name)
                daily["network"] = network
                day_frames.append(daily)
                probe_rows.append(_probe_row(str(st.name), network, st, meta_src))
    finally:
        if zf is not None:
            zf.close()
    for var, c in counts.items():
        if c["values"] and c["removed_by_flag"]:
            removed = {k: v for k, v in c["flags_found"].items() if k not in flags}
            # A filter that removes most values is worth a warning; the usual few percent are information.
            (log.warning if c["removed_by_flag"] > c["values"] / 2 else log.info)("ISMN %s: %d of %d values removed by the quality-flag filter (kept %s): %s", var,
                        c["removed_by_flag"], c["values"], sorted(flags),
                        ", ".join(f"{k} {v}" for k, v in sorted(removed.items(), key=lambda kv: -kv[1])))
    if report is not None:
        report["ismn"] = {"quality_flags_kept": sorted(flags), "max_depth_m": max_depth_m, "variables": counts,
                          "no_kept_values": no_kept}
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
