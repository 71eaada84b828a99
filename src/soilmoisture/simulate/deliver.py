"""New Sentinel scenes for scheduled retraining: the simulator holds the tail of its world back and delivers it.

The simulated world is not prefix-stable (its random streams and the CSM change-detection references depend
on the whole period), so a later, longer simulation would be a *different* world. Instead the simulate stage
generates ``simulate.end + simulate.hold_back_days`` once: the in-situ, weather and product files cover the
whole period (ingest reads only ``data.start..data.end``), while the Sentinel-1/2 scenes after
``simulate.end`` are moved to ``<truth>/held_back/`` (truth is never read by the model). ``soilmoisture
deliver --days N`` then copies the next N days of scenes into the landing folder the way a download would
(a ``.part`` file renamed when complete), so the retraining loop runs end to end on the same world.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path

from soilmoisture.config import Params
from soilmoisture.errors import DataError
from soilmoisture.simulate.writers import scene_day

log = logging.getLogger(__name__)

HELD_BACK = "held_back"                       # under paths.truth
SCENE_DIRS = ("sentinel1", "sentinel2")       # raw layout: <dir>/<region>/[<area>/]<scene>.tif (docs/raw-layout.md)
PART_SUFFIX = ".part"                         # a file still being written (renamed when complete)
REJECTED = "rejected"                         # under paths.landing: batches the gate refused


def scene_date(name: str) -> dt.date | None:
    """Acquisition day of a Sentinel-1/2 scene name the simulator writes (:mod:`.writers`), None for any other.

    The simulator's own naming, not the readers': it writes these files, it does not read them.
    """
    return scene_day(name)


def scene_files(root: Path) -> list[Path]:
    """Scene files (any name) at ``root/sentinel{1,2}/<region>/`` and in its area sub-folders
    (``<region>/<area>/``), sorted; other folders are ignored."""
    root = Path(root)
    return sorted(p for d in SCENE_DIRS for pat in (f"{d}/*/*", f"{d}/*/*/*") for p in root.glob(pat) if p.is_file())


def latest_scene_date(*roots: Path) -> dt.date | None:
    """The latest acquisition day among the scenes under ``roots`` (None if there is none)."""
    days = [d for r in roots for p in scene_files(r) if (d := scene_date(p.name)) is not None]
    return max(days) if days else None


def hold_back(raw: Path, truth: Path, after: dt.date) -> int:
    """Move every scene acquired after ``after`` from ``raw`` to ``truth/held_back`` (same relative path)."""
    n = 0
    for p in scene_files(raw):
        d = scene_date(p.name)
        if d is not None and d > after:
            dst = Path(truth) / HELD_BACK / p.relative_to(raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dst)
            n += 1
    return n


def plan_delivery(held: list[tuple[Path, dt.date]], after: dt.date, days: int) -> list[Path]:
    """The held-back scenes acquired in ``(after, after + days]`` (pure: names and days in, files out)."""
    until = after + dt.timedelta(days=days)
    return [p for p, d in held if after < d <= until]


def deliver(raw: Path, truth: Path, landing: Path, days: int) -> list[Path]:
    """Copy the next ``days`` days of held-back scenes into ``landing``; returns the delivered files.

    "Next" starts after the latest scene already in ``raw`` or waiting in ``landing``, so repeated calls walk
    forward through the held-back period and a call before retraining has picked up the last delivery does
    not deliver the same days twice. Each file is written as ``<name>.part`` and renamed when complete.
    """
    if days < 1:
        raise DataError(None, f"--days must be at least 1, got {days}", field="days")
    store = Path(truth) / HELD_BACK
    held = [(p, d) for p in scene_files(store) if (d := scene_date(p.name)) is not None]
    if not held:
        raise DataError(store, "no held-back scenes: simulate with simulate.hold_back_days > 0 first "
                               "(docs/retrain.md)")
    after = latest_scene_date(raw, landing)
    if after is None:
        raise DataError(raw, "no Sentinel scene in the raw folder or the landing folder: run `soilmoisture "
                             "simulate` first")
    out = []
    for src in plan_delivery(held, after, days):
        dst = Path(landing) / src.relative_to(store)
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(dst.name + PART_SUFFIX)
        shutil.copyfile(src, part)
        os.replace(part, dst)
        out.append(dst)
    last = max(d for _, d in held)
    if out:
        log.info("delivered %d scenes of %s..%s into %s", len(out), after + dt.timedelta(days=1),
                 min(after + dt.timedelta(days=days), last), landing)
    else:
        log.info("nothing left to deliver: the held-back scenes end on %s (latest delivered: %s)", last, after)
    return out


def run(params: Params, days: int) -> list[Path]:
    """``soilmoisture deliver --days N``: next N days of scenes from ``paths.truth`` into ``paths.landing``."""
    return deliver(params.path(params.paths.raw), params.path(params.paths.truth),
                   params.path(params.paths.landing), days)
