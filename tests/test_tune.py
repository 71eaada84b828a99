"""The Optuna search (issue 7): pruning, resuming after a killed worker, parallel workers, tuned training."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, write_params
from test_protocol import END, START, tiny_tables, write_processed

# Small, fast searches: one layer of few units, 1-2 epochs, keras engine for every cell type.
FAST = {"tune.max_epochs": 2, "tune.space.epochs_min": 1, "tune.space.layers": [1, 1], "tune.space.units": [4, 8],
        "tune.folds_per_trial": 1, "tune.heartbeat_seconds": 1, "tune.grace_seconds": 2,
        "tune.pruner": {"startup_trials": 100, "warmup_epochs": 0}}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # mlflow.set_tracking_uri() in this process exported an earlier test's store: workers use their params'
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _worker_cmd(params_path: Path, n_trials: int | None = None) -> list[str]:
    code = ("import json, logging, sys; logging.basicConfig(level=logging.WARNING)\n"
            "from soilmoisture import config; from soilmoisture.protocol import tune\n"
            f"ran = tune.worker(config.load(sys.argv[1]), n_trials={n_trials!r})\n"
            "print('RAN=' + json.dumps(ran))\n")
    return [sys.executable, "-c", code, str(params_path)]


def _frames_params(root: Path, overrides: dict) -> Path:
    """params.yaml in ``root`` over 5 small probes (90 days) published to data/processed."""
    from soilmoisture import config

    path = write_params(root, {"data.start": START, "data.end": END, "variant.name": "minimum", **FAST, **overrides})
    daily, probes = tiny_tables(n_probes=5)
    write_processed(config.load(path), daily, probes)
    return path


def _states(params) -> dict[int, str]:
    from soilmoisture.protocol import tune

    return {t.number: t.state.name for t in tune.open_study(params).get_trials(deepcopy=False)}


# --- the simulated area -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_root(tiny_area: Path, tmp_path_factory) -> Path:
    """The tiny simulated area, ingested; the harmonised tables published as processed (the gate has its own tests)."""
    from soilmoisture import config, stages

    root = tmp_path_factory.mktemp("tune_sim")
    shutil.copytree(tiny_area, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("mlruns", "optuna"))
    params = config.load(write_params(root))
    stages.ingest(params)
    shutil.copytree(params.path(params.paths.interim), params.path(params.paths.processed))
    return root


def test_tiny_study_on_simulated_area_prunes_a_worse_trial_and_its_best_parameters_train(sim_root: Path):
    import mlflow
    import yaml

    from soilmoisture import config, stages, tracking
    from soilmoisture.protocol import tune

    over = {**FAST, "tune.n_trials": 3, "protocol.engine": "keras", "protocol.max_probes": 1,
            "tune.space.cells": ["gru", "simplernn", "conv1d"], "tune.space.batch_sizes": [1, 4],
            "tune.space.clr_base_lr": [1.0e-3, 1.0e-2], "tune.space.clr_max_lr": [2.0e-2, 5.0e-2],
            # aggressive: prune from the second trial on, at any epoch
            "tune.pruner": {"startup_trials": 1, "warmup_epochs": 0}}
    path = write_params(sim_root, over)
    params = config.load(path)
    # Two trials that differ only in batch size (same seeds, same initial weights): batch 4 takes a quarter of
    # the optimizer steps of batch 1 in the first epoch, so it is clearly worse and the pruner stops it.
    good = {"cell": "gru", "layers": 1, "units": 8, "dropout": 0.0, "recurrent_l2": 1e-4, "epochs": 2,
            "clr_base_lr": 1e-2, "clr_max_lr": 2e-2, "batch_size": 1}
    study = tune.open_study(params)
    study.enqueue_trial(good)
    study.enqueue_trial({**good, "batch_size": 4})

    result = stages.tune(params)

    states = _states(params)
    assert len(states) == 3 and states[0] == "COMPLETE"
    assert "PRUNED" in states.values()
    assert result["n_complete"] + result["n_pruned"] == 3
    best_file = params.path(params.tune.best_params_path)
    doc = yaml.safe_load(best_file.read_text())
    assert doc["trial"] == result["best_trial"] and doc["model"] == result["best_params"]
    summary = (params.path(params.tune.reports) / "summary.md").read_text()
    assert "Best trial per cell type" in summary and "gru" in summary
    assert (params.path(params.tune.reports) / "optimization_history.png").is_file()

    # MLflow: one tuning parent, one nested run per trial, the pruned one tagged so.
    tracking.configure(params)
    exp = mlflow.get_experiment_by_name(tracking.experiment_name("simulated", "tuning"))
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "tuning"]
    trials = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "trial"]
    assert len(parents) == 1 and len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert "PRUNED" in {r.data.tags[tracking.TAG_TRIAL_STATE] for r in trials}
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "tuning")}
    assert "tuning/summary.md" in arts and "tuning/best_params.yaml" in arts

    # The best parameters feed training (model.from_tuning), through the train stage.
    trained = config.load(path, {"model.from_tuning": True})
    assert tune.apply_best(trained).model.cell == doc["model"]["cell"]
    rid = stages.train(trained)
    logged = mlflow.get_run(rid).data.params
    for key, value in doc["model"].items():
        assert logged[f"model.{key}"] == str(value)


# --- resuming and parallel workers (small frames) ---------------------------------------------------
def test_study_killed_in_the_middle_of_a_trial_resumes_without_losing_finished_trials(tmp_path: Path):
    import mlflow

    from soilmoisture import backends, cli, config, tracking
    from soilmoisture.protocol import tune

    # 3-epoch trials so that the kill lands inside one.
    path = _frames_params(tmp_path, {"tune.n_trials": 3, "tune.space.epochs_min": 3, "tune.max_epochs": 3})
    params = config.load(path)
    proc = subprocess.Popen(_worker_cmd(path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        states: dict[int, str] = {}
        while time.time() < deadline:
            time.sleep(0.5)
            if backends.storage_url(params) and Path(str(tmp_path / "optuna" / "optuna.db")).is_file():
                try:
                    states = _states(params)
                except Exception:  # the worker may be creating the tables right now
                    continue
                if "COMPLETE" in states.values() and "RUNNING" in states.values():
                    break
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        else:
            pytest.fail(f"no trial completed in time: {states}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {n for n, s in states.items() if s == "COMPLETE"}
    killed = [n for n, s in states.items() if s == "RUNNING"]
    before = {t.number: t.value for t in tune.open_study(params).get_trials() if t.number in finished}
    time.sleep(params.tune.grace_seconds + 1)  # the killed worker's heartbeat goes stale

    assert cli.main(["tune", "--params", str(path)]) == 0

    study = tune.open_study(params)
    after = {t.number: t for t in study.get_trials()}
    for n, v in before.items():  # nothing finished was lost or re-run
        assert after[n].state.name == "COMPLETE" and after[n].value == v
    assert [after[n].state.name for n in killed] == ["FAIL"]
    retried = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1 and retried[0].params == after[killed[0]].params  # re-queued with the same params
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after.values()) == 3
    # The killed trial's MLflow run does not stay RUNNING forever.
    tracking.configure(params)
    assert mlflow.get_run(after[killed[0]].user_attrs[tune.ATTR_CHILD]).info.status == "KILLED"


def test_two_workers_on_one_sqlite_study_share_the_trials_without_duplicating(tmp_path: Path):
    from soilmoisture import config
    from soilmoisture.protocol import tune

    path = _frames_params(tmp_path, {"tune.n_trials": 4, "tune.space.cells": ["lstm", "gru"], "tune.max_epochs": 1})
    params = config.load(path)
    procs = [subprocess.Popen(_worker_cmd(path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    ran = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
        ran.append(json.loads(next(line for line in out.decode().splitlines() if line.startswith("RAN="))[4:]))
    numbers = ran[0] + ran[1]
    assert sorted(numbers) == [0, 1, 2, 3]          # distinct trial numbers, total = requested
    states = _states(params)
    assert len(states) == 4 and set(states.values()) <= {"COMPLETE", "PRUNED"}
    draws = [tuple(sorted(t.params.items())) for t in tune.open_study(params).get_trials()]
    assert len(set(draws)) == 4                       # no configuration trained twice


def test_training_from_tuning_without_a_tuning_result_names_the_missing_file(make_params):
    from soilmoisture.errors import DataError
    from soilmoisture.protocol import tune

    params = make_params({"model.from_tuning": True})
    with pytest.raises(DataError, match=r"best_params\.yaml: best tuning parameters not found; run `soilmoisture"):
        tune.apply_best(params)


def test_a_tuning_result_with_an_out_of_range_value_fails_like_params_yaml(make_params):
    from soilmoisture.errors import ConfigError
    from soilmoisture.protocol import tune

    params = make_params()
    best = params.path(params.tune.best_params_path)
    best.parent.mkdir(parents=True)
    best.write_text("model:\n  cell: lstm\n  dropout: 1.5\n")
    with pytest.raises(ConfigError, match=r"'model.dropout'"):
        tune.apply_best(params)


# --- the summary and the plots (no training) ----------------------------------------------------------
def _trial(number: int, cell: str, value: float | None, layers: int = 2, units: int = 16, **attrs):
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.PRUNED
    t = optuna.trial.create_trial(
        state=state, value=value, params={"cell": cell, "layers": layers, "units": units},
        distributions={"cell": CategoricalDistribution(["lstm", "gru", "conv1d"]), "layers": IntDistribution(1, 3),
                       "units": IntDistribution(8, 64, log=True)},
        user_attrs=attrs, intermediate_values={0: value if value is not None else 0.3})
    t.number = number
    return t


def test_summary_names_the_winning_cell_and_size_and_its_margin_over_the_next_cell_and_the_thesis_model():
    from soilmoisture.protocol.tune import summarise

    trials = [_trial(0, "lstm", 0.080, baseline="model"), _trial(1, "lstm", 0.050, layers=1, units=32),
              _trial(2, "gru", 0.070), _trial(3, "gru", 0.090), _trial(4, "conv1d", None)]
    text, metrics = summarise(trials, "s", 5, ["P01"])
    assert "**1 x LSTM(32)** wins (trial 1, mean validation MAE 0.0500 m³/m³)" in text
    assert "gru (2 x GRU(16)), is 0.0200 m³/m³ worse (40.0 %)" in text
    assert "scored 0.0800 (trial 0): 0.0300 m³/m³ behind the winner" in text
    assert "| conv1d | 0 / 1 |" in text and "test probes P01 held out" in text
    assert metrics["best_val_mae"] == 0.05 and metrics["mean_val_mae_gru"] == pytest.approx(0.08)
    assert metrics["n_complete"] == 4 and metrics["n_pruned"] == 1


def test_importance_plot_is_reported_missing_with_fewer_than_two_complete_trials(tmp_path: Path):
    import optuna

    from soilmoisture.protocol.tune import save_plots

    study = optuna.create_study()
    study.add_trial(_trial(0, "lstm", 0.08))
    plots = save_plots(study, tmp_path)
    assert Path(plots["optimization_history"]).is_file()
    assert plots["param_importances"].startswith("not drawn: 1 complete trial(s), needs 2")


def test_objective_never_looks_at_the_test_probe(tmp_path: Path):
    import numpy as np

    from soilmoisture import config
    from soilmoisture.protocol import tune

    params = config.load(_frames_params(tmp_path, {}))
    data = tune.load_data(params)
    hp = tune.dataclasses.replace(params.model, cell="gru", layers=1, units=4, epochs=1, batch_size=1)
    clean = tune.train_epochwise(data.x, data.y, data.plans, data.stats, hp)
    x, y = data.x.copy(), data.y.copy()
    t = data.plans[0].test_idx
    x[t], y[t] = 1e3, 0.9  # the held-out probe's inputs and SSM made absurd
    assert np.array_equal(tune.train_epochwise(x, y, data.plans, data.stats, hp), clean)
