"""Scheduled retraining: new Sentinel scenes -> quality gate -> challenger -> champion/challenger decision.

The steps the Prefect flow ``pipelines/retrain.py`` runs as tasks, in this order (docs/retrain.md):

1. :func:`scan_landing` - complete scene files in ``paths.landing`` are accepted; a ``.part`` file, a file
   modified less than ``retrain.min_age_seconds`` ago or one that cannot be read to the end is left for the
   next run.
2. :func:`stage` - a private copy of ``paths.raw`` (hard links) plus the accepted scenes, beside ``raw``.
3. :func:`ingest_and_gate` - ingest and the Great Expectations gate on the staged copy, with ``data.end``
   extended to the newest scene. Bad data (a reader's DataError or a failed gate) -> :func:`reject` moves
   the batch to ``landing/rejected/<run>/``; nothing live has changed.
4. :func:`train_challenger` - the protocol (same params, same probes) on the staged processed data;
   its final model is registered as a new version (the ``champion`` alias does not move).
5. :func:`compare` - both models scored on the same protocol, test probes, repeats and days
   (:func:`matched_mae`); :func:`decide` applies ``retrain.margin_mae``.
6. :func:`commit_data` - staged raw/interim/processed swapped in, ``data.end`` written to the parameter
   file, ``dvc commit -f <retrain.dvc_stages>``; any failure rolls all of it back.
7. :func:`promote` - alias ``champion`` moved to the challenger, only if the decision says so.

A failure before step 6 changes nothing live; the accepted scenes stay in the landing folder for the next run.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from soilmoisture import tracking
from soilmoisture.config import Params, Variant
from soilmoisture.errors import DataError
from soilmoisture.simulate.deliver import PART_SUFFIX, REJECTED, scene_date, scene_files

log = logging.getLogger(__name__)

Status = Literal["accepted", "incomplete", "ignored", "duplicate"]


# --- 1. landing folder -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LandingFile:
    """One file in the landing folder and what this run does with it."""

    path: Path
    rel: str                      # relative to the landing folder = its place under paths.raw
    status: Status
    reason: str
    day: dt.date | None = None


def completeness(name: str, age_s: float, min_age_s: float, read_error: str | None) -> tuple[Status, str]:
    """Pure rule: is a landing file a complete scene? (status, reason). ``read_error`` None = read to the end."""
    if name.endswith(PART_SUFFIX) or name.startswith("."):
        return "incomplete", "still being written (temporary name)"
    if scene_date(name) is None:
        return "ignored", "not a Sentinel-1/2 scene name of docs/raw-layout.md"
    if age_s < min_age_s:
        return "incomplete", f"modified {age_s:.0f} s ago (< retrain.min_age_seconds = {min_age_s:.0f})"
    if read_error is not None:
        return "incomplete", f"cannot be read to the end ({read_error}); left for the next run"
    return "accepted", "complete"


def read_error(path: Path) -> str | None:
    """None if every band of the raster reads; else the reason (a truncated file fails here, not in ingest)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            src.read()
    except Exception as e:  # rasterio/GDAL raise several types for a damaged or partial file
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return None


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
            status, reason = completeness(p.name, age, min_age_s, read_error(p))
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


# --- 2. staging ------------------------------------------------------------------------------------------
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


# --- 3. gate ------------------------------------------------------------------------------------------
def ingest_and_gate(sparams: Params) -> dict[str, Any]:
    """Ingest and the quality gate on the staged copy; publishes only into the staging folder."""
    from soilmoisture import stages

    stages.ingest(sparams)
    return stages.validate(sparams)


def reject(landing: Path, accepted: list[LandingFile], tag: str, reason: str) -> Path:
    """Move a refused batch to ``landing/rejected/<tag>/`` with ``reason.txt`` (an operator decides later)."""
    dst_root = Path(landing) / REJECTED / tag
    dst_root.mkdir(parents=True, exist_ok=True)
    for f in accepted:
        dst = dst_root / f.rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f.path.exists():
            os.replace(f.path, dst)
    (dst_root / "reason.txt").write_text(reason.rstrip() + "\n")
    log.warning("rejected %d scenes into %s: %s", len(accepted), dst_root, reason)
    return dst_root


# --- 4. challenger --------------------------------------------------------------------------------------
def retrain_variant(params: Params) -> str:
    return params.retrain.variant or params.variant.name


def model_name(params: Params) -> str:
    return tracking.registered_model_name(params.tracking.registered_model_prefix, retrain_variant(params))


def train_challenger(sparams: Params) -> str:
    """The protocol run of ``retrain.variant`` on the staged data; returns its parent run id."""
    from soilmoisture.protocol.run import run

    p = dataclasses.replace(sparams, variant=Variant(retrain_variant(sparams)))
    if p.model.from_tuning:
        from soilmoisture.protocol.tune import apply_best

        p = apply_best(p)
    return run(p)


# --- 5. comparison ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str                   # the champion's protocol (parent) run


