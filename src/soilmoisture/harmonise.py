"""Harmonisation: raw sources -> one daily row per (probe, day) over the full range + a probe table.

:func:`run` is the ``ingest`` stage: it reads the source chosen by ``data.source`` with the readers in
:mod:`soilmoisture.sources`, calls the pure :func:`harmonise_frames` (no file access; also used by
tests) and writes ``daily.parquet``, ``probes.parquet`` and
``ingest_report.json`` to ``paths.interim`` as one unit (:mod:`soilmoisture.outputs`: the tables renamed into
place first, the report last, listing their sizes and SHA-256 so that readers refuse a mixed set). Both output
folders are checked for writability before anything is read; reader worker processes die with the ingest
process, and temporary files of a killed ingest are removed by the next one.
:func:`read_for_prediction` is the same step for the inputs of ``soilmoisture predict`` (STYLE: one input path).

Data rules (thesis 3.2): frozen days (TS_max <= 0 degC) lose their SSM (3.2.1); SSM above
``quality.ssm_flag_threshold`` is flagged, not dropped (DESIGN); sigma0 outliers are removed per
probe by a z-score threshold, then sigma0 <= sigma0_max (3.2.2; the rule of :mod:`soilmoisture.quality.rules`,
shared with maps); NDVI/NDWI are interpolated at most ``vi_max_gap_days`` from an observation (3.2.3);
dry days counted on the full range (3.2.4).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.config import Params
from soilmoisture.errors import DataError
from soilmoisture.lifetime import die_with_parent, remove_stale
from soilmoisture.outputs import ensure_writable, file_mode, publish
from soilmoisture.quality.rules import sigma0_outliers
from soilmoisture.schema import CORINE, DAILY_COLUMNS, OPTIONAL_DAILY_COLUMNS, PROBE_COLUMNS

log = logging.getLogger(__name__)

# Network -> study region (thesis 2: HOBE Denmark, FMI Finland, REMEDHUS Spain, ICOS Sweden).
NETWORK_REGION = {"HOBE": "denmark", "FMI": "finland", "REMEDHUS": "spain", "ICOS": "sweden"}
KEY = ["probe_id", "date"]
TABLES = ("daily.parquet", "probes.parquet")
REPORT = "ingest_report.json"          # written last: the manifest of the two tables


# ----------------------------------------------------------------------------------------------
# pure part
# ----------------------------------------------------------------------------------------------
def remove_sigma0_outliers(sigma0: pd.Series, probe_id: pd.Series, zscore: float, sigma0_max: float) -> pd.Series:
    """Boolean mask of sigma0 values to remove (thesis 3.2.2), per probe.

    The rule is :func:`soilmoisture.quality.rules.sigma0_outliers` (the one maps apply per pixel): each
    probe's values become one column of a (days, probes) array, NaN-padded; NaN values are never outliers.
    """
    s = sigma0.astype("float64").to_numpy()
    if not len(s):
        return pd.Series(np.zeros(0, bool), index=sigma0.index)
    codes, uniq = pd.factorize(probe_id.to_numpy(), use_na_sentinel=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniq))
    pos = np.arange(len(s)) - np.repeat(np.cumsum(counts) - counts, counts)   # row within its probe's column
    cols = codes[order]
    mat = np.full((int(counts.max()), len(uniq)), np.nan)
    mat[pos, cols] = s[order]
    bad = sigma0_outliers(mat, zscore, sigma0_max)
    out = np.zeros(len(s), bool)
    out[order] = bad[pos, cols]
    return pd.Series(out, index=sigma0.index)


def _interpolate_vi(grid: pd.DataFrame, vi: pd.DataFrame, dates: pd.DatetimeIndex, max_gap: int) -> pd.DataFrame:
    from soilmoisture.sources.sentinel2 import interpolate_limited

    parts = []
    by_probe = {pid: g for pid, g in vi.groupby("probe_id")}
    for pid in grid["probe_id"].unique():
        g = by_probe.get(pid)
        d = pd.DataFrame({"probe_id": pid, "date": dates})
        for c in ("ndvi", "ndwi"):
            d[c] = (np.full(len(dates), np.nan) if g is None
                    else interpolate_limited(dates, g["date"], g[c], max_gap))
        parts.append(d)
    return pd.concat(parts, ignore_index=True)


def _merge(grid: pd.DataFrame, frame: pd.DataFrame | None, what: str) -> pd.DataFrame:
    """Left-join a (probe_id, date) frame onto the grid; its columns replace existing ones."""
    if frame is None or frame.empty:
        return grid
    frame = frame.copy()
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]").dt.normalize()
    frame["probe_id"] = frame["probe_id"].astype(str)
    dup = frame.duplicated(KEY)
    if dup.any():
        r = frame.loc[dup].iloc[0]
        raise DataError(None, f"duplicate timestamps in {what}: probe {r['probe_id']} on {r['date']:%Y-%m-%d}",
                        field=what)
    cols = [c for c in frame.columns if c not in KEY and c not in ("network", "region")]
    grid = grid.drop(columns=[c for c in cols if c in grid.columns])
    return grid.merge(frame[KEY + cols], on=KEY, how="left")


def harmonise_frames(
    probes: pd.DataFrame,
    dates: pd.DatetimeIndex,
    in_situ: pd.DataFrame,
    *,
    sigma0: pd.DataFrame | None = None,
    vi: pd.DataFrame | None = None,
    weather: pd.DataFrame | None = None,
    products: list[pd.DataFrame] | None = None,
    static: pd.DataFrame | None = None,
    sigma0_zscore: float = 2.0,
    sigma0_max: float = 0.35,
    vi_max_gap_days: int = 30,
    dry_day_mm: float = 0.1,
    ssm_flag_threshold: float = 0.5,
    require_ssm: bool = True,
    report: dict[str, Any] | None = None,
    source_reasons: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the daily table (schema.DAILY_COLUMNS + optional columns present) and the probe table.

    ``probes``: probe_id, network, region, lat, lon (+ any PROBE_COLUMNS known); ``in_situ``:
    probe_id, date, ssm (m3/m3), ts_max (degC) and possibly other daily columns (the REMEDHUS export
    brings sigma0, indices and weather); ``sigma0``: probe_id, date, sigma0_vv (linear)
    [, sigma0_vh, incidence_angle_deg]; ``vi``: NDVI/NDWI observations (interpolated here);
    ``weather``: probe_id, date, precip_mm, ta_min/mean/max (dry_days computed here unless given);
    ``products``: frames with ecv_sm / csm; ``static``: probe_id + static PROBE_COLUMNS (override
    values from ``probes`` where they are known). Rows outside ``dates`` are dropped. A probe with no
    valid SSM day is excluded (the reason goes to ``report['probes_excluded']``) unless
    ``require_ssm`` is False (prediction: inputs without a target); ``source_reasons`` (probe -> why the
    reader found no SSM value, e.g. every value carries a removed ISMN flag) words its reason. Free of file access.
    """
    report = {} if report is None else report
    dates = pd.DatetimeIndex(pd.to_datetime(dates)).normalize().astype("datetime64[ns]")
    probes = probes.copy()
    probes["probe_id"] = probes["probe_id"].astype(str)
    if probes["probe_id"].duplicated().any():
        dup = probes.loc[probes["probe_id"].duplicated(), "probe_id"].tolist()
        raise DataError(None, f"probe identifiers are not unique: {dup}", field="probe_id")
    if static is not None and not static.empty:
        st = static.copy()
        st["probe_id"] = st["probe_id"].astype(str)
        st = st.set_index("probe_id")
        probes = probes.set_index("probe_id")
        for c in st.columns:
            vals = st[c].reindex(probes.index)
            probes[c] = vals.where(vals.notna(), probes[c]) if c in probes else vals
        probes = probes.reset_index()

    grid = pd.DataFrame({
        "probe_id": np.repeat(probes["probe_id"].to_numpy(), len(dates)),
        "date": np.tile(dates.to_numpy(), len(probes)),
    })
    meta = probes.set_index("probe_id")
    grid["network"] = grid["probe_id"].map(meta["network"])
    grid["region"] = grid["probe_id"].map(meta["region"])

    grid = _merge(grid, in_situ, "in-situ data")
    grid = _merge(grid, sigma0, "Sentinel-1 data")
    if vi is not None and not vi.empty:
        grid = _merge(grid, _interpolate_vi(grid, vi, dates, vi_max_gap_days), "Sentinel-2 data")
    grid = _merge(grid, weather, "weather data")
    for prod in products or []:
        grid = _merge(grid, prod, "product data")
    for c in DAILY_COLUMNS:
        if c not in grid:
            grid[c] = np.nan
    grid = grid.sort_values(KEY, kind="stable").reset_index(drop=True)

    # --- data rules ---------------------------------------------------------------------------
    ts = grid["ts_max"].astype("float64")
    frozen = (ts <= 0.0).fillna(False).to_numpy(bool)
    ssm = grid["ssm"].astype("float64")
    frozen_removed = int((frozen & ssm.notna()).sum())
    grid["frozen"] = frozen
    grid["ssm"] = ssm.mask(frozen)     # thesis 3.2.1: frozen soil, probe SSM unreliable
    grid["ssm_flag_gt50"] = (grid["ssm"] > ssm_flag_threshold).fillna(False).astype(bool)

    out = remove_sigma0_outliers(grid["sigma0_vv"], grid["probe_id"], sigma0_zscore, sigma0_max)
    grid["sigma0_outlier"] = out.to_numpy(bool)
    grid["sigma0_vv"] = grid["sigma0_vv"].astype("float64").mask(out)
    if "sigma0_vh" in grid:  # same pixel, same bright target: VH of that scene is not trusted either
        grid["sigma0_vh"] = grid["sigma0_vh"].astype("float64").mask(out)

    if grid["dry_days"].isna().all() and grid["precip_mm"].notna().any():
        from soilmoisture.sources.weather import dry_days

        grid["dry_days"] = np.concatenate([dry_days(g.to_numpy(), dry_day_mm)
                                           for _, g in grid.groupby("probe_id", sort=False)["precip_mm"]])

    # --- probes with no valid day ---------------------------------------------------------------
    valid = grid.groupby("probe_id", sort=False)["ssm"].count()
    in_range = ssm.notna().groupby(grid["probe_id"].to_numpy()).sum()
    raw_ok: set[str] = set()
    raw_rows: dict[str, int] = {}
    if in_situ is not None and not in_situ.empty and "ssm" in in_situ:
        raw_ok = set(in_situ.loc[in_situ["ssm"].notna(), "probe_id"].astype(str))
        raw_rows = in_situ["probe_id"].astype(str).value_counts().to_dict()
    excluded = []
    for pid in probes["probe_id"]:
        if valid.get(pid, 0) > 0 or not require_ssm:
            continue
        if pid in (source_reasons or {}):
            reason = f"no SSM value in the source: {source_reasons[pid]}"  # type: ignore[index]
        elif pid not in raw_ok and raw_rows.get(pid, 0):
            reason = f"no SSM value in the source: all {raw_rows[pid]} of its daily SSM values are missing (NaN)"
        elif pid not in raw_ok:
            reason = "no SSM value in the source: it has no in-situ row at all"
        elif in_range.get(pid, 0) == 0:
            reason = f"no SSM observation between {dates[0]:%Y-%m-%d} and {dates[-1]:%Y-%m-%d}"
        else:
            reason = "no valid SSM day: every observed day is frozen (ts_max <= 0 degC)"
        excluded.append({"probe_id": pid, "reason": reason})
        log.warning("probe %s excluded: %s", pid, reason)
    drop = {e["probe_id"] for e in excluded}
    grid = grid[~grid["probe_id"].isin(drop)].reset_index(drop=True)
    probes = probes[~probes["probe_id"].isin(drop)].reset_index(drop=True)

    daily = _typed(grid, {**DAILY_COLUMNS, **{c: v for c, v in OPTIONAL_DAILY_COLUMNS.items() if c in grid}})
    probes_out = _probe_table(probes)
    report.update({
        "probes": int(len(probes_out)),
        "days": int(len(dates)),
        "rows": int(len(daily)),
        "start": f"{dates[0]:%Y-%m-%d}",
        "end": f"{dates[-1]:%Y-%m-%d}",
        "ssm_days": int(daily["ssm"].notna().sum()),
        "frozen_days_removed": frozen_removed,
        "ssm_flagged_days": int(daily["ssm_flag_gt50"].sum()),
        "sigma0_outliers_removed": int(daily["sigma0_outlier"].sum()),
        "probes_excluded": excluded,
    })
    return daily, probes_out


