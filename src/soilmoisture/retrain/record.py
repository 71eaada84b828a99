"""The MLflow record of a retraining run (experiment ``soilmoisture/<source>/retrain``, kind ``retrain``): its
parameters, the scene list, each step's duration, the decision and the resulting champion."""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import numpy as np

from soilmoisture import tracking
from soilmoisture.config import Params
from soilmoisture.retrain.challenger import current_champion, model_name, retrain_variant
from soilmoisture.retrain.landing import STATUSES, LandingFile

log = logging.getLogger(__name__)


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
    for status in STATUSES:
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
    for k, v in (detail.get("old_days") or {}).items():   # the champion's old scored days, beside the new days
        if v is not None and np.isfinite(v):
            client.log_metric(rid, f"old_days_{k}", float(v))
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


__all__ = ["finish_record", "log_scenes", "log_step", "run_tag", "start_record", "tag_version"]
