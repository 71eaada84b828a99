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