def _typed(df: pd.DataFrame, spec: dict[str, tuple[str, str, str]]) -> pd.DataFrame:
    """Columns of ``spec`` in order with their declared dtypes."""
    out = pd.DataFrame(index=df.index)
    for col, (dtype, _, _) in spec.items():
        s = df[col] if col in df else pd.Series(np.nan, index=df.index)
        if dtype == "string":
            out[col] = s.astype("string")
        elif dtype == "bool":
            out[col] = s.fillna(False).astype(bool)
        elif dtype == "int64":
            out[col] = pd.to_numeric(s, errors="coerce").fillna(-1).astype("int64")
        elif dtype.startswith("datetime64"):
            out[col] = pd.to_datetime(s).astype("datetime64[ns]")
        else:
            out[col] = pd.to_numeric(s, errors="coerce").astype(dtype)
    return out


def _probe_table(probes: pd.DataFrame) -> pd.DataFrame:
    p = probes.copy()
    if "landcover_code" not in p:
        p["landcover_code"] = -1
    p["landcover_code"] = pd.to_numeric(p["landcover_code"], errors="coerce").fillna(-1).astype("int64")
    p["landcover_name"] = p["landcover_code"].map(lambda c: CORINE.get(int(c), "unknown"))
    p["climate_class"] = p["climate_class"].fillna("unknown") if "climate_class" in p else "unknown"
    return _typed(p, PROBE_COLUMNS)


