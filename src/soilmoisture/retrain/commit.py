"""Step 6 of retraining: the staged raw/interim/processed folders swapped in, ``data.end`` written to the
parameter file and ``dvc commit -f <retrain.dvc_stages>``, as one unit: any failure rolls all of it back."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from soilmoisture.config import Params
from soilmoisture.errors import DataError
from soilmoisture.retrain.landing import LandingFile
from soilmoisture.retrain.staging import Staging

log = logging.getLogger(__name__)


def set_yaml_scalar(text: str, section: str, key: str, value: str) -> str:
    """Replace ``<section>.<key>``'s scalar in a YAML text, keeping comments and layout; checked by re-parsing."""
    import yaml

    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(rf"^{re.escape(section)}:\s*(#.*)?$", ln)), None)
    if start is None:
        raise DataError(None, f"section {section!r} not found in the parameter file", field=section)
    for i in range(start + 1, len(lines)):
        if re.match(r"^\S", lines[i]):
            break
        m = re.match(rf"^(\s+{re.escape(key)}:\s*)(\"[^\"]*\"|'[^']*'|[^\s#]+)(.*)$", lines[i], re.S)
        if m:
            lines[i] = f'{m.group(1)}"{value}"{m.group(3)}'
            out = "".join(lines)
            before, after = yaml.safe_load(text), yaml.safe_load(out)
            before[section][key] = value
            if before != after:  # pragma: no cover - the edit touched something else
                raise DataError(None, f"could not set {section}.{key} safely in the parameter file")
            return out
    raise DataError(None, f"key {section}.{key} not found in the parameter file", field=f"{section}.{key}")


def _swap_in(staged: Path, live: Path, tag: str) -> Path | None:
    """Rename ``staged`` to ``live``; the previous ``live`` is kept aside (returned) for a rollback."""
    old = live.parent / f".{live.name}.old-{tag}"
    live.parent.mkdir(parents=True, exist_ok=True)
    if live.exists():
        os.replace(live, old)
    try:
        os.replace(staged, live)
    except OSError:
        if old.exists():
            os.replace(old, live)
        raise
    return old if old.exists() else None


def dvc_commit(root: Path, stages: list[str]) -> str:
    """``dvc commit -f <stages>`` in ``root`` (records the data and params in dvc.lock); '' if no DVC here."""
    if not stages:
        return ""
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        log.warning("no DVC project at %s (dvc.yaml/.dvc missing): the new data version is not recorded", root)
        return ""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", *stages], cwd=root, env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise DataError(root / "dvc.yaml", f"dvc commit -f {' '.join(stages)} failed: {' | '.join(tail)}")
    return f"dvc commit -f {' '.join(stages)}"


def commit_data(params: Params, params_file: Path, st: Staging, data_end: str, tag: str,
                accepted: list[LandingFile]) -> dict[str, Any]:
    """Make the staged data live as one unit: folders, ``data.end``, ``dvc commit``; rolled back on failure.

    Afterwards the accepted scenes are removed from the landing folder (they now live in ``paths.raw``).
    """
    params_file = Path(params_file)
    text = params_file.read_text()
    lock = params.root / "dvc.lock"
    lock_text = lock.read_text() if lock.is_file() else None
    new_text = set_yaml_scalar(text, "data", "end", data_end) if data_end != params.data.end else text
    pairs = [(st.raw, params.path(params.paths.raw)), (st.interim, params.path(params.paths.interim)),
             (st.processed, params.path(params.paths.processed))]
    done: list[tuple[Path, Path, Path | None]] = []
    try:
        if new_text != text:
            _atomic_write(params_file, new_text)
        for staged, live in pairs:
            done.append((staged, live, _swap_in(staged, live, tag)))
        versioned = dvc_commit(params.root, params.retrain.dvc_stages)
    except BaseException:
        log.error("committing the new data failed: rolling back %s", ", ".join(str(live) for _, live, _ in done))
        for staged, live, old in reversed(done):
            if live.exists():
                os.replace(live, staged)
            if old is not None:
                os.replace(old, live)
        if params_file.read_text() != text:
            _atomic_write(params_file, text)
        if lock_text is not None and lock.is_file() and lock.read_text() != lock_text:
            _atomic_write(lock, lock_text)
        raise
    for _, _, old in done:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    for f in accepted:
        f.path.unlink(missing_ok=True)
    log.info("new data committed: data.end %s -> %s; %s", params.data.end, data_end, versioned or "no DVC")
    return {"data_end_before": params.data.end, "data_end": data_end, "dvc": versioned}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = ["commit_data", "dvc_commit", "set_yaml_scalar"]
