"""Step 1 of retraining: which files in the landing folder are complete scenes (and the rejected batches).

A ``.part`` file, a file modified less than ``retrain.min_age_seconds`` ago or one that cannot be read to the
end is left for the next run; a scene already in ``paths.raw`` (same bytes) is a duplicate of an earlier run.
A Sentinel-1 scene that reads but holds zero bytes where data belongs (every band 0, so sigma0 0 and incidence
0 deg: a file allocated at full size whose copy stopped) is ``rejected``: :func:`set_aside` moves that file
alone to ``landing/rejected/<run>/`` with its reason; the rest of the batch goes on.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soilmoisture.simulate.deliver import PART_SUFFIX, REJECTED, scene_files

log = logging.getLogger(__name__)

def scene_date(name: str) -> dt.date | None:
    """Acquisition day from a Sentinel-1/2 file name as the readers declare it (docs/raw-layout.md), else None."""
    from soilmoisture.sources import sentinel1, sentinel2

    for mod in (sentinel1, sentinel2):
        m = mod.NAME_RE.match(name)
        if m:
            return dt.datetime.strptime(m.group(1), mod.DATE_FORMAT).date()
    return None


Status = Literal["accepted", "incomplete", "ignored", "duplicate", "rejected"]
STATUSES: tuple[str, ...] = ("accepted", "incomplete", "ignored", "duplicate", "rejected")


# --- 1. landing folder -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LandingFile:
    """One file in the landing folder and what this run does with it."""

    path: Path
    rel: str                      # relative to the landing folder = its place under paths.raw
    status: Status
    reason: str
    day: dt.date | None = None


def completeness(name: str, age_s: float, min_age_s: float, read_error: str | None,
                 content_error: str | None = None) -> tuple[Status, str]:
    """Pure rule: is a landing file a complete scene? (status, reason). ``read_error`` None = read to the end;
    ``content_error`` None = its values are possible (else the file is rejected, alone)."""
    if name.endswith(PART_SUFFIX) or name.startswith("."):
        return "incomplete", "still being written (temporary name)"
    if scene_date(name) is None:
        return "ignored", "not a Sentinel-1/2 scene name of docs/raw-layout.md"
    if age_s < min_age_s:
        return "incomplete", f"modified {age_s:.0f} s ago (< retrain.min_age_seconds = {min_age_s:.0f})"
    if read_error is not None:
        return "incomplete", f"cannot be read to the end ({read_error}); left for the next run"
    if content_error is not None:
        return "rejected", content_error
    return "accepted", "complete"


def inspect(path: Path) -> tuple[str | None, str | None]:
    """(read error, content error) of a scene file, reading it once; None where there is none.

    Read error: a band does not read (a truncated file fails here, not in ingest). Content error, Sentinel-1
    only: pixels zero in every band (no S1 pixel has incidence 0 deg; a file whose nodata is 0 is exempt).
    """
    import numpy as np
    import rasterio

    from soilmoisture.sources import sentinel1

    try:
        with rasterio.open(path) as src:
            data = src.read()
            nodata = src.nodatavals
    except Exception as e:  # rasterio/GDAL raise several types for a damaged or partial file
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300], None
    if not sentinel1.NAME_RE.match(Path(path).name) or any(nd == 0 for nd in nodata):
        return None, None
    zero = (data == 0).all(axis=0)
    if not zero.any():
        return None, None
    rows = np.flatnonzero(zero.any(axis=1))
    return None, (f"{int(zero.sum())} of {zero.size} pixels (rows {rows[0]}-{rows[-1]} of {zero.shape[0]}) are zero in "
                  "every band (sigma0 0 and incidence 0 deg cannot be: zero-filled bytes, a copy that stopped?); "
                  "set aside, deliver the scene again")


def read_error(path: Path) -> str | None:
    """None if every band of the raster reads; else the reason (a truncated file fails here, not in ingest)."""
    return inspect(path)[0]


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def scan_landing(landing: Path, raw: Path, min_age_s: float, now: float | None = None) -> list[LandingFile]:
    """Classify every file under ``landing/sentinel{1,2}/<region>/`` (``landing/rejected`` is never read)."""
    landing, raw = Path(landing), Path(raw)
    now = time.time() if now is None else now
    out = []
    for p in scene_files(landing):
        rel = p.relative_to(landing).as_posix()
        age = now - p.stat().st_mtime
        # Reading is the expensive test: only for files that pass the cheap ones.
        status, reason = completeness(p.name, age, min_age_s, None)
        if status == "accepted":
            status, reason = completeness(p.name, age, min_age_s, *inspect(p))
        if status == "accepted" and (raw / rel).is_file() and _same_bytes(p, raw / rel):
            status, reason = "duplicate", "already in the raw folder (an earlier run stopped after committing)"
        out.append(LandingFile(p, rel, status, reason, scene_date(p.name)))
    for f in out:
        if f.status != "accepted":
            log.info("landing: %s %s: %s", f.rel, f.status, f.reason)
    return out


def new_data_end(current_end: str, accepted: list[LandingFile]) -> str:
    """``data.end`` after accepting ``accepted``: the newest scene day, never earlier than today's end."""
    days = [f.day for f in accepted if f.day is not None]
    end = dt.date.fromisoformat(current_end)
    return max([end, *days]).isoformat()


def drop_duplicates(files: list[LandingFile]) -> int:
    """Remove landing files already committed to raw (idempotent re-run after a crash); returns how many."""
    n = 0
    for f in files:
        if f.status == "duplicate":
            f.path.unlink(missing_ok=True)
            n += 1
    return n


def _move(landing: Path, files: list[LandingFile], tag: str, reason_lines: list[str]) -> Path:
    dst_root = Path(landing) / REJECTED / tag
    dst_root.mkdir(parents=True, exist_ok=True)
    for f in files:
        dst = dst_root / f.rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f.path.exists():
            os.replace(f.path, dst)
    with open(dst_root / "reason.txt", "a") as out:   # a run may set files aside and then reject the rest
        out.writelines(line.rstrip() + "\n" for line in reason_lines)
    return dst_root


def reject(landing: Path, accepted: list[LandingFile], tag: str, reason: str) -> Path:
    """Move a refused batch to ``landing/rejected/<tag>/`` with ``reason.txt`` (an operator decides later)."""
    dst_root = _move(landing, accepted, tag, [reason])
    log.warning("rejected %d scenes into %s: %s", len(accepted), dst_root, reason)
    return dst_root


def set_aside(landing: Path, files: list[LandingFile], tag: str, reason: str | None = None) -> Path:
    """Move single bad scenes (not their batch) to ``landing/rejected/<tag>/``; ``reason.txt`` gets one line
    per file, ``<file>: <reason>`` (the file's own reason unless ``reason`` is given)."""
    dst_root = _move(landing, files, tag, [f"{f.rel}: {reason or f.reason}" for f in files])
    for f in files:
        log.warning("set aside %s (the rest of the batch goes on): %s", f.rel, reason or f.reason)
    return dst_root


__all__ = ["STATUSES", "LandingFile", "Status", "completeness", "drop_duplicates", "inspect", "new_data_end",
           "read_error", "reject", "scan_landing", "scene_date", "set_aside"]