# ----------------------------------------------------------------------------------------------
# stage: file access
# ----------------------------------------------------------------------------------------------
def _region_of(network: str) -> str:
    return NETWORK_REGION.get(str(network).upper(), str(network).lower())


def _manifest_regions(raw: Path) -> dict[str, str]:
    """probe_id -> region from ``manifest.json`` when the simulator lists probes there."""
    f = raw / "manifest.json"
    if not f.is_file():
        return {}
    try:
        man = json.loads(f.read_text())
    except ValueError as e:
        raise DataError(f, f"is not valid JSON: {e}") from None
    probes = man.get("probes") if isinstance(man, dict) else None
    out: dict[str, str] = {}
    if isinstance(probes, list):
        for p in probes:
            if isinstance(p, dict) and "probe_id" in p and "region" in p:
                out[str(p["probe_id"])] = str(p["region"])
    elif isinstance(probes, dict):
        for pid, p in probes.items():
            if isinstance(p, dict) and "region" in p:
                out[str(pid)] = str(p["region"])
    return out


def _job(fn: Any, args: tuple) -> tuple[str, Any]:
    """Run one reader in a worker; platform errors travel back as data (their __init__ takes
    several arguments, which plain exception pickling does not restore)."""
    try:
        return "ok", fn(*args)
    except DataError as e:
        return "error", (e.path, e.problem, e.field)


