"""The ``tune`` stage: Optuna reproduces the thesis' hyperparameter search (thesis 3.3.1, issue 7).

The thesis chose its network by a randomized search over LSTM, GRU, SimpleRNN, 1-D convolutions and
dense layers (more units or layers over-fitted; 2 x LSTM(16), 20 epochs, batch 1 won). Here the search
space is ``tune.space`` in params.yaml and the objective is the **mean validation MAE (m3/m3)** of a fixed
subset of leave-one-probe-out folds (``tune.folds_per_trial``), measured on each fold's *validation*
probes at the last epoch; the test probes are never looked at. Folds, tensors and statistics come from
:mod:`soilmoisture.protocol.folds` and :mod:`soilmoisture.tensors`, training from the Keras pieces of
:mod:`soilmoisture.model.keras_engine`, epoch by epoch so that Optuna's MedianPruner can stop a trial
that is clearly worse than the median of the finished ones at the same epoch.

The study lives in a database (``tune.storage``; SQLite by default, any SQLAlchemy URL for workers on
several machines): a run resumes after an interruption and several processes (:func:`worker`) share it.
Workers beat a heartbeat; a trial whose worker was killed is failed after ``tune.grace_seconds`` and
re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``). Every trial is a nested MLflow run
under one tuning parent run (experiment ``soilmoisture/<source>/tuning``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soilmoisture import tracking
from soilmoisture.backends import describe_sql_error, storage_url
from soilmoisture.config import Model, Params, TuneSpace
from soilmoisture.errors import BackendError, DataError, ProtocolError
from soilmoisture.protocol.folds import FoldPlan, norm_stats, plan_unseen_site

log = logging.getLogger(__name__)

# The `model` keys a trial chooses (everything else comes from params.yaml `model`).
TUNED_KEYS = ("cell", "layers", "units", "dropout", "recurrent_l2", "epochs", "clr_base_lr", "clr_max_lr",
              "batch_size")
ATTR_PARENT = "mlflow_parent_run_id"   # study user attribute: the shared tuning parent run
ATTR_CHILD = "mlflow_run_id"           # trial user attribute: the trial's MLflow run
ATTR_VAL_FOLDS = "val_mae_folds"       # trial user attribute: last-epoch validation MAE per fold
ATTR_FOLDS = "folds"                   # study user attribute: the LOO folds' test probes (held out)
MLFLOW_PARENT = "mlflow.parentRunId"
_MAX_FAILED = 20                       # a worker gives up after this many failed (non-finite) trials


# --- storage, locking, study ------------------------------------------------------------------------
_PG_LOCK_KEY = 0x534D54554E45  # pg_advisory_lock key of study_lock on a PostgreSQL storage ("SMTUNE")


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Serialise "count the trials, then ask for one" between processes sharing a study.

    Optuna has no atomic "ask only if fewer than n trials" operation; without the lock two workers
    finishing at the same moment could both start an extra trial. SQLite: a lock file beside the database.
    PostgreSQL (workers on several machines): a session advisory lock on the server, released by the
    server when a killed worker's connection drops. Other databases have no lock here: the total may then
    exceed ``n_trials`` by at most the number of workers minus one.
    """
    if re.match(r"^postgres(ql)?(\+psycopg2)?://", url):
        with _pg_advisory_lock(url):
            yield
        return
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(url[len("sqlite:///"):] + ".lock")
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_advisory_lock(url: str) -> Iterator[None]:
    """Hold ``pg_advisory_lock`` on a connection of its own for the duration of the block."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
    except sa.exc.OperationalError as e:  # the server went away: name the backend, hide a password
        raise BackendError("optuna storage", tracking.mask_url(url), describe_sql_error(e)) from e
    finally:
        engine.dispose()


def open_study(params: Params) -> Any:
    """Create or load (``load_if_exists``) the study ``tune.study_name`` in ``tune.storage`` (minimising)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = storage_url(params)
    t = params.tune
    if url.startswith("sqlite:"):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    elif re.match(r"^postgres(ql)?(\+psycopg2)?://", url):  # a lost server fails, not hangs; stale pool conns re-made
        kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    else:
        kwargs = {}
    # Under the lock: two workers creating a fresh SQLite file would both try to create its tables.
    with study_lock(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=t.heartbeat_seconds,
                                 grace_period=t.grace_seconds,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except Exception as e:  # SQLAlchemy raises many kinds; name the backend, hide a password
            raise BackendError("optuna storage", tracking.mask_url(url), describe_sql_error(e)) from e
        return optuna.create_study(study_name=t.study_name, storage=storage, direction="minimize",
                                   pruner=make_pruner(params), load_if_exists=True)


def make_pruner(params: Params) -> Any:
    """MedianPruner on the per-epoch mean validation MAE (``tune.pruner``); epochs are Optuna steps."""
    import optuna

    p = params.tune.pruner
    return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)


