"""Processes and temporary files that must not outlive the run that made them.

A killed run (SIGKILL, out of memory, a closed terminal) runs no ``finally``: its worker processes and
half-written files stay behind unless they were made to be found. Two habits, used by ingest:

* worker processes call :func:`die_with_parent` first: the kernel kills them when their parent dies
  (Linux ``PR_SET_PDEATHSIG``), and a watchdog thread exits them where that is not available;
* temporary names carry the creating process id (:func:`temp_name`), so the next run removes those of
  dead processes (:func:`remove_stale`) and never touches the files of a run still going.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_S = 1.0


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent is a zombie: as good as dead
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def die_with_parent() -> None:
    """Make this (worker) process end when its parent process ends, even by SIGKILL.

    A ``ProcessPoolExecutor``/``multiprocessing`` initializer. Linux: the kernel sends SIGKILL at the parent's
    death (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and as a second guard, a daemon thread polls the parent id
    every second and exits the process when it changes (the orphan was re-parented).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:  # pragma: no cover - no glibc: the watchdog below still works
            pass
    if os.getppid() != parent or parent == 1:   # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_WATCH_INTERVAL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def temp_name(folder: Path, name: str, suffix: str = ".tmp") -> Path:
    """A hidden temporary path beside ``folder/name``: ``.<name>.<pid>-<random>.tmp``."""
    return Path(folder) / f".{name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[A-Za-z]+)?$")
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")   # tempfile.mkstemp names (no pid)
LEGACY_MAX_AGE_S = 24 * 3600.0


def remove_stale(folder: Path, names: list[str] | tuple[str, ...]) -> list[Path]:
    """Remove temporary files/folders of ``names`` in ``folder`` left by processes that no longer run.

    Temporary names made by :func:`temp_name` carry their process id; older, pid-less ``mkstemp`` names
    (``.<name>.XXXXXXXX.tmp``) are removed once a day old. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        if m and m.group("name") in names:
            stale = not pid_alive(int(m.group("pid")))
        else:
            m = _LEGACY_RE.match(p.name)
            stale = bool(m and m.group("name") in names) and now - p.lstat().st_mtime > LEGACY_MAX_AGE_S
        if not stale:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.warning("removed %d temporary file(s) left in %s by an interrupted run: %s", len(removed), folder,
                    ", ".join(p.name for p in removed[:5]))
    return removed
