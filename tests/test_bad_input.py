"""Bad input and faults, tried as a new user would (issue 24): real files cut, zero-filled, hostile or
read-only, and a real ingest process killed. Each case ends in a one-line error naming the file and the
problem, or in a warning with counts in ``ingest_report.json``; never in a half-written or orphaned file."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from soilmoisture.errors import DataError
from test_sources_layout import write_tiny_raw

RANGE = {"data.start": "2017-01-01", "data.end": "2017-01-20"}


@pytest.fixture(scope="module")
def tiny_raw_src(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("bad_input_raw") / "raw"
    write_tiny_raw(raw)
    return raw


@pytest.fixture
def raw(tiny_raw_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny raw layout (safe to damage)."""
    dst = tmp_path / "raw"
    shutil.copytree(tiny_raw_src, dst)
    return dst


def _sm_file(raw: Path, probe: str = "Canizal") -> Path:
    return next((raw / "ismn" / "REMEDHUS" / probe).glob("*_sm_0.000000_0.050000_*.stm"))


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from soilmoisture.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


# --- 1. an ISMN file cut mid-transfer ------------------------------------------------------------------
def test_an_ismn_file_cut_mid_line_is_refused_naming_the_file_and_line(raw, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    f = _sm_file(raw)
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * 0.6)])      # an aborted transfer: the cut falls inside a line
    n_lines = len(f.read_bytes().splitlines())
    with pytest.raises(DataError) as e:
        read_ismn(raw / "ismn", tmp_path / "work")
    msg = str(e.value)
    assert f.name in msg and "cut short" in msg and f"last line {n_lines} is incomplete" in msg
    assert "file name says it runs to 2017-01-20" in msg and "\n" not in msg


def test_an_ismn_file_cut_at_a_line_end_is_refused_by_its_named_end_date(raw, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    f = _sm_file(raw)
    lines = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(b"".join(lines[:301]))               # header + 300 hours: ends 2017-01-13 11:00
    with pytest.raises(DataError, match=rf"{f.name}: data file is cut short .*the record ends 2017-01-13 11:00 "
                                        r"\(line 301\) although the file name says it runs to 2017-01-20"):
        read_ismn(raw / "ismn", tmp_path / "work")


# --- 2. flags: which were found, what each filter removed; a probe with only removed flags ----------------
def test_flag_counts_reach_the_report_and_an_all_flagged_probe_says_which_flags(raw, make_params, tmp_path):
    from soilmoisture.harmonise import run

    params = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "proj")
    run(params)
    report = json.loads((params.path(params.paths.interim) / "ingest_report.json").read_text())
    sm = report["ismn"]["variables"]["soil_moisture"]
    # 3 probes x 480 hours: Canizal/Carretoro have one 'D02' hour a day, 'Empty' only 'C03'
    assert sm["flags_found"] == {"G": 2 * 460, "D02": 2 * 20, "C03": 480}
    assert sm["removed_by_flag"] == 2 * 20 + 480 and sm["values"] == 3 * 480
    assert sm["files_out_of_depth"] == 3                  # the 0.25 m sensors
    (ex,) = report["probes_excluded"]
    assert ex["probe_id"] == "Empty"
    assert "none of its 480 soil-moisture values carries a kept quality flag" in ex["reason"]
    assert "flags found: C03 (480)" in ex["reason"] and "['G']" in ex["reason"]