def _sampler(seed: int, trial_number: int) -> Any:
    """A TPE sampler seeded by (tune.seed, trial number): workers never draw the same trial twice.

    TPE reads the whole history from the storage at every suggestion; only its random state is local,
    so a fresh sampler per trial loses nothing. ``constant_liar`` keeps parallel workers apart.
    """
    import optuna

    s = int(np.random.SeedSequence([int(seed), int(trial_number)]).generate_state(1)[0] % (2**31 - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=s, constant_liar=True)


# --- search space -----------------------------------------------------------------------------------
def suggest_model(trial: Any, base: Model, space: TuneSpace, max_epochs: int) -> Model:
    """The trial's hyperparameters: ``base`` (params.yaml ``model``) with the TUNED_KEYS drawn from ``space``."""
    values = {
        "cell": trial.suggest_categorical("cell", list(space.cells)),
        "layers": trial.suggest_int("layers", space.layers[0], space.layers[1]),
        "units": trial.suggest_int("units", space.units[0], space.units[1], log=True),
        "dropout": trial.suggest_float("dropout", space.dropout[0], space.dropout[1]),
        "recurrent_l2": trial.suggest_float("recurrent_l2", space.recurrent_l2[0], space.recurrent_l2[1], log=True),
        "epochs": trial.suggest_int("epochs", space.epochs_min, max_epochs),
        "clr_base_lr": trial.suggest_float("clr_base_lr", space.clr_base_lr[0], space.clr_base_lr[1], log=True),
        "clr_max_lr": trial.suggest_float("clr_max_lr", space.clr_max_lr[0], space.clr_max_lr[1], log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_sizes)),
    }
    return dataclasses.replace(base, **values)


def in_space(model: Model, space: TuneSpace, max_epochs: int) -> bool:
    """Whether ``model``'s tuned keys lie inside the search space (then it can be enqueued as a trial)."""
    return (model.cell in space.cells and space.layers[0] <= model.layers <= space.layers[1]
            and space.units[0] <= model.units <= space.units[1]
            and space.dropout[0] <= model.dropout <= space.dropout[1]
            and space.recurrent_l2[0] <= model.recurrent_l2 <= space.recurrent_l2[1]
            and space.epochs_min <= model.epochs <= max_epochs
            and space.clr_base_lr[0] <= model.clr_base_lr <= space.clr_base_lr[1]
            and space.clr_max_lr[0] <= model.clr_max_lr <= space.clr_max_lr[1]
            and model.batch_size in space.batch_sizes)


# --- data and epoch-by-epoch training ----------------------------------------------------------------
@dataclass
class TuneData:
    """What every trial of a worker shares: tensors, the chosen folds and their training-probe statistics."""

    x: np.ndarray                 # (P, T, F) raw features
    y: np.ndarray                 # (P, T) SSM (m3/m3)
    probe_ids: list[str]
    plans: list[FoldPlan]
    stats: list[tuple[np.ndarray, np.ndarray]]


