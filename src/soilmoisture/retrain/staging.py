"""Steps 2-3 of retraining: a private copy of the data folders (hard links) with the accepted scenes, ingest
and the quality gate on it, and the project lock that keeps two runs off the same landing files."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soilmoisture.config import Params
from soilmoisture.retrain.landing import LandingFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Staging:
    """A private copy of the data folders for one run, beside ``paths.raw`` (same file system: renames)."""

    root: Path
    raw: Path
    interim: Path
    processed: Path
    work: Path


def _link_or_copy(src: str, dst: str) -> None:
    """Hard link (raw files are replaced, never edited in place), a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage(params: Params, accepted: list[LandingFile], tag: str) -> Staging:
    """Copy ``paths.raw`` (hard links) into a new staging folder and add the accepted scenes (real copies)."""
    raw = params.path(params.paths.raw)
    root = raw.parent / f".retrain-{tag}"
    st = Staging(root, root / "raw", root / "interim", root / "processed", root / "work")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        if raw.is_dir():
            shutil.copytree(raw, st.raw, copy_function=_link_or_copy)
        for f in accepted:
            dst = st.raw / f.rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)   # never write through a hard link into the live raw folder
            shutil.copy2(f.path, dst)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    log.info("staged %s + %d new scenes in %s", raw, len(accepted), root)
    return st


def staged_params(params: Params, st: Staging, data_end: str) -> Params:
    """Params reading and writing the staging folders, with ``data.end`` extended to the new data."""
    paths = dataclasses.replace(params.paths, raw=st.raw, interim=st.interim, processed=st.processed, work=st.work)
    return dataclasses.replace(params, paths=paths, data=dataclasses.replace(params.data, end=data_end))


def staged_scene(st: Staging, accepted: list[LandingFile], path: str | Path | None) -> LandingFile | None:
    """The accepted scene whose staged copy is ``path`` (a reader's DataError names it), else None."""
    if path is None:
        return None
    try:
        rel = Path(path).resolve().relative_to(st.raw.resolve()).as_posix()
    except ValueError:
        return None
    return next((f for f in accepted if f.rel == rel), None)


def unstage(st: Staging, f: LandingFile) -> None:
    """Take one scene back out of the staged raw folder (it is set aside; the others are ingested again)."""
    (st.raw / f.rel).unlink(missing_ok=True)


def cleanup(st: Staging) -> None:
    shutil.rmtree(st.root, ignore_errors=True)


def remove_stale_staging(params: Params) -> int:
    """Staging folders a killed run left behind (call only while holding :func:`exclusive`)."""
    stale = list(params.path(params.paths.raw).parent.glob(".retrain-*"))
    for d in stale:
        log.warning("removing the staging folder of an interrupted run: %s", d)
        shutil.rmtree(d, ignore_errors=True)
    return len(stale)


class Busy(Exception):
    """Another retraining run holds the project's lock."""


class exclusive:
    """One retraining run per project at a time (``<root>/.retrain.lock``, an OS file lock freed on exit or crash).

    A scheduled run that fires while a manual one is still training must not take the same landing files.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".retrain.lock"
        self.fh: Any = None

    def __enter__(self) -> "exclusive":
        import fcntl

        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise Busy(f"another retraining run holds {self.path}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def ingest_and_gate(sparams: Params) -> dict[str, Any]:
    """Ingest and the quality gate on the staged copy; publishes only into the staging folder.

    Returns the gate's summary with the ingest report under ``ingest_report``."""
    from soilmoisture import stages

    report = stages.ingest(sparams)
    return {**stages.validate(sparams), "ingest_report": report}


__all__ = ["Busy", "Staging", "cleanup", "exclusive", "ingest_and_gate", "remove_stale_staging", "stage",
           "staged_params"]