def test_an_archive_whose_values_all_carry_removed_flags_names_the_flags(shared_data, make_params, capsys):
    params = make_params({"data.source": "ismn", "data.ismn_archive": str(shared_data / "ismn" / "Data_SMOSMANIA.zip"),
                          "data.start": "2007-01-01", "data.end": "2007-01-31", "paths.raw": "no_raw_here"})
    code, err = _cli(["ingest", "--params", str(params.root / "params.yaml")], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: ")
    assert "probe Narbonne: no SSM value in the source: none of its" in line
    assert "flags found: U (" in line and "D05 (" in line


# --- 5. hostile archive members (zip-slip) ----------------------------------------------------------------
def test_a_zip_with_members_outside_its_folder_is_refused_naming_them(raw, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    z = tmp_path / "in" / "evil.zip"
    z.parent.mkdir()
    good = _sm_file(raw)
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(good, f"REMEDHUS/Canizal/{good.name}")
        zf.writestr("../../escaped.stm", "x\n")
        zf.writestr("/etc/absolute.stm", "x\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as e:
        read_ismn(z, tmp_path / "work")
    msg = str(e.value)
    assert "evil.zip: refused: 2 member(s) would be written outside" in msg
    assert "'../../escaped.stm'" in msg and "'/etc/absolute.stm'" in msg
    after = sorted(p.name for p in tmp_path.rglob("*") if "work" not in p.parts)
    assert after == [n for n in before if n != "work"] and not (tmp_path.parent / "escaped.stm").exists()


# --- messages ---------------------------------------------------------------------------------------------
def test_a_garbage_line_is_named_with_its_number_and_no_pandas_advice(raw, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    f = _sm_file(raw)
    lines = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(b"".join(lines[:50] + [b"garbage here x y\n"] + lines[50:]))
    with pytest.raises(DataError) as e:
        read_ismn(raw / "ismn", tmp_path / "work")
    msg = str(e.value)
    assert msg == f"{f}: line 51: 'garbage here x y' does not read as 'YYYY/mm/dd HH:MM value flag'"


def test_duplicate_ismn_hours_say_which_hour_and_lines(raw, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    f = _sm_file(raw)
    lines = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(b"".join(lines[:50] + [lines[49]] + lines[50:]))   # line 50 (2017-01-03 00:00) twice
    with pytest.raises(DataError, match=r"duplicate timestamps: 1 hour\(s\) appear more than once, the first "
                                        r"2017-01-03 00:00 \(lines 50, 51\)"):
        read_ismn(raw / "ismn", tmp_path / "work")


# --- 11. the ismn package's metadata collection: once per archive, quiet ------------------------------------
def test_ismn_metadata_is_collected_once_per_archive_content_and_quietly(raw, tmp_path, capfd, caplog):
    import logging

    from soilmoisture.sources.ismn import read_ismn

    work = tmp_path / "work"
    with caplog.at_level(logging.INFO):
        a, _ = read_ismn(raw / "ismn", work)
    out = capfd.readouterr()
    assert "Collecting metadata" not in out.out + out.err and "Processed file" not in caplog.text
    caches = [p.name for p in work.iterdir()]
    assert len(caches) == 1 and caches[0].startswith("meta-")        # no temporary folder left
    stamp = (work / caches[0]).stat().st_mtime_ns
    csv = next((work / caches[0]).glob("*.csv"))
    csv_stamp = csv.stat().st_mtime_ns
    b, _ = read_ismn(raw / "ismn", work)
    assert csv.stat().st_mtime_ns == csv_stamp and (work / caches[0]).stat().st_mtime_ns >= stamp  # reused
    assert a.equals(b)
    # another content -> another cache key
    f = _sm_file(raw, "Carretoro")
    f.write_bytes(f.read_bytes())
    import os

    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    read_ismn(raw / "ismn", work)
    assert len([p for p in work.iterdir() if p.name.startswith("meta-")]) == 2


# --- 6. SIGKILL of a real ingest: no orphans, no stale temporary files, never a mixed set --------------------
def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _dead_pid() -> int:
    """The id of a real process that was killed (and reaped): nothing runs under it now."""
    import subprocess

    p = subprocess.Popen(["sleep", "60"])
    p.kill()
    p.wait()
    return p.pid


def _env() -> dict:
    import os
    import sys

    from conftest import ROOT

    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_sigkill_of_ingest_leaves_no_worker_and_the_rerun_no_temporary_file(copy_area):
    import os
    import signal
    import subprocess
    import sys
    import time

    from soilmoisture.lifetime import pid_alive
    from soilmoisture.quality.gate import read_interim

    params = copy_area()
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: ingest reads without worker processes")
    cmd = [sys.executable, "-m", "soilmoisture.cli", "ingest", "--params", str(params.root / "params.yaml")]
    proc = subprocess.Popen(cmd, cwd=params.root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            workers = [c for c in _children(proc.pid)
                       if b"multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes()] if pid_alive(proc.pid) else []
            if len(workers) >= 2:
                break
            time.sleep(0.05)
        assert len(workers) >= 2, f"the reader pool never started: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}"
        time.sleep(0.5)                                   # the workers are reading now
        workers = [c for c in _children(proc.pid) if b"multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes()]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    t0 = time.time()
    while any(pid_alive(w) for w in workers) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not [w for w in workers if pid_alive(w)], "reader workers outlived the killed ingest"

    # A temporary table of a killed ingest and the ismn package's temporary folder of one, by a real dead pid:
    interim, work = params.path(params.paths.interim), params.path(params.paths.work) / "ismn"
    interim.mkdir(parents=True, exist_ok=True)
    dead = _dead_pid()
    (interim / f".daily.parquet.{dead}-0badc0de.tmp").write_bytes(b"\0" * (2 << 20))
    (work / f".tmp-{dead}-abcd1234").mkdir(parents=True)
    (work / f".tmp-{dead}-abcd1234" / "ismn_extract").write_text("x")
    res = subprocess.run(cmd, cwd=params.root, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in interim.iterdir()) == ["daily.parquet", "ingest_report.json", "probes.parquet"]
    assert not [p.name for p in work.iterdir() if not p.name.startswith("meta-")]
    read_interim(interim)                                 # a consistent set (the report lists these tables)


def test_tables_of_two_ingests_mixed_are_refused_by_the_reader(raw, make_params, tmp_path):
    from soilmoisture.harmonise import run
    from soilmoisture.quality.gate import read_interim

    a = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "a")
    b = make_params({**RANGE, "data.end": "2017-01-15", "paths.raw": str(raw)}, root=tmp_path / "b")
    run(a)
    run(b)
    ia, ib = a.path(a.paths.interim), b.path(b.paths.interim)
    read_interim(ia)
    # What a kill between two renames leaves: the new daily table beside the old probes table and old report.
    shutil.copyfile(ib / "daily.parquet", ia / "daily.parquet")
    with pytest.raises(DataError, match=r"daily\.parquet: is not the file ingest_report\.json lists .*interrupted "
                                        r"run left old and new outputs mixed"):
        read_interim(ia)
    run(a)                                                # a rerun publishes one consistent set again
    read_interim(ia)


# --- 7. a read-only output folder -------------------------------------------------------------------------
@pytest.fixture
def read_only():
    """``read_only(folder)`` makes ``folder`` refuse new files (as root: the immutable attribute, since root
    ignores permission bits; otherwise chmod), undone after the test; skips if neither works here."""
    import os
    import stat
    import subprocess

    done: list[tuple[Path, str, int]] = []

    def _make(folder: Path) -> Path:
        mode = folder.stat().st_mode
        how = "chmod"
        if os.geteuid() == 0 and shutil.which("chattr") and \
                subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            how = "chattr"
        else:
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        done.append((folder, how, mode))
        try:
            (folder / "probe").write_text("x")
        except OSError:
            return folder
        (folder / "probe").unlink()
        pytest.skip("no means to make a folder read-only here (root without chattr)")

    yield _make
    for folder, how, mode in done:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(mode)


def test_a_read_only_interim_folder_fails_up_front_in_one_line(raw, make_params, tmp_path, read_only, capsys, caplog):
    import logging

    params = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "proj")
    interim = params.path(params.paths.interim)
    interim.mkdir(parents=True)
    read_only(interim)
    with caplog.at_level(logging.INFO):
        code, err = _cli(["ingest", "--params", str(params.root / "params.yaml")], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {interim}") and "paths.interim is not writable" in line
    assert "in-situ data read" not in caplog.text          # nothing was read first
    assert list(interim.iterdir()) == []


def test_an_os_error_on_outputs_is_one_line_naming_the_file(tmp_path, make_params, read_only, capsys):
    params = make_params(root=tmp_path / "proj")
    raw_parent = params.path(params.paths.raw).parent
    raw_parent.mkdir(parents=True, exist_ok=True)
    read_only(raw_parent)
    code, err = _cli(["simulate", "--params", str(params.root / "params.yaml")], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {raw_parent}") and ("not permitted" in line or "denied" in line)


# --- 3. a zero-filled scene; 4. a minority of negative sigma0 -----------------------------------------------
def zero_filled_copy(src: Path, dst: Path) -> Path:
    """What a copy that allocated the file at full size and stopped half-way leaves: the GeoTIFF (its header
    and directory first, as GDAL's CreateCopy with COPY_SRC_OVERVIEWS writes it) with the second half zero."""
    import rasterio.shutil

    full = dst.with_name(dst.name + ".full")
    rasterio.shutil.copy(src, full, driver="GTiff", COPY_SRC_OVERVIEWS="YES")
    data = full.read_bytes()
    full.unlink()
    dst.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    return dst


def _zero_probe_pixels(path: Path) -> int:
    import rasterio

    from test_sources_layout import PIXELS

    with rasterio.open(path) as s:
        d = s.read()
    return sum(bool((d[:, r, c] == 0).all()) for r, c in PIXELS.values())


def test_a_zero_filled_scene_is_set_aside_alone_by_the_landing_scan(raw, tmp_path):
    import os
    import time

    from soilmoisture.retrain import scan_landing, set_aside

    landing = tmp_path / "landing"
    region = landing / "sentinel1" / "spain"
    region.mkdir(parents=True)
    good, bad = sorted((raw / "sentinel1" / "spain").glob("*.tif"))[:2]
    shutil.copy(good, region / good.name)
    zero_filled_copy(bad, region / bad.name)
    old = time.time() - 3600
    for p in region.iterdir():
        os.utime(p, (old, old))
    files = {f.path.name: f for f in scan_landing(landing, tmp_path / "no_raw", min_age_s=300)}
    assert files[good.name].status == "accepted"
    f = files[bad.name]
    assert f.status == "rejected" and "are zero in every band" in f.reason and "zero-filled" in f.reason
    where = set_aside(landing, [f], "run-1")
    assert (where / "sentinel1" / "spain" / bad.name).is_file() and not (region / bad.name).exists()
    assert (region / good.name).is_file()                               # the rest of the batch stays
    assert (where / "reason.txt").read_text().startswith(f"sentinel1/spain/{bad.name}: ")


def test_ingest_masks_impossible_sigma0_and_counts_it_per_scene(raw, make_params, tmp_path):
    import rasterio

    from soilmoisture.harmonise import run
    from test_sources_layout import PIXELS

    s1 = raw / "sentinel1" / "spain"
    zf = s1 / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif"        # its day has an ascending scene as well
    tmp = tmp_path / zf.name
    shutil.move(zf, tmp)
    zero_filled_copy(tmp, zf)
    n_zero = _zero_probe_pixels(zf)
    assert n_zero >= 1
    neg = s1 / "S1A_IW_GRDH_1SDV_20170109T062000_DSC.tif"
    with rasterio.open(neg, "r+") as ds:      # the noise floor: one slightly negative VV at Canizal
        vv = ds.read(1)
        vv[PIXELS["Canizal"]] = -0.0005
        ds.write(vv, 1)
    params = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "proj")
    run(params)
    out = params.path(params.paths.interim)
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["sigma0_impossible_masked"] == {"probe_pixels": n_zero + 1,
                                                  "scenes": {f"spain/{zf.name}": n_zero, f"spain/{neg.name}": 1}}
    import pandas as pd

    daily = pd.read_parquet(out / "daily.parquet").set_index(["probe_id", "date"])
    assert (daily["sigma0_vv"].dropna() > 0).all() and (daily["incidence_angle_deg"].dropna() > 0).all()
    # Carretoro's pixel is zero in the zero-filled scene: that day holds the ascending scene's value alone.
    assert daily.loc[("Carretoro", pd.Timestamp("2017-01-03")), "sigma0_vv"] == pytest.approx(0.24)
    assert daily.loc[("Carretoro", pd.Timestamp("2017-01-03")), "incidence_angle_deg"] == pytest.approx(38.0)
    assert pd.isna(daily.loc[("Canizal", pd.Timestamp("2017-01-09")), "sigma0_vv"])
    assert daily.loc[("Carretoro", pd.Timestamp("2017-01-09")), "sigma0_vv"] == pytest.approx(0.30)


def test_a_scene_in_the_wrong_crs_says_which_crs_the_region_expects(raw, make_params, tmp_path, capsys):
    import rasterio

    from test_sources_layout import write_tif

    victim = sorted((raw / "sentinel1" / "spain").glob("*.tif"))[0]
    with rasterio.open(victim) as src:
        data, tags, transform = src.read(), src.tags(), src.transform
    write_tif(victim, data, "float32", nodata=float("nan"), tags=tags, transform=transform, crs="EPSG:32631")
    params = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "proj")
    code, err = _cli(["ingest", "--params", str(params.root / "params.yaml")], capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith(f"error: {victim}: ")
    assert line.endswith("the file is in EPSG:32631 but region spain expects EPSG:32630 (static/spain_dtm.tif): "
                         "reproject it")


def test_a_probe_whose_source_values_are_all_missing_is_reported_as_such():
    import numpy as np
    import pandas as pd

    from soilmoisture.harmonise import harmonise_frames

    probes = pd.DataFrame({"probe_id": ["a", "b", "c"], "network": "X", "region": "spain", "lat": 41.3, "lon": -5.4})
    rows = pd.DataFrame({"probe_id": ["a", "a", "b"], "date": pd.to_datetime(["2017-01-02", "2017-01-03", "2017-01-02"]),
                         "ssm": [np.nan, np.nan, 0.25], "ts_max": [4.0, 4.0, 4.0]})
    report: dict = {}
    harmonise_frames(probes, pd.date_range("2017-01-01", "2017-01-05"), rows, report=report)
    reasons = {e["probe_id"]: e["reason"] for e in report["probes_excluded"]}
    assert reasons == {"a": "no SSM value in the source: all 2 of its daily SSM values are missing (NaN)",
                       "c": "no SSM value in the source: it has no in-situ row at all"}


def test_a_read_only_processed_folder_stops_validate_before_the_checks(make_params, tmp_path, read_only, capsys):
    params = make_params(root=tmp_path / "proj")
    parent = params.path(params.paths.processed).parent
    parent.mkdir(parents=True, exist_ok=True)
    read_only(parent)
    code, err = _cli(["validate", "--params", str(params.root / "params.yaml")], capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith(f"error: {parent}") and "the folder of paths.processed is not writable" in line
