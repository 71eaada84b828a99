"""MLflow names live here, and nowhere else: experiments, tags, metric and artifact names.

Stable names let the MLflow UI's compare view line runs up across variants and data sources.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from soilmoisture.config import Params

# --- experiments -------------------------------------------------------------------------------
EXPERIMENT_PREFIX = "soilmoisture"


def experiment_name(source: str, kind: str = "protocol") -> str:
    """One experiment per data source (and kind: protocol, quality, tuning, maps, retrain)."""
    return f"{EXPERIMENT_PREFIX}/{source}/{kind}"


# --- tags --------------------------------------------------------------------------------------
TAG_KIND = "kind"                 # protocol | fold | final | quality | tuning | trial | map | retrain
TAG_VARIANT = "variant"
TAG_SOURCE = "data_source"
TAG_MODE = "mode"                 # unseen_site | known_site
TAG_ENGINE = "engine"
TAG_GIT_COMMIT = "git_commit"
TAG_DATA_HASH = "processed_data_md5"   # DVC hash of data/processed
TAG_TEST_PROBE = "test_probe"
TAG_REPEAT = "repeat"
TAG_FAILURE = "failure_reason"
TAG_STUDY = "optuna_study"        # tuning parent and trials: the Optuna study name
TAG_TRIAL = "optuna_trial"        # trial runs: the trial number
TAG_TRIAL_STATE = "optuna_state"  # trial runs: COMPLETE | PRUNED | FAIL
TAG_BEST_TRIAL = "best_trial"     # tuning parent: the best trial's number
ART_TUNING_DIR = "tuning"         # tuning parent: summary.md, best_params.yaml, Optuna plots

# --- metrics (per fold and aggregated on the parent with the prefix "mean_" / "median_") -------
METRICS = ("mae", "rmse", "ubrmse", "bias", "pearson_r", "n_days")
LEARNING_CURVE = ("train_loss", "val_loss")
# quality gate (kind=quality): data-rule counts and the expectation tally
QUALITY_METRICS = ("flagged_ssm_days", "frozen_days_removed", "sigma0_outliers_removed", "ssm_dropped",
                   "expectations_passed", "expectations_failed")

# --- artifacts ---------------------------------------------------------------------------------
ART_CONFIG = "config/params.json"
ART_PER_PROBE = "results/per_probe_metrics.parquet"
ART_PREDICTIONS = "results/predictions.parquet"
ART_VALIDATION = "results/validation_metrics.parquet"   # per (fold, validation probe): model and baselines
ART_ENSEMBLE = "results/ensemble.parquet"                # per test probe and day: ensemble mean and interval
ART_FOLD_MODELS = "models/folds"                          # unseen site: every fold model (retrain scores them later)
VAL_PREFIX = "val_"    # parent metrics over validation probes: val_mean_mae, val_mean_baseline_network_day_mae
ART_COMPARISON_DIR = "comparison"
ART_QUALITY_DIR = "quality"
# product comparison (``soilmoisture evaluate``) on the parent protocol run, e.g. comparison.ecv_sm_days.ecv_sm.mae
COMPARISON_METRIC_PREFIX = "comparison."


def comparison_metric(name: str) -> str:
    """Name of a comparison metric on the parent run: ``comparison.<day set>_days.<estimator>.<metric>``."""
    return f"{COMPARISON_METRIC_PREFIX}{name}"


# --- protocol runs (soilmoisture.protocol.run) ------------------------------------------------
TAG_SKIPPED = "skipped_probes"          # parent: test probes reported and skipped (comma-separated)
TAG_ENGINE_REQUESTED = "engine_requested"  # protocol.engine as configured (TAG_ENGINE = the one that ran)
TAG_REGISTERED = "registered_model"     # parent and final run: "<registered name>/<version>"
BASELINES = ("train_mean", "network_day", "climatology", "uncalibrated_model", "satellite_model")  # scored like the model, same days
# (uncalibrated_model: known_site only, the network before the per-site calibration of protocol/calibration.py;
#  satellite_model: protocol.method network only, the satellite-only model before the network's readings)
AGGREGATES = ("mean", "median")         # parent metrics over test probes: "<aggregate>_<metric>"
ART_NORMALISATION = "model_meta/normalisation.json"  # final run: features, mean, std (also in MLmodel metadata)
MODEL_ARTIFACT = "model"                # final run: the logged Keras model
CHAMPION_ALIAS = "champion"


# --- scheduled retraining (soilmoisture.retrain, kind=retrain) ---------------------------------
TAG_DECISION = "decision"               # no_new_scenes | rejected | promoted | kept | first_model | failed
TAG_CHALLENGER_RUN = "challenger_run_id"  # the challenger's protocol run
TAG_CHAMPION_RUN = "champion_run_id"      # the champion's protocol run it was compared with
TAG_QUALITY_RUN = "quality_run_id"        # the gate's run on the staged data
TAG_CHAMPION_BEFORE = "champion_before"   # "<registered name>/<version>" (or "-")
TAG_CHAMPION_AFTER = "champion_after"
MODEL_VERSION_DECISION = "retrain_decision"  # tag on a challenger's model version
ART_RETRAIN_DIR = "retrain"             # scenes.json (accepted/incomplete/ignored) and decision.json


def baseline_metric(baseline: str, metric: str) -> str:
    """A baseline's metric name, e.g. ``baseline_train_mean_mae`` (parent: ``mean_baseline_train_mean_mae``)."""
    return f"baseline_{baseline}_{metric}"