def _run_jobs(jobs: list[tuple[str, Any, tuple]], workers: int) -> dict[str, Any]:
    """Run reader jobs ``(key, function, args)``, in ``workers`` processes when > 1 (spawned: safe
    with GDAL and pyarrow threads). Results by key; the first DataError is raised again."""
    if workers <= 1 or len(jobs) < 2:
        return {k: fn(*args) for k, fn, args in jobs}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        # die_with_parent: a killed ingest leaves no reader processes behind.
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=die_with_parent) as ex:
            futures = {k: ex.submit(_job, fn, args) for k, fn, args in jobs}
            results = {k: f.result() for k, f in futures.items()}
    except BrokenProcessPool as e:
        # e.g. a __main__ that spawned workers cannot re-import (code piped on stdin): read serially
        log.warning("worker processes failed (%s); reading the rasters in this process", e)
        return _run_jobs(jobs, 1)
    out = {}
    for k, (status, value) in results.items():
        if status == "error":
            raise DataError(value[0], value[1], field=value[2])
        out[k] = value
    return out


def _n_files(folder: Path, pattern: str) -> int:
    """Files matching ``pattern`` in ``folder`` and its area sub-folders."""
    return sum(1 for _ in folder.glob(pattern)) + sum(1 for _ in folder.glob(f"*/{pattern}")) if folder.is_dir() else 0