@dataclass(frozen=True)
class Comparison:
    champion_mae: float | None    # None: no champion, or nothing to compare on
    challenger_mae: float
    n_probes: int
    n_days: int                   # matched (probe, repeat, day) rows with an observation
    note: str


@dataclass(frozen=True)
class Decision:
    outcome: Literal["promoted", "kept", "first_model"]
    promote: bool                 # move the alias (first_model: _register_final already set it)
    improvement: float | None     # champion MAE - challenger MAE (m3/m3), positive = challenger better
    reason: str


def matched_mae(champion: pd.DataFrame, challenger: pd.DataFrame) -> tuple[float, float, int, int]:
    """MAE of both prediction tables on the same (probe, repeat, day) rows, aggregated like ``mean_mae``.

    Rows are matched on ``probe_id, repeat, date``; the observation is the challenger's (the current data),
    and a row counts only when both predictions and the observation exist. Per (probe, repeat) MAE, mean
    over repeats, then mean over probes (as the protocol's ``mean_mae``). Returns (champion, challenger,
    probes, rows); NaN MAEs when nothing matches.
    """
    keys = ["probe_id", "repeat", "date"]
    a = champion[keys + ["ssm_pred"]].rename(columns={"ssm_pred": "champion"})
    b = challenger[keys + ["ssm", "ssm_pred"]].rename(columns={"ssm_pred": "challenger"})
    a["date"], b["date"] = pd.to_datetime(a["date"]), pd.to_datetime(b["date"])
    m = b.merge(a, on=keys, how="inner")
    m = m[np.isfinite(m["ssm"]) & np.isfinite(m["champion"]) & np.isfinite(m["challenger"])]
    if m.empty:
        return float("nan"), float("nan"), 0, 0
    m = m.assign(champion=(m["champion"] - m["ssm"]).abs(), challenger=(m["challenger"] - m["ssm"]).abs())
    per_probe = m.groupby(["probe_id", "repeat"])[["champion", "challenger"]].mean().groupby(level=0).mean()
    return float(per_probe["champion"].mean()), float(per_probe["challenger"].mean()), len(per_probe), len(m)


def decide(champion_mae: float | None, challenger_mae: float, margin: float) -> Decision:
    """Promote iff ``champion_mae - challenger_mae >= margin`` (retrain.margin_mae); no champion: first model."""
    if champion_mae is None:
        return Decision("first_model", False, None, "no champion before this run: the challenger became champion "
                        "when it was registered")
    if not (np.isfinite(champion_mae) and np.isfinite(challenger_mae)):
        return Decision("kept", False, None, "no common scored days with the champion: kept the champion")
    improvement = champion_mae - challenger_mae
    if improvement >= margin - 1e-12:   # tolerance: equal floats must not fall on the wrong side
        return Decision("promoted", True, improvement,
                        f"challenger MAE {challenger_mae:.5f} beats champion {champion_mae:.5f} by "
                        f"{improvement:.5f} >= margin {margin:.5f}")
    return Decision("kept", False, improvement,
                    f"challenger MAE {challenger_mae:.5f} vs champion {champion_mae:.5f}: improvement "
                    f"{improvement:.5f} < margin {margin:.5f}")


