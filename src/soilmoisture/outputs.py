"""Stage outputs: a writable folder checked before any work, and several files published as one unit.

:func:`publish` writes every file under a temporary name first (:func:`soilmoisture.lifetime.temp_name`),
renames the data files into place and writes the *manifest* last: a JSON file that lists each data file with
its size and SHA-256. A run killed between two renames leaves the previous manifest, which no longer matches
the data files: :func:`verify` (called by every reader of the folder) refuses such a mixed set with a clear
error instead of reading old and new tables together. Temporary files of a killed run are removed by the
next :func:`publish` into the same folder.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from soilmoisture.errors import DataError, OutputError
from soilmoisture.lifetime import remove_stale, temp_name

MANIFEST_KEY = "outputs"     # the manifest's entry listing the data files


def file_mode() -> int:
    """Permissions a plain ``open(..., "w")`` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_writable(folder: Path, what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be created in it; else OutputError naming it.

    Called before a stage reads anything, so a read-only output folder fails in a second, not after the work.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_name(folder, "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (read-only folder, immutable attribute or another owner)"
        raise OutputError(e.filename or folder, f"{what} is not writable: {reason}; make it writable or point "
                                                f"the parameter at another folder") from None
    return folder


def digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def _write(obj: Any, path: Path) -> None:
    if isinstance(obj, pd.DataFrame):
        obj.to_parquet(path, index=False)
    elif isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def publish(folder: Path, files: dict[str, Any], manifest: str, doc: dict[str, Any]) -> None:
    """Publish ``files`` (name -> DataFrame, bytes or JSON-able object) and the manifest ``manifest``
    (``doc`` plus ``outputs``: size and SHA-256 of each file) into ``folder`` as one unit.

    Order: every file written under a temporary name; data files renamed into place; manifest renamed last.
    On any error the temporary files are removed and the files already in place keep their old manifest.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder, [*files, manifest])
    tmp: dict[str, Path] = {}
    mode = file_mode()
    try:
        for name, obj in files.items():
            tmp[name] = temp_name(folder, name)
            _write(obj, tmp[name])
        doc = {**doc, MANIFEST_KEY: {name: digest(t) for name, t in tmp.items()}}
        tmp[manifest] = temp_name(folder, manifest)
        _write(doc, tmp[manifest])
        for name, t in tmp.items():   # dicts keep insertion order: the manifest is renamed last
            os.chmod(t, mode)
            os.replace(t, folder / name)
    except OSError as e:
        raise OutputError(e.filename or folder, f"cannot write the outputs: {e.strerror or e}") from None
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)


def verify(folder: Path, doc: dict[str, Any] | None, manifest: str) -> None:
    """Refuse ``folder`` when its data files are not the ones its manifest ``doc`` lists (a mixed set).

    A manifest without ``outputs`` (written before manifests existed) is accepted as it is.
    """
    listed = (doc or {}).get(MANIFEST_KEY)
    if not isinstance(listed, dict):
        return
    for name, want in listed.items():
        path = Path(folder) / name
        if not path.is_file():
            raise DataError(path, f"missing although {manifest} lists it; run the stage that writes it again")
        got = digest(path)
        if got != want:
            raise DataError(path, f"is not the file {manifest} lists ({got['bytes']} bytes, expected {want.get('bytes')}): "
                                  "an interrupted run left old and new outputs mixed; run the stage that writes "
                                  "them again")
