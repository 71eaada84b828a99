"""Step 4 of retraining: the challenger (the protocol run of ``retrain.variant`` on the staged data) and the
current champion in the MLflow model registry."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from soilmoisture import tracking
from soilmoisture.config import Params, Variant
from soilmoisture.errors import DataError


def retrain_variant(params: Params) -> str:
    return params.retrain.variant or params.variant.name


def model_name(params: Params) -> str:
    return tracking.registered_model_name(params.tracking.registered_model_prefix, retrain_variant(params),
                                          mode=params.protocol.mode)


def train_challenger(sparams: Params, trained_until: str | None = None) -> str:
    """The protocol run of ``retrain.variant`` on the staged data; returns its parent run id.

    Known site: the challenger trains on every day up to ``trained_until`` (the live ``data.end``) and is tested on
    the newly arrived days after it (``protocol.split_date`` moves there), which the champion never saw either.
    """
    import datetime as dt

    from soilmoisture.protocol.run import run

    p = dataclasses.replace(sparams, variant=Variant(retrain_variant(sparams)))
    if p.protocol.mode == "known_site" and trained_until is not None:
        split = (dt.date.fromisoformat(trained_until) + dt.timedelta(days=1)).isoformat()
        if split <= p.data.end:
            p = dataclasses.replace(p, protocol=dataclasses.replace(p.protocol, split_date=split))
    if p.model.from_tuning:
        from soilmoisture.protocol.tune import apply_best

        p = apply_best(p)
    return run(p)


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str                   # the champion's protocol (parent) run


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


__all__ = ["Champion", "current_champion", "model_name", "registered_version", "retrain_variant", "train_challenger"]