def choose_folds(plans: list[FoldPlan], k: int, seed: int) -> list[FoldPlan]:
    """A fixed random subset of ``k`` fold plans (same for every trial, so trials and the pruner compare alike)."""
    if len(plans) <= k:
        return list(plans)
    pick = np.sort(np.random.default_rng(seed).choice(len(plans), size=k, replace=False))
    return [plans[i] for i in pick]


def load_data(params: Params) -> TuneData:
    """Tensors of ``params.variant`` from the processed tables and ``tune.folds_per_trial`` LOO folds.

    Raises ProtocolError when the folds have no validation probe (``protocol.val_fraction`` too small).
    """
    from soilmoisture.protocol.run import read_processed
    from soilmoisture.tensors import build_tensors

    processed = params.path(params.paths.processed)
    spec, variant, pr = params.variant_spec, params.variant.name, params.protocol
    daily, probes = read_processed(processed)
    tens = build_tensors(daily, probes, spec.features, landcover=spec.landcover, start=params.data.start,
                         end=params.data.end, drop_flagged=params.quality.drop_flagged_ssm, variant=variant,
                         daily_path=str(processed / "daily.parquet"), probes_path=str(processed / "probes.parquet"))
    # Leave-one-probe-out whatever protocol.mode says: tuning asks "which network generalises to an
    # unseen site" (thesis 3.3.1); one repeat per fold, the fold subset adds the variety.
    plans, skipped = plan_unseen_site(tens.probe_ids, tens.observed, repeats=1, val_fraction=pr.val_fraction,
                                      seed=pr.seed, variant=variant)
    for e in skipped:
        log.warning("%s", e)
    plans = choose_folds(plans, params.tune.folds_per_trial, params.tune.seed)
    if any(len(p.val_idx) == 0 for p in plans):
        raise ProtocolError(f"tune: protocol.val_fraction={pr.val_fraction} leaves a fold without validation "
                            f"probes ({len(tens.probe_ids)} probes); the objective needs them")
    log.info("tune: %d probes x %d days x %d features; folds (test probe never scored): %s", *tens.x.shape,
             ", ".join(p.test_probe or "?" for p in plans))
    return TuneData(x=tens.x, y=tens.y, probe_ids=tens.probe_ids, plans=plans,
                    stats=[norm_stats(tens.x, p.train_idx) for p in plans])