def expected_crs(raw: Path, region: str) -> tuple[str, str] | None:
    """(CRS, where it comes from) a region's rasters must share: ``manifest.json``, else the region's DTM."""
    f = raw / "manifest.json"
    if f.is_file():
        try:
            crs = (json.loads(f.read_text()).get("regions") or {}).get(region, {}).get("crs")
        except (ValueError, AttributeError):
            crs = None
        if crs:
            return str(crs), f"{f.name}"
    dtm = raw / "static" / f"{region}_dtm.tif"
    if dtm.is_file():
        import rasterio

        try:
            with rasterio.open(dtm) as src:
                return (str(src.crs), f"static/{dtm.name}") if src.crs else None
        except Exception:  # an unreadable DTM reports itself when it is read
            return None
    return None


def _with_expected_crs(e: DataError, raw: Path, regions: set[str]) -> DataError:
    """A raster error about probes outside the raster, with the CRS the region expects when the file's differs."""
    if not e.path or "does not contain probe" not in e.problem:
        return e
    path = Path(e.path)
    try:
        rel = path.relative_to(raw).parts
    except ValueError:
        return e
    region = next((p for p in rel[:-1] if p in regions), None) or \
        next((r for r in regions if rel and rel[-1].startswith(f"{r}_")), None)
    want = expected_crs(raw, region) if region else None
    if want is None:
        return e
    import rasterio

    try:
        with rasterio.open(path) as src:
            got = str(src.crs)
    except Exception:
        return e
    if got == want[0]:
        return e
    return DataError(e.path, f"{e.problem}; the file is in {got} but region {region} expects {want[0]} ({want[1]}): "
                             "reproject it", field=e.field)


def read_rasters(raw: Path, probes: pd.DataFrame, params: Params, workers: int | None = None) -> dict[str, Any]:
    """Sentinel-1/2, static layers, weather and products under ``raw`` for the given probes.

    Each (region, source) is one job; with hundreds of files the jobs run in worker processes
    (``workers``; default: every core, at most 8, when there are >= 400 files, else 1).
    """
    from soilmoisture.sources import products as prod
    from soilmoisture.sources import sentinel1, sentinel2, soilgrids, static, weather

    ing = params.ingest
    jobs: list[tuple[str, Any, tuple]] = []
    n_files = 0
    for region, grp in probes.groupby("region"):
        grp = grp[["probe_id", "lat", "lon"]].reset_index(drop=True)
        for kind, sub, fn, extra in (("s1", "sentinel1", sentinel1.read_sentinel1, (ing.sigma0_units,)),
                                     ("s2", "sentinel2", sentinel2.read_sentinel2, (ing.s2_mask_probability,)),
                                     ("csm", "products/csm", prod.read_csm, ())):
            folder = raw / sub / region
            if folder.is_dir():
                jobs.append((f"{kind}/{region}", fn, (folder, grp, *extra)))
                n_files += _n_files(folder, "*.tif")
        if (raw / "static").is_dir():
            jobs.append((f"static/{region}", static.read_static, (raw / "static", region, grp)))
        if (raw / "soilgrids" / region).is_dir():
            jobs.append((f"soilgrids/{region}", soilgrids.read_soilgrids, (raw / "soilgrids" / region, grp)))
    ecv_dir = raw / "products" / "ecv_sm"
    ecv = prod.ecv_files(ecv_dir) if ecv_dir.is_dir() else []
    n_files += len(ecv)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n_files >= 400 else 1
    chunks = max(1, min(workers, len(ecv)))
    pts = probes[["probe_id", "lat", "lon"]].reset_index(drop=True)
    for i in range(chunks):
        part = ecv[i::chunks]
        if part:
            jobs.append((f"ecv/{i}", prod.read_ecv_list, (part, pts)))
    # Largest jobs first, so the workers finish together.
    size = {"s1": 3, "ecv": 3, "csm": 2, "s2": 1, "static": 0}
    jobs.sort(key=lambda j: -size.get(j[0].split("/")[0], 0))
    t0 = time.perf_counter()
    try:
        res = _run_jobs(jobs, workers)
    except DataError as e:
        raise _with_expected_crs(e, raw, set(probes["region"].astype(str))) from None
    log.info("rasters and products read: %d files, %d jobs, %d worker(s) (%.1f s)", n_files, len(jobs), workers,
             time.perf_counter() - t0)

    def cat(kind: str) -> pd.DataFrame | None:
        parts = [v for k, v in res.items() if k.split("/")[0] == kind and v is not None and not v.empty]
        return pd.concat(parts, ignore_index=True) if parts else None

    static_frame, soil = cat("static"), cat("soilgrids")
    if soil is not None:   # SoilGrids texture replaces the texture of other static layers where it has a value
        static_frame = soil if static_frame is None else _override(static_frame, soil)
    coverage: dict[str, dict[str, int]] = {}
    for k, v in res.items():
        kind = {"s1": "sentinel1", "s2": "sentinel2"}.get(k.split("/")[0])
        if kind and v is not None and v.attrs.get("not_covered"):
            coverage.setdefault(kind, {}).update(v.attrs["not_covered"])
    out: dict[str, Any] = {"sigma0": cat("s1"), "vi": cat("s2"), "static": static_frame, "products": [],
                           "coverage": coverage}
    # Scenes whose probe pixels held impossible sigma0/incidence (masked by the reader), for the report.
    out["sigma0_impossible"] = {f"{k.split('/', 1)[1]}/{name}": n for k, v in res.items()
                                if k.startswith("s1/") and v is not None
                                for name, n in v.attrs.get("impossible_masked", {}).items()}
    for kind in ("csm", "ecv"):
        frame = cat(kind)
        if frame is not None:
            out["products"].append(frame)
    if (raw / "weather" / "stations.csv").is_file():
        wd, stations = weather.read_weather(raw / "weather")
        nearest = weather.nearest_station(probes, stations)
        parts = []
        for pid, station in nearest.items():
            d = wd[wd["station"] == station].drop(columns="station").copy()
            d.insert(0, "probe_id", pid)
            parts.append(d)
        out["weather"] = pd.concat(parts, ignore_index=True) if parts else None
    return out