def current_champion(params: Params) -> Champion | None:
    """The version holding alias ``champion`` of the retrained model and its protocol run (None if none)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    client = MlflowClient(tracking.tracking_uri(params))
    try:
        mv = client.get_model_version_by_alias(model_name(params), tracking.CHAMPION_ALIAS)
    except MlflowException:
        return None
    parent = client.get_run(mv.run_id).data.tags.get("mlflow.parentRunId", mv.run_id)
    return Champion(str(mv.version), parent)


def registered_version(params: Params, run_id: str) -> str:
    """The model version a protocol run registered (its ``registered_model`` tag is ``<name>/<version>``)."""
    from mlflow.tracking import MlflowClient

    tag = MlflowClient(tracking.tracking_uri(params)).get_run(run_id).data.tags.get(tracking.TAG_REGISTERED, "")
    if "/" not in tag:
        raise DataError(None, f"protocol run {run_id} registered no model (tag {tracking.TAG_REGISTERED!r} missing)")
    return tag.rsplit("/", 1)[1]


def _predictions(client: Any, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        local = client.download_artifacts(run_id, tracking.ART_PREDICTIONS, d)
        return pd.read_parquet(local)


def compare(params: Params, champion: Champion | None, challenger_run: str) -> Comparison:
    """Champion vs challenger on the same protocol, probes, repeats and days (rule and limits: docs/retrain.md)."""
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    client = MlflowClient(tracking.tracking_uri(params))
    chal = _predictions(client, challenger_run)
    chal_mae_all = client.get_run(challenger_run).data.metrics.get("mean_mae", float("nan"))
    if champion is None:
        return Comparison(None, float(chal_mae_all), int(chal["probe_id"].nunique()), len(chal), "no champion")
    champ_tags = client.get_run(champion.run_id).data.tags
    chal_tags = client.get_run(challenger_run).data.tags
    if champ_tags.get(tracking.TAG_MODE) != chal_tags.get(tracking.TAG_MODE):
        return Comparison(float("nan"), float(chal_mae_all), 0, 0,
                          f"protocol modes differ (champion {champ_tags.get(tracking.TAG_MODE)}, challenger "
                          f"{chal_tags.get(tracking.TAG_MODE)}): not comparable")
    a, b, n_probes, n_rows = matched_mae(_predictions(client, champion.run_id), chal)
    return Comparison(a, b, n_probes, n_rows, "matched on the champion's scored (probe, repeat, day) rows")


# --- 6. commit the data -------------------------------------------------------------------------------
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


# --- 7. promotion ------------------------------------------------------------------------------------------
def promote(params: Params, version: str) -> None:
    """Move alias ``champion`` of the retrained model to ``version``."""
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    MlflowClient(tracking.tracking_uri(params)).set_registered_model_alias(model_name(params),
                                                                           tracking.CHAMPION_ALIAS, version)
    log.info("alias %s of %s moved to version %s", tracking.CHAMPION_ALIAS, model_name(params), version)


# --- MLflow record of a retraining run ------------------------------------------------------------------
def run_tag() -> str:
    """A sortable, unique name for one retraining run (staging folder, rejected batch)."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def start_record(params: Params, tag: str) -> str:
    """Open the retraining run (experiment ``soilmoisture/<source>/retrain``); returns its id."""
    from mlflow.tracking import MlflowClient

    exp = tracking.ensure_experiment(params, "retrain")
    client = MlflowClient(tracking.tracking_uri(params))
    champ = current_champion(params)
    run = client.create_run(exp, run_name=f"retrain-{tag}", tags={
        tracking.TAG_KIND: "retrain", tracking.TAG_SOURCE: params.data.source,
        tracking.TAG_VARIANT: retrain_variant(params), tracking.TAG_GIT_COMMIT: tracking.git_commit(params.root),
        tracking.TAG_CHAMPION_BEFORE: f"{model_name(params)}/{champ.version}" if champ else "-"})
    rid = run.info.run_id
    for k, v in {"retrain.margin_mae": params.retrain.margin_mae,
                 "retrain.min_age_seconds": params.retrain.min_age_seconds, "retrain.cron": params.retrain.cron,
                 "retrain.variant": retrain_variant(params), "data.end_before": params.data.end,
                 "protocol.mode": params.protocol.mode, "protocol.max_probes": params.protocol.max_probes}.items():
        client.log_param(rid, k, str(v))
    client.log_dict(rid, tracking.masked_params(params.to_dict()), tracking.ART_CONFIG)
    return rid


def log_scenes(params: Params, rid: str, files: list[LandingFile]) -> None:
    """Counts per status as metrics; every file with its status and reason as ``retrain/scenes.json``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(params))
    for status in ("accepted", "incomplete", "ignored", "duplicate"):
        client.log_metric(rid, f"scenes_{status}", float(sum(f.status == status for f in files)))
    doc = [{"file": f.rel, "status": f.status, "reason": f.reason, "day": f.day.isoformat() if f.day else None}
           for f in files]
    client.log_dict(rid, doc, f"{tracking.ART_RETRAIN_DIR}/scenes.json")


def log_step(params: Params, rid: str, step: str, seconds: float, **tags: str) -> None:
    """One step done: its duration (``step_<name>_seconds``) and any tags linking the step's own runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(params))
    client.log_metric(rid, f"step_{step}_seconds", float(seconds))
    for k, v in tags.items():
        client.set_tag(rid, k, v)


def finish_record(params: Params, rid: str, outcome: str, detail: dict[str, Any], failed: str | None = None) -> None:
    """The decision, its numbers and the resulting champion; status FAILED with ``failure_reason`` if ``failed``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(params))
    client.set_tag(rid, tracking.TAG_DECISION, outcome)
    for k in ("champion_mae", "challenger_mae", "improvement", "margin_mae", "n_matched_probes", "n_matched_days"):
        v = detail.get(k)
        if v is not None and np.isfinite(v):
            client.log_metric(rid, k, float(v))
    champ = current_champion(params)
    client.set_tag(rid, tracking.TAG_CHAMPION_AFTER, f"{model_name(params)}/{champ.version}" if champ else "-")
    client.log_dict(rid, {"decision": outcome, **detail}, f"{tracking.ART_RETRAIN_DIR}/decision.json")
    if failed:
        client.set_tag(rid, tracking.TAG_FAILURE, failed[:4900])
    client.set_terminated(rid, "FAILED" if failed else "FINISHED")
    log.info("retrain decision: %s %s", outcome, json.dumps({k: v for k, v in detail.items() if k != "scenes"},
                                                                default=str))


def tag_version(params: Params, version: str, outcome: str) -> None:
    """Record the decision on the challenger's model version (visible in the registry UI)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking.tracking_uri(params)).set_model_version_tag(model_name(params), version,
                                                                      tracking.MODEL_VERSION_DECISION, outcome)