def train_epochwise(x: np.ndarray, y: np.ndarray, plans: list[FoldPlan], stats: list[tuple[np.ndarray, np.ndarray]],
                    hp: Model, on_epoch: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Train one model per plan, all advancing one epoch at a time; returns val MAE (K, epochs) in m3/m3.

    Per model the semantics of ``keras_engine.fit_many`` (seeded initialisation, per-epoch shuffled
    order, Adam + cyclical rate, masked MAE, thesis 3.3.2); the engine trains a model to the end before
    the next, so it cannot report a *mean over folds* after each epoch, which pruning needs.
    ``on_epoch(epoch, val_mae_per_fold)`` may raise (e.g. ``optuna.TrialPruned``) to stop early.
    """
    import keras

    from soilmoisture.model import keras_engine as ke
    from soilmoisture.model.interface import normalise
    from soilmoisture.model.keras_model import build_model

    F, T = x.shape[-1], x.shape[1]
    y_fit = np.nan_to_num(y, nan=0.0) if hp.target_fill == "zero" else y  # thesis compatibility only
    step_days = sum(-(-len(p.train_idx) // hp.batch_size) for p in plans) * hp.epochs * T
    jit = ke.JIT if ke.JIT is not None else step_days >= ke.JIT_MIN_STEP_DAYS
    runs = []
    for plan, (mean, std) in zip(plans, stats):
        keras.utils.set_random_seed(int(plan.seed))  # thesis 3.3.1: re-initialised per fold
        net = build_model(hp, F)
        ke.compile_model(net, hp, jit=jit)
        xt = normalise(x[plan.train_idx], mean, std)
        yt = y_fit[plan.train_idx][..., None].astype(np.float32)
        val = (normalise(x[plan.val_idx], mean, std), y[plan.val_idx][..., None].astype(np.float32))
        runs.append((net, xt, yt, val, ke.epoch_orders(int(plan.seed), len(plan.train_idx), hp.epochs)))
    curves = np.full((len(plans), hp.epochs), np.nan)
    for e in range(hp.epochs):
        for k, (net, xt, yt, val, orders) in enumerate(runs):
            h = net.fit(xt[orders[e]], yt[orders[e]], batch_size=hp.batch_size, epochs=1, shuffle=False, verbose=0,
                        validation_data=val, validation_batch_size=hp.batch_size)
            curves[k, e] = h.history["val_masked_mae"][-1]
        if on_epoch is not None:
            on_epoch(e, curves[:, e])
    return curves


# --- MLflow -----------------------------------------------------------------------------------------
def _client(params: Params) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    exp_id = tracking.ensure_experiment(params, "tuning")
    return MlflowClient(tracking.tracking_uri(params)), exp_id


def ensure_parent_run(params: Params, study: Any, client: Any, exp_id: str) -> str:
    """The study's tuning parent run (created once, its id kept in the study so every worker finds it)."""
    rid = study.user_attrs.get(ATTR_PARENT)
    if rid:
        try:
            client.get_run(rid)
            return rid
        except Exception:  # the run was deleted or the tracking store changed: start a new parent
            log.warning("tuning parent run %s not found in the tracking store; creating a new one", rid)
    from mlflow.entities import Param

    from soilmoisture.protocol.run import flatten

    tags = {tracking.TAG_KIND: "tuning", tracking.TAG_VARIANT: params.variant.name,
            tracking.TAG_SOURCE: params.data.source, tracking.TAG_ENGINE: "keras",
            tracking.TAG_STUDY: params.tune.study_name, tracking.TAG_GIT_COMMIT: tracking.git_commit(params.root)}
    run = client.create_run(exp_id, run_name=f"tune-{params.tune.study_name}", tags=tags)
    rid = run.info.run_id
    tune_params = {**params.to_dict()["tune"], "storage": storage_url(params)}  # the one in use (env override)
    flat = flatten({"tune": tracking.masked_params(tune_params), "variant": params.variant.name,
                    "protocol.val_fraction": params.protocol.val_fraction, "protocol.seed": params.protocol.seed})
    items = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(rid, params=items[i:i + 100])
    client.log_dict(rid, tracking.masked_params(params.to_dict()), tracking.ART_CONFIG)
    study.set_user_attr(ATTR_PARENT, rid)
    return rid


def _close_orphans(study: Any, client: Any) -> None:
    """MLflow runs of trials whose worker died stay RUNNING: mark them KILLED."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        cid = t.user_attrs.get(ATTR_CHILD)
        if not cid:
            continue
        try:
            if client.get_run(cid).info.status == "RUNNING":
                client.set_tag(cid, tracking.TAG_TRIAL_STATE, "FAIL")
                client.set_terminated(cid, "KILLED")
        except Exception as e:  # a missing run must not stop the study
            log.warning("could not close the MLflow run %s of trial %d: %s", cid, t.number, e)


# --- the worker -------------------------------------------------------------------------------------
class _Heartbeat:
    """Beats ``storage.record_heartbeat(trial_id)`` every ``interval`` seconds in a daemon thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self._stop = threading.Event()
        storage.record_heartbeat(trial_id)
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval), daemon=True)
        self._thread.start()

    def _beat(self, storage: Any, trial_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # a busy SQLite file: the next beat tries again
                log.debug("heartbeat of trial %d failed: %s", trial_id, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _next_trial(study: Any, target: int) -> Any | None:
    """Under the study lock: fail stale trials (re-queued), then ask for a trial if fewer than ``target``."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat is supposed to be used with optimize"
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        alive = sum(t.state != TrialState.FAIL for t in trials)  # complete, pruned, running, waiting
        if waiting == 0 and alive >= target:
            return None
        return study.ask()


def worker(params: Params, n_trials: int | None = None, study: Any | None = None) -> list[int]:
    """Run trials of the shared study until it holds ``n_trials`` (default ``tune.n_trials``) live trials.

    Several processes (or machines, with a server ``tune.storage``) may run this at once; each returns
    the numbers of the trials it ran. Failed and killed trials do not count; killed ones are re-queued.
    ``study``: an already opened :func:`open_study` (else opened here).
    """
    from optuna.trial import TrialState

    target = n_trials or params.tune.n_trials
    url = storage_url(params)
    study = study or open_study(params)
    storage = study._storage  # the RDBStorage built in open_study (heartbeats)
    with study_lock(url):
        # Under the lock: workers starting together would race to create the MLflow store and experiment.
        client, exp_id = _client(params)
        parent = ensure_parent_run(params, study, client, exp_id)
        if not study.get_trials(deepcopy=False) and in_space(params.model, params.tune.space, params.tune.max_epochs):
            # The thesis' own choice (params.yaml `model`) is trial 0: the summary measures it against the winner.
            study.enqueue_trial({k: getattr(params.model, k) for k in TUNED_KEYS}, user_attrs={"baseline": "model"})
    data = load_data(params)
    study.set_user_attr(ATTR_FOLDS, [p.test_probe for p in data.plans])
    ran, failed = [], 0
    while True:
        with study_lock(url):
            trial = _next_trial(study, target)
            if trial is None:
                break
            beat = _Heartbeat(storage, trial._trial_id, params.tune.heartbeat_seconds)
        study.sampler = _sampler(params.tune.seed, trial.number)
        try:
            state, value = _run_trial(params, study, trial, data, client, exp_id, parent)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        finally:
            beat.stop()
        if state == TrialState.FAIL:
            failed += 1
            study.tell(trial, state=TrialState.FAIL)
            if failed >= _MAX_FAILED:
                raise ProtocolError(f"tune: {failed} trials of study {params.tune.study_name!r} failed "
                                    "(non-finite validation MAE); check tune.space")
        elif state == TrialState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
        ran.append(trial.number)
        log.info("trial %d %s%s", trial.number, state.name.lower(), "" if value is None else f": val MAE {value:.4f}")
    _close_orphans(study, client)
    return ran


def _run_trial(params: Params, study: Any, trial: Any, data: TuneData, client: Any, exp_id: str,
               parent: str) -> tuple[Any, float | None]:
    """Train the trial's model on the chosen folds, reporting each epoch; logs the trial's MLflow run."""
    import optuna
    from mlflow.entities import Metric, Param
    from optuna.trial import TrialState

    hp = suggest_model(trial, params.model, params.tune.space, params.tune.max_epochs)
    tags = {MLFLOW_PARENT: parent, tracking.TAG_KIND: "trial", tracking.TAG_VARIANT: params.variant.name,
            tracking.TAG_SOURCE: params.data.source, tracking.TAG_ENGINE: "keras",
            tracking.TAG_STUDY: params.tune.study_name, tracking.TAG_TRIAL: str(trial.number)}
    child = client.create_run(exp_id, run_name=f"trial-{trial.number:04d}-{hp.cell}", tags=tags)
    cid = child.info.run_id
    trial.set_user_attr(ATTR_CHILD, cid)
    client.log_batch(cid, params=[Param(k, str(getattr(hp, k))) for k in TUNED_KEYS] +
                     [Param("folds", ",".join(p.test_probe or "?" for p in data.plans)[:6000])])

    def report(epoch: int, per_fold: np.ndarray) -> None:
        mean = float(np.mean(per_fold))
        client.log_metric(cid, "val_mae", mean if math.isfinite(mean) else float("nan"), step=epoch)
        if not math.isfinite(mean):
            raise FloatingPointError(f"non-finite validation MAE at epoch {epoch}")
        trial.report(mean, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: val MAE {mean:.4f} worse than the median")

    t0 = time.perf_counter()
    state, value = TrialState.COMPLETE, None
    try:
        curves = train_epochwise(data.x, data.y, data.plans, data.stats, hp, on_epoch=report)
        value = float(np.mean(curves[:, -1]))
        trial.set_user_attr(ATTR_VAL_FOLDS, [float(v) for v in curves[:, -1]])
    except optuna.TrialPruned as e:
        state = TrialState.PRUNED
        log.info("trial %d pruned: %s", trial.number, e)
    except FloatingPointError as e:
        state = TrialState.FAIL
        log.warning("trial %d failed: %s (%s)", trial.number, e, {k: getattr(hp, k) for k in TUNED_KEYS})
    except BaseException as e:
        client.set_tag(cid, tracking.TAG_FAILURE, f"{type(e).__name__}: {e}"[:4900])
        client.set_tag(cid, tracking.TAG_TRIAL_STATE, "FAIL")
        client.set_terminated(cid, "FAILED")
        raise
    now = int(time.time() * 1000)
    metrics = [Metric("train_seconds", time.perf_counter() - t0, now, 0)]
    if value is not None:
        metrics.append(Metric("mean_val_mae", value, now, 0))
    client.log_batch(cid, metrics=metrics)
    client.set_tag(cid, tracking.TAG_TRIAL_STATE, state.name)
    client.set_terminated(cid, "FAILED" if state == TrialState.FAIL else "FINISHED")
    return state, value


# --- results: best parameters, summary, plots ---------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    """Atomic write: a temporary name in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def best_params_document(study: Any, best: Any) -> dict[str, Any]:
    """The content of ``tune.best_params_path``: the best trial's ``model`` keys and where they came from."""
    return {"study": study.study_name, "trial": best.number, "mean_val_mae": float(best.value),
            "model": {k: best.params[k] for k in TUNED_KEYS if k in best.params}}


def load_best(path: Path) -> dict[str, Any]:
    """The ``model`` keys of a best-parameters file (DataError naming the file if it is missing or malformed)."""
    import yaml

    if not path.is_file():
        raise DataError(path, "best tuning parameters not found; run `soilmoisture tune` "
                              "(or `dvc repro tuning/dvc.yaml`) first, or set model.from_tuning: false")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(path, f"is not valid YAML: {e}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or not model:
        raise DataError(path, "has no `model` mapping of tuned hyperparameters", field="model")
    return model


def apply_best(params: Params) -> Params:
    """``params`` with ``model`` keys replaced by those in ``tune.best_params_path`` (checked like params.yaml)."""
    from soilmoisture import config

    best = load_best(params.path(params.tune.best_params_path))
    raw = params.to_dict()
    raw["model"].update(best)  # an unknown key or bad value fails in from_dict, naming model.<key>
    new = config.from_dict(raw, root=params.root)
    log.info("model hyperparameters from tuning (%s): %s", params.tune.best_params_path, best)
    return new


def _size(p: dict[str, Any]) -> str:
    return f"{p.get('layers', '?')} x {str(p.get('cell', '?')).upper()}({p.get('units', '?')})"


def summarise(trials: list[Any], study_name: str, n_target: int, folds: list[str]) -> tuple[str, dict[str, float]]:
    """Markdown answering the thesis' question on our data (which cell and size win, by how much) + metrics."""
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines = [f"# Hyperparameter search `{study_name}`", "",
             "Objective: mean validation MAE (m³/m³) at the last epoch over the validation probes of "
             f"{len(folds)} leave-one-probe-out folds (test probes {', '.join(folds)} held out, never scored). "
             "Lower is better.", "",
             f"Trials: {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
             f"{count[TrialState.FAIL]} failed (target {n_target}).", ""]
    metrics: dict[str, float] = {"n_complete": float(count[TrialState.COMPLETE]),
                                 "n_pruned": float(count[TrialState.PRUNED]), "n_failed": float(count[TrialState.FAIL])}
    if not done:
        lines.append("No trial completed: nothing to compare.")
        return "\n".join(lines) + "\n", metrics
    cells = sorted({t.params.get("cell") for t in trials if "cell" in t.params})
    lines += ["## Best trial per cell type", "",
              "| cell | complete / pruned | best val MAE | mean val MAE (complete) | best network | dropout | "
              "epochs | batch | trial |", "|---|---|---|---|---|---|---|---|---|"]
    best_by_cell = {}
    for c in cells:
        tc = [t for t in done if t.params.get("cell") == c]
        n_pr = sum(t.state == TrialState.PRUNED and t.params.get("cell") == c for t in trials)
        if not tc:
            lines.append(f"| {c} | 0 / {n_pr} | – | – | – | – | – | – | – |")
            continue
        b = min(tc, key=lambda t: t.value)
        best_by_cell[c] = b
        mean = float(np.mean([t.value for t in tc]))
        metrics[f"best_val_mae_{c}"] = float(b.value)
        metrics[f"mean_val_mae_{c}"] = mean
        p = b.params
        lines.append(f"| {c} | {len(tc)} / {n_pr} | {b.value:.4f} | {mean:.4f} | {_size(p)} | "
                     f"{p.get('dropout', float('nan')):.2f} | {p.get('epochs')} | {p.get('batch_size')} | {b.number} |")
    ranked = sorted(best_by_cell.items(), key=lambda kv: kv[1].value)
    win_cell, win = ranked[0]
    metrics["best_val_mae"] = float(win.value)
    lines += ["", "## Answer", "",
              f"**{_size(win.params)}** wins (trial {win.number}, mean validation MAE {win.value:.4f} m³/m³)."]
    if len(ranked) > 1:
        c2, t2 = ranked[1]
        d = t2.value - win.value
        metrics["margin_to_next_cell"] = float(d)
        lines.append(f"The best other cell type, {c2} ({_size(t2.params)}), is {d:.4f} m³/m³ worse "
                     f"({100 * d / win.value:.1f} %).")
    else:
        lines.append("Only one cell type completed a trial: no comparison between cell types.")
    base = [t for t in done if t.user_attrs.get("baseline") == "model"]
    if base:
        b = base[0]
        d = b.value - win.value
        metrics["baseline_val_mae"] = float(b.value)
        lines.append(f"The configured model (params.yaml `model`: {_size(b.params)}, {b.params.get('epochs')} epochs, "
                     f"batch {b.params.get('batch_size')}; thesis Table 3 by default) scored {b.value:.4f} "
                     f"(trial {b.number}): {d:.4f} m³/m³ {'behind' if d > 0 else 'ahead of'} the winner.")
    # Size: the thesis found more units or layers over-fitted (3.3.1).
    lines += ["", "## Size (complete trials, any cell)", "", "| layers | trials | best val MAE |", "|---|---|---|"]
    for n in sorted({t.params.get("layers") for t in done}):
        v = [t.value for t in done if t.params.get("layers") == n]
        lines.append(f"| {n} | {len(v)} | {min(v):.4f} |")
    lines += ["", "| units | trials | best val MAE |", "|---|---|---|"]
    for lo, hi in ((1, 15), (16, 31), (32, 10**6)):
        v = [t.value for t in done if lo <= t.params.get("units", 0) <= hi]
        if v:
            lines.append(f"| {lo}–{hi if hi < 10**6 else ''} | {len(v)} | {min(v):.4f} |")
    return "\n".join(lines) + "\n", metrics


def save_plots(study: Any, folder: Path) -> dict[str, str]:
    """History, parameter-importance and parallel-coordinate plots as PNG; returns {name: path or reason}."""
    import matplotlib

    matplotlib.use("Agg")  # no display; files only
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    out: dict[str, str] = {}
    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate}
    for name, fn in plots.items():
        if n_done < (2 if name == "param_importances" else 1):
            out[name] = f"not drawn: {n_done} complete trial(s), needs {2 if name == 'param_importances' else 1}"
            log.info("plot %s %s", name, out[name])
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. matplotlib on a parameter with one value
                ax = fn(study)
            fig = (np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax).figure
            path = folder / f"{name}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            os.replace(tmp, path)
            out[name] = str(path)
        except Exception as e:  # a plot is a by-product: report why it is missing, keep the results
            out[name] = f"not drawn: {type(e).__name__}: {e}"
            log.warning("plot %s %s", name, out[name])
    return out


def finalise(params: Params, study: Any | None = None) -> dict[str, Any]:
    """Best parameters file, summary.md and plots from the study's current state; logged to the parent run."""
    import yaml
    from mlflow.entities import Metric
    from optuna.trial import TrialState

    study = study or open_study(params)
    with study_lock(storage_url(params)):
        client, exp_id = _client(params)
        parent = ensure_parent_run(params, study, client, exp_id)
    _close_orphans(study, client)
    trials = study.get_trials(deepcopy=False)
    fold_names = list(study.user_attrs.get(ATTR_FOLDS, []))
    reports = params.path(params.tune.reports)
    reports.mkdir(parents=True, exist_ok=True)
    text, metrics = summarise(trials, params.tune.study_name, params.tune.n_trials, fold_names)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    result: dict[str, Any] = {"study": params.tune.study_name, "parent_run_id": parent,
                              "n_complete": len(done), "n_pruned": int(metrics["n_pruned"]),
                              "n_failed": int(metrics["n_failed"]), "summary_path": str(reports / "summary.md")}
    if not done:
        _write_text(reports / "summary.md", text)
        client.log_artifact(parent, str(reports / "summary.md"), tracking.ART_TUNING_DIR)
        raise ProtocolError(f"tune: no trial of study {params.tune.study_name!r} completed; see "
                            f"{reports / 'summary.md'} (all pruned or failed)")
    best = study.best_trial
    doc = best_params_document(study, best)
    best_path = params.path(params.tune.best_params_path)
    header = "# Written by `soilmoisture tune`; used by `soilmoisture train --set model.from_tuning=true`\n"
    _write_text(best_path, header + yaml.safe_dump(doc, sort_keys=False))
    plots = save_plots(study, reports)
    missing = {k: v for k, v in plots.items() if v.startswith("not drawn")}
    if missing:
        text += "\n## Plots not drawn\n\n" + "\n".join(f"- {k}: {v}" for k, v in missing.items()) + "\n"
    _write_text(reports / "summary.md", text)
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)])
    client.set_tag(parent, tracking.TAG_BEST_TRIAL, str(best.number))
    drawn = [Path(v) for v in plots.values() if not v.startswith("not drawn")]
    for path in [reports / "summary.md", best_path, *drawn]:
        client.log_artifact(parent, str(path), tracking.ART_TUNING_DIR)
    client.set_terminated(parent, "FINISHED")
    result.update({"best_trial": best.number, "best_value": float(best.value), "best_params": doc["model"],
                   "best_params_path": str(best_path), "plots": plots, "metrics": metrics})
    log.info("tune: best trial %d, val MAE %.4f: %s (%s)", best.number, best.value, doc["model"], best_path)
    return result


# --- the stage --------------------------------------------------------------------------------------
def run(params: Params) -> dict[str, Any]:
    """The ``tune`` stage: one worker until the study holds ``tune.n_trials`` trials, then the results.

    Start the same command in more terminals (or machines, with a server ``tune.storage``) to add
    workers; each finishes by rewriting the results from the study's state, so the last one is complete.
    With a Dask ``runner`` the stage itself starts ``runner.n_workers`` workers on the same study, one
    Dask task each (SQLite storage serves the workers of one machine; several machines need a server).
    """
    from soilmoisture.runner import is_distributed, map_in_runner

    study = open_study(params)
    if is_distributed(params.runner):
        ran = map_in_runner(worker, [params] * params.runner.n_workers, params.runner, label="tuning-workers")
        trials = sorted(n for numbers in ran for n in numbers)
    else:
        trials = worker(params, study=study)
    result = finalise(params, study)
    result["trials_run"] = trials
    return result