def _override(base: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``base`` (probe_id + columns) with ``new``'s non-NaN values replacing or adding columns."""
    b = base.set_index("probe_id")
    n = new.set_index("probe_id").reindex(b.index)
    for c in n.columns:
        b[c] = n[c].where(n[c].notna(), b[c]) if c in b else n[c]
    return b.reset_index()


def _read_simulated(raw: Path, params: Params, report: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    from soilmoisture.sources.icos import read_icos
    from soilmoisture.sources.ismn import read_ismn

    if not raw.is_dir():
        raise DataError(raw, "raw data folder not found (run `soilmoisture simulate` first)")
    t0 = time.perf_counter()
    days, probes = [], []
    if (raw / "ismn").is_dir():
        d, p = read_ismn(raw / "ismn", params.path(params.paths.work) / "ismn",
                         params.ingest.ssm_max_depth_m, params.ingest.ismn_quality_flags, report=report)
        days.append(d)
        probes.append(p)
    if (raw / "icos" / "sites.csv").is_file():
        d, p = read_icos(raw / "icos")
        days.append(d)
        probes.append(p)
    if not probes:
        raise DataError(raw, "no in-situ data found (expected ismn/ and/or icos/ folders, see docs/raw-layout.md)")
    probe_df = pd.concat(probes, ignore_index=True)
    log.info("in-situ data read: %d probes (%.1f s)", len(probe_df), time.perf_counter() - t0)
    regions = _manifest_regions(raw)
    probe_df["region"] = [regions.get(pid, _region_of(net)) for pid, net in
                          zip(probe_df["probe_id"], probe_df["network"])]
    return pd.concat(days, ignore_index=True), probe_df, read_rasters(raw, probe_df, params)


def build(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read the configured source and harmonise it: (daily, probes, report). No file is written."""
    from soilmoisture.sources.ismn import read_ismn
    from soilmoisture.sources.remedhus import read_remedhus

    src = params.data.source
    raw = params.path(params.paths.raw)
    extra: dict[str, Any] = {}
    report: dict[str, Any] = {"source": src}
    if src == "simulated":
        in_situ, probes, extra = _read_simulated(raw, params, report)
    elif src == "remedhus":
        in_situ, probes = read_remedhus(params.path(params.data.remedhus_csv))  # type: ignore[arg-type]
    else:  # ismn
        in_situ, probes = read_ismn(params.path(params.data.ismn_archive),  # type: ignore[arg-type]
                                    params.path(params.paths.work) / "ismn",
                                    params.ingest.ssm_max_depth_m, params.ingest.ismn_quality_flags, report=report)
        if probes.empty:
            raise DataError(params.data.ismn_archive, "no station with soil moisture within "
                            f"0-{params.ingest.ssm_max_depth_m} m (ingest.ssm_max_depth_m) and flags "
                            f"{params.ingest.ismn_quality_flags}")
        probes["region"] = [_region_of(n) for n in probes["network"]]
        if raw.is_dir():  # optional rasters in the raw layout
            extra = read_rasters(raw, probes, params)
    masked = extra.get("sigma0_impossible") or {}
    report["sigma0_impossible_masked"] = {"probe_pixels": int(sum(masked.values())), "scenes": masked}
    # Scenes that cover only some probes (issue 24 item 8): those probe-days have no value from them.
    cov = extra.get("coverage") or {}
    report["scenes_not_covering_probes"] = {
        kind: {"probe_days": int(sum(v.values())), "by_probe": dict(sorted(v.items()))}
        for kind, v in sorted(cov.items())}
    ing, q = params.ingest, params.quality
    daily, probe_table = harmonise_frames(
        probes, params.data.dates, in_situ,
        sigma0=extra.get("sigma0"), vi=extra.get("vi"), weather=extra.get("weather"),
        products=extra.get("products"), static=extra.get("static"),
        sigma0_zscore=ing.sigma0_zscore, sigma0_max=ing.sigma0_max, vi_max_gap_days=ing.vi_max_gap_days,
        dry_day_mm=ing.dry_day_mm, ssm_flag_threshold=q.ssm_flag_threshold, report=report,
        source_reasons=(report.get("ismn") or {}).get("no_kept_values"))
    if probe_table.empty:
        ex = report["probes_excluded"]
        more = f" (and {len(ex) - 2} more probes)" if len(ex) > 2 else ""
        raise DataError(None, f"no probe has a valid SSM day between {params.data.start} and {params.data.end}; "
                              + "; ".join(f"probe {e['probe_id']}: {e['reason']}" for e in ex[:2]) + more,
                        field="data.start/data.end")
    return daily, probe_table, report


# Plausible ranges of a daily table's columns in the contract's units (docs/data.md): a value outside says the
# column is in other units (sigma0 in dB, SSM in %, temperature in K), which is refused rather than guessed.
UNIT_CHECKS = {"sigma0_vv": (0.0, None, "linear power ratio (negative values are dB)"),
               "sigma0_vh": (0.0, None, "linear power ratio (negative values are dB)"),
               "ssm": (None, 1.0, "m3/m3 (values above 1 are %)"),
               "precip_mm": (0.0, None, "mm per day"),
               "ts_max": (None, 80.0, "degC (values above 80 are K)"),
               "ta_mean": (None, 80.0, "degC (values above 80 are K)")}


def check_units(daily: pd.DataFrame, path: Path) -> None:
    """DataError naming the file and column when a daily column is outside its unit's plausible range."""
    for col, (lo, hi, unit) in UNIT_CHECKS.items():
        if col not in daily.columns:
            continue
        v = pd.to_numeric(daily[col], errors="coerce")
        if lo is not None and (v < lo).any():
            raise DataError(path, f"negative values (e.g. {v[v < lo].iloc[0]:g}); expected {unit}", field=col)
        if hi is not None and (v > hi).any():
            raise DataError(path, f"values above {hi:g} (e.g. {v[v > hi].iloc[0]:g}); expected {unit}", field=col)


# Columns only harmonise writes: a daily table holding them has been through the data rules already.
HARMONISED_MARKERS = ("frozen", "sigma0_outlier")


def read_for_prediction(path: Path, params: Params, probes_path: Path | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """An input of ``soilmoisture predict`` through the ingest step: (daily, probes, report).

    The same readers and the same data rules as :func:`build` (``ingest.*``, ``quality.ssm_flag_threshold``):
    the REMEDHUS export (``.csv``), an ISMN archive (``.zip`` or folder), or a daily table (Parquet; its probe
    table ``probes_path``, default ``probes.parquet`` beside it). A daily table written by ingest (it holds
    ``frozen`` and ``sigma0_outlier``) is taken as it is: applying the sigma0 z-score twice would remove more.
    The daily range is the input's own; probes without any SSM are kept (they are predicted, not trained on).
    """
    from soilmoisture.sources.ismn import read_ismn
    from soilmoisture.sources.remedhus import read_remedhus

    path = Path(path)
    if not path.exists():
        raise DataError(path, "input file not found")
    suffix = path.suffix.lower()
    report: dict[str, Any] = {"source": str(path)}
    if suffix == ".csv":
        in_situ, probes = read_remedhus(path)
    elif suffix == ".zip" or path.is_dir():
        in_situ, probes = read_ismn(path, params.path(params.paths.work) / "ismn", params.ingest.ssm_max_depth_m,
                                    params.ingest.ismn_quality_flags)
        probes["region"] = [_region_of(n) for n in probes["network"]]
    elif suffix == ".parquet":
        try:
            in_situ = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a non-Parquet file
            raise DataError(path, f"not a readable Parquet file: {e}") from None
        for col in ("probe_id", "date"):
            if col not in in_situ.columns:
                raise DataError(path, "column is missing from the daily table", field=col)
        probes_path = Path(probes_path) if probes_path else path.with_name("probes.parquet")
        if not probes_path.is_file():
            raise DataError(probes_path, "probe table not found (give --probes; columns probe_id, network, region)")
        try:
            probes = pd.read_parquet(probes_path)
        except Exception as e:
            raise DataError(probes_path, f"not a readable Parquet file: {e}") from None
        for col in ("probe_id", "network", "region"):
            if col not in probes.columns:
                raise DataError(probes_path, "column is missing from the probe table", field=col)
        check_units(in_situ, path)
        if all(c in in_situ.columns for c in HARMONISED_MARKERS):
            report["harmonised"] = "input already written by ingest: taken as it is"
            return in_situ, probes, report
    else:
        raise DataError(path, "unsupported input: expected the REMEDHUS export (.csv), an ISMN archive (.zip or "
                              "folder) or a daily table (.parquet)")
    if in_situ.empty:
        raise DataError(path, "no daily value in the input")
    for c in ("lat", "lon"):
        if c not in probes.columns:
            probes[c] = np.nan
    dates = pd.date_range(pd.to_datetime(in_situ["date"]).min(), pd.to_datetime(in_situ["date"]).max(), freq="D")
    ing, q = params.ingest, params.quality
    daily, probe_table = harmonise_frames(
        probes, dates, in_situ, sigma0_zscore=ing.sigma0_zscore, sigma0_max=ing.sigma0_max,
        vi_max_gap_days=ing.vi_max_gap_days, dry_day_mm=ing.dry_day_mm, ssm_flag_threshold=q.ssm_flag_threshold,
        require_ssm=False, report=report)
    return daily, probe_table, report


__all__ = ["build", "file_mode", "harmonise_frames", "read_for_prediction", "read_rasters",
           "remove_sigma0_outliers", "run"]


def run(params: Params) -> dict[str, Any]:
    """The ``ingest`` stage: harmonised tables + report into ``paths.interim``; returns the report."""
    out = ensure_writable(params.path(params.paths.interim), "paths.interim")   # before any reading
    ensure_writable(params.path(params.paths.work), "paths.work")
    remove_stale(out, [*TABLES, REPORT])
    daily, probes, report = build(params)
    publish(out, dict(zip(TABLES, (daily, probes))), REPORT, report)
    log.info("ingest: %d probes x %d days -> %s (%d frozen days removed, %d flagged SSM days, "
             "%d sigma0 outliers, %d impossible sigma0 masked, %d probes excluded)", report["probes"], report["days"],
             out, report["frozen_days_removed"], report["ssm_flagged_days"], report["sigma0_outliers_removed"],
             report["sigma0_impossible_masked"]["probe_pixels"], len(report["probes_excluded"]))
    return report


def contract_markdown() -> str:
    """The column tables of the data contract (docs/data.md), generated from :mod:`soilmoisture.schema`."""
    parts = []
    for title, spec in (("daily.parquet", DAILY_COLUMNS), ("daily.parquet, optional columns", OPTIONAL_DAILY_COLUMNS),
                        ("probes.parquet", PROBE_COLUMNS)):
        parts.append(f"### {title}\n\n| column | dtype | unit | meaning |\n|---|---|---|---|")
        parts += [f"| `{c}` | {d} | {u or '-'} | {m} |" for c, (d, u, m) in spec.items()]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    import sys

    if "--contract" in sys.argv:
        sys.stdout.write(contract_markdown())