def registered_model_name(prefix: str, variant: str, mode: str = "unseen_site") -> str:
    """``<prefix>-<variant>``; a known-site model (another product: it knows its probes) ``...-known-site``."""
    return f"{prefix}-{variant}" + ("-known-site" if mode == "known_site" else "")


def mask_url(url: str) -> str:
    """Hide passwords in a URL, or in text containing URLs: ``postgresql://u:***@host/db``.

    The password runs to the last ``@`` before the host (it may contain ``@``, never ``/`` or spaces), so
    ``host:5000/x a@b`` is not mistaken for credentials; ``?password=`` query values are hidden too.
    """
    masked = re.sub(r"(?<=://)([^:/@\s]+):([^/\s]*)@", r"\1:***@", url)
    return re.sub(r"(?i)([?&](?:password|passwd|pwd)=)[^&\s]*", r"\1***", masked)


def masked_params(d: Any) -> Any:
    """A copy of nested parameters with every password in a URL hidden (for MLflow params and artifacts)."""
    if isinstance(d, dict):
        return {k: masked_params(v) for k, v in d.items()}
    if isinstance(d, list):
        return [masked_params(v) for v in d]
    return mask_url(d) if isinstance(d, str) else d


def tracking_uri(params: "Params") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` with relative SQLite paths made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    m = re.match(r"^sqlite:///(?!/)(.+)$", uri)
    if m:  # relative to the project root, not the cwd (STACK-NOTES: MLflow resolves against the cwd)
        db = params.path(m.group(1)).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    return uri


def artifact_location(params: "Params") -> str:
    root = params.path(params.tracking.artifact_root).resolve()
    return Path(root).as_uri()


def configure(params: "Params") -> str:
    """Point MLflow at the configured store; returns the URI in use."""
    import mlflow

    uri = tracking_uri(params)
    # mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI (and the registry variable). Keep the
    # environment as the user set it: otherwise the first store configured in a process would pin every
    # later Params (another project root, a test's temporary store) to it.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return uri


# MLflow 3's UI opens an experiment without this tag in its GenAI layout ("Evaluations", traces, assistant);
# these are model-training experiments (the value the UI's own experiment-type switch writes).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Run tags the UI shows as the "Source" column and links to the code version.
TAG_SOURCE_NAME, TAG_SOURCE_TYPE, TAG_SOURCE_GIT = "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"
DATASET_CONTEXT = "mlflow.data.context"   # dataset input tag: training | evaluation


def ensure_experiment(params: "Params", kind: str = "protocol") -> str:
    """Create (once) and return the id of the experiment for this data source and kind.

    Every experiment is marked as a model-training experiment (``mlflow.experimentKind``), including ones
    created by an older version of the platform.
    """
    import mlflow

    configure(params)
    name = experiment_name(params.data.source, kind)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if (exp.tags or {}).get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
            mlflow.MlflowClient(tracking_uri(params)).set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND,
                                                                          EXPERIMENT_KIND)
        return exp.experiment_id
    uri = tracking_uri(params)
    # A tracking server manages its own artifact root; a local store gets ours under mlruns/.
    location = artifact_location(params) + f"/{name.replace('/', '_')}" if not uri.startswith("http") else None
    return mlflow.create_experiment(name, artifact_location=location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})


def source_tags(command: str, commit: str) -> dict[str, str]:
    """The run's source as the MLflow UI shows it: the ``soilmoisture`` subcommand and the git commit."""
    return {TAG_SOURCE_NAME: f"soilmoisture {command}", TAG_SOURCE_TYPE: "LOCAL", TAG_SOURCE_GIT: commit}


def dataset_input(table: Any, path: Path, name: str, digest: str, context: str = "training") -> Any:
    """An MLflow dataset input for a published table (``log_inputs``): its schema, row count, file and digest.

    ``digest`` is the data version (the DVC md5 of ``data/processed``), so runs on the same data show the same
    dataset in the UI and a changed table a different one.
    """
    import mlflow.data
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.entities import DatasetInput, InputTag

    # An explicit source class: a plain path is ambiguous to MLflow's source registry (it warns). The artifact
    # source classes are generated at import, so it is looked up by name.
    local = next(c for c in get_registered_sources() if c.__name__ == "LocalArtifactDatasetSource")
    source = local(Path(path).resolve().as_uri())
    ds = mlflow.data.from_pandas(table, source=source, name=name, digest=digest[:36])
    return DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag(key=DATASET_CONTEXT, value=context)])


def finish_registration(client: Any, rid: str, child_id: str, name: str, info: Any) -> str:
    """After ``log_model(..., registered_model_name=name)`` in run ``child_id`` (a child of ``rid``): end the child,
    give the first version the champion alias, tag both runs with ``name/version``; returns the version."""
    client.set_terminated(child_id, "FINISHED")
    ver = str(info.registered_model_version)
    if CHAMPION_ALIAS not in (client.get_registered_model(name).aliases or {}):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, ver)
    client.set_tag(rid, TAG_REGISTERED, f"{name}/{ver}")
    client.set_tag(child_id, TAG_REGISTERED, f"{name}/{ver}")
    return ver


def git_commit(root: Path) -> str:
    """The current git commit of the project (or 'unknown' outside a repository)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
