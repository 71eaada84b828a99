"""Scheduled retraining: landing scenes -> gate -> challenger -> champion decision, against a real Prefect API.

One tiny simulated world (2 regions, 5 probes) with 30 held-back days is built, gated, trained (champion = version 1) and put
under DVC once per module; every flow test works on its own copy of that project.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import write_params
from test_quality import gx_copy, tree_hashes

OVERRIDES = {"simulate.probes_per_region": {"denmark": 2, "finland": 0, "spain": 3, "sweden": 0},
             "simulate.end": "2017-06-30", "simulate.hold_back_days": 30, "data.end": "2017-06-30",
             "protocol.engine": "keras", "protocol.max_probes": 1, "model.epochs": 1, "model.units": 4,
             "retrain.min_age_seconds": 0, "retrain.io_retry_delay_seconds": 0, "retrain.io_retries": 1}
# The DVC pipeline of the data (the repository's dvc.yaml minus the code dependencies, absent here).
DVC_YAML = {"stages": {
    "simulate": {"cmd": "soilmoisture simulate", "params": ["simulate"], "outs": ["data/raw", "data/truth"]},
    "ingest": {"cmd": "soilmoisture ingest", "deps": ["data/raw"], "params": ["data", "ingest"],
               "outs": ["data/interim"]},
    "validate": {"cmd": "soilmoisture validate", "deps": ["data/interim"], "params": ["quality"],
                 "outs": [{"data/processed": {"persist": True}}]}}}


def _dvc(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project with simulated raw data (30 days held back), processed data, champion v1 and a dvc.lock.

    The ingested tables are published without the GX gate here (set-up, not under test: the flow tests run it).
    """
    from soilmoisture import config, stages
    from soilmoisture.protocol.run import run as protocol_run
    from soilmoisture.quality.gate import publish

    root = tmp_path_factory.mktemp("retrain_base")
    params = config.load(write_params(root, OVERRIDES))
    stages.simulate(params)
    gx_copy(root / "expectations")
    stages.ingest(params)
    interim = params.path(params.paths.interim)
    publish(params.path(params.paths.processed), {n: interim / n for n in ("daily.parquet", "probes.parquet")})
    protocol_run(params)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    _dvc(root, "init", "--no-scm", "-q")
    _dvc(root, "commit", "-f", "simulate", "ingest", "validate")
    return root


@pytest.fixture
def project(base: Path, tmp_path: Path, prefect_harness, monkeypatch):
    """A private copy of the base project (params.yaml rewritten to point its MLflow store at the copy)."""
    from soilmoisture import config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dst = tmp_path / "proj"
    shutil.copytree(base, dst, symlinks=True)
    write_params(dst, OVERRIDES)
    return config.load(dst / "params.yaml")


def _client(params):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    tracking.configure(params)
    return MlflowClient(tracking.tracking_uri(params))


def _champion(params) -> str:
    return str(_client(params).get_model_version_by_alias("soilmoisture-minimum", "champion").version)


def _state(params) -> dict:
    """Everything a failed or empty run must leave untouched."""
    return {"processed": tree_hashes(params.path(params.paths.processed)), "champion": _champion(params),
            "dvc.lock": (params.root / "dvc.lock").read_text(), "params": (params.root / "params.yaml").read_text(),
            "raw_files": sorted(str(p.relative_to(params.root)) for p in params.path(params.paths.raw).rglob("*"))}


def _retrain_runs(params) -> list:
    from soilmoisture import tracking

    exp = _client(params).get_experiment_by_name(tracking.experiment_name("simulated", "retrain"))
    return _client(params).search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


# --- pure rules -------------------------------------------------------------------------------------------
def test_a_scene_is_complete_only_when_named_old_enough_and_readable() -> None:
    from soilmoisture.retrain import completeness

    s1 = "S1A_IW_GRDH_1SDV_20171003T054512_ASC.tif"
    assert completeness(s1, 600, 300, None) == ("accepted", "complete")
    assert completeness(s1 + ".part", 600, 300, None)[0] == "incomplete"
    assert completeness(s1, 10, 300, None)[0] == "incomplete"           # still growing
    assert completeness(s1, 600, 300, "TIFFReadDirectory failed")[0] == "incomplete"
    assert completeness("notes.txt", 600, 300, None)[0] == "ignored"


def test_promotion_needs_the_margin_and_matches_the_same_rows() -> None:
    from soilmoisture.retrain import decide, matched_mae

    assert decide(0.050, 0.047, 0.002).promote and not decide(0.050, 0.049, 0.002).promote
    assert decide(0.050, 0.048, 0.002).promote                          # exactly the margin: promoted
    assert decide(None, 0.04, 0.002).outcome == "first_model"
    assert decide(float("nan"), 0.04, 0.002).outcome == "kept"
    days = pd.date_range("2017-01-01", periods=4)
    obs = np.array([0.2, 0.3, np.nan, 0.25])
    chal = pd.DataFrame({"probe_id": "p", "repeat": 0, "date": days, "ssm": obs, "ssm_pred": obs + 0.01})
    champ = pd.DataFrame({"probe_id": "p", "repeat": 0, "date": days[:3], "ssm": 0.0, "ssm_pred": obs[:3] + 0.03})
    a, b, n_probes, n_rows = matched_mae(champ, chal)   # day 3 has no obs, day 4 no champion prediction
    assert (n_probes, n_rows) == (1, 2) and a == pytest.approx(0.03) and b == pytest.approx(0.01)


def test_setting_data_end_keeps_the_rest_of_the_parameter_file() -> None:
    from soilmoisture.retrain import set_yaml_scalar

    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    out = set_yaml_scalar(text, "data", "end", "2019-03-31")
    assert yaml.safe_load(out)["data"]["end"] == "2019-03-31"
    assert yaml.safe_load(out)["simulate"]["end"] == yaml.safe_load(text)["simulate"]["end"]
    assert len(out.splitlines()) == len(text.splitlines()) and "# the daily range" in out


@pytest.mark.parametrize("override, key, words", [
    ({"retrain.cron": "0 3 * * x!"}, "retrain.cron", "cron"),
    ({"retrain.margin_mae": 2.0}, "retrain.margin_mae", "out of range"),
    ({"retrain.min_age_seconds": -1}, "retrain.min_age_seconds", "out of range"),
    ({"retrain.variant": "maximum"}, "retrain.variant", "unknown variant"),
    ({"retrain.deployment": "a/b"}, "retrain.deployment", "without '/'"),
    ({"simulate.hold_back_days": -5}, "simulate.hold_back_days", "out of range"),
])
def test_bad_retrain_parameters_name_the_key(tmp_path: Path, override: dict, key: str, words: str) -> None:
    from soilmoisture import config
    from soilmoisture.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        config.load(write_params(tmp_path, override))
    assert exc.value.key == key and words in str(exc.value)


def test_partial_young_and_truncated_files_wait_in_landing(project) -> None:
    from soilmoisture.retrain import scan_landing
    from soilmoisture.simulate import deliver

    raw, landing = project.path(project.paths.raw), project.path(project.paths.landing)
    delivered = deliver.run(project, 10)
    complete = delivered[0]
    src = complete.read_bytes()
    truncated = complete.parent / "S1A_IW_GRDH_1SDV_20170801T000000_ASC.tif"
    truncated.write_bytes(src[: len(src) // 2])                          # the writer died half-way
    part = complete.parent / "S1B_IW_GRDH_1SDV_20170802T000000_ASC.tif.part"
    part.write_bytes(src)
    old = time.time() - 3600
    for f in (*delivered, truncated, part):   # (the same acquisition also arrives clipped to the network)
        os.utime(f, (old, old))
    young = complete.parent / "S1B_IW_GRDH_1SDV_20170803T000000_ASC.tif"
    young.write_bytes(src)                                               # complete bytes, but just arrived
    dup_rel = next(p for p in deliver.scene_files(raw)).relative_to(raw)
    dup = landing / dup_rel
    dup.parent.mkdir(parents=True, exist_ok=True)
    dup.write_bytes((raw / dup_rel).read_bytes())
    os.utime(dup, (old, old))
    status = {f.path.name: f.status for f in scan_landing(landing, raw, min_age_s=300)}
    assert status[complete.name] == "accepted" and status[dup.name] == "duplicate"
    assert status[truncated.name] == status[part.name] == status[young.name] == "incomplete"


# --- simulator delivery -----------------------------------------------------------------------------------
def test_held_back_scenes_are_delivered_in_order_and_byte_identical(project) -> None:
    from soilmoisture.simulate import deliver

    raw, truth, landing = (project.path(p) for p in (project.paths.raw, project.paths.truth, project.paths.landing))
    assert deliver.latest_scene_date(raw) <= dt.date(2017, 6, 30)        # the simulate stage held the tail back
    first = deliver.run(project, 10)
    second = deliver.run(project, 10)
    days1 = [deliver.scene_date(p.name) for p in first]
    days2 = [deliver.scene_date(p.name) for p in second]
    assert first and second and max(days1) <= dt.date(2017, 7, 10) < min(days2) <= max(days2) <= dt.date(2017, 7, 20)
    assert any("sentinel1" in str(p) for p in first) and any("sentinel2" in str(p) for p in first + second)
    for p in first:
        assert p.read_bytes() == (truth / "held_back" / p.relative_to(landing)).read_bytes()
    assert not list(landing.rglob("*.part"))


# --- the flow against the Prefect API ---------------------------------------------------------------------
def test_the_deployment_is_registered_with_the_cron_schedule_from_params(project) -> None:
    from prefect.client.orchestration import get_client

    from pipelines.retrain import build_deployment

    dep_id = build_deployment(project.root / "params.yaml").apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("retrain/scheduled")
    assert dep.id == dep_id
    assert [s.schedule.cron for s in dep.schedules] == [project.retrain.cron] and dep.schedules[0].active
    assert dep.parameters["params_path"] == str(project.root / "params.yaml")
    assert dep.global_concurrency_limit.limit == 1                      # one round at a time


def test_a_second_round_while_one_runs_does_nothing(project) -> None:
    from soilmoisture import retrain
    from soilmoisture.simulate import deliver

    from pipelines.retrain import retrain_flow

    deliver.run(project, 10)
    before = _state(project)
    with retrain.exclusive(project.root):                                # a round in progress
        result = retrain_flow(str(project.root / "params.yaml"))
    assert result["decision"] == "busy" and _state(project) == before
    assert deliver.scene_files(project.path(project.paths.landing))     # scenes untouched


def test_no_new_scenes_only_logs(project) -> None:
    from pipelines.retrain import retrain_flow

    before = _state(project)
    result = retrain_flow(str(project.root / "params.yaml"))
    assert result["decision"] == "no_new_scenes" and _state(project) == before
    run = _retrain_runs(project)[-1]
    assert run.data.tags["decision"] == "no_new_scenes" and run.data.metrics["scenes_accepted"] == 0


def test_new_scenes_are_gated_versioned_retrained_and_promoted_by_the_rule(project) -> None:
    from soilmoisture import config
    from soilmoisture.simulate import deliver

    from pipelines.retrain import retrain_flow

    from test_bad_input import zero_filled_copy

    before = _state(project)
    delivered = deliver.run(project, 30)
    landing = project.path(project.paths.landing)
    half = landing / "sentinel1" / "spain" / "S1A_IW_GRDH_1SDV_20170805T182412_ASC.tif.part"
    half.write_bytes(delivered[0].read_bytes()[:1000])                    # a download still running
    # Two bad scenes (not the newest): one whose copy stopped after allocating the file (zero bytes, found by the
    # landing scan) and one delivered in dB (found by the reader in ingest). Each is set aside alone.
    s1 = sorted((p for p in delivered if p.name.startswith("S1")), key=lambda p: p.name)
    zero, in_db = s1[1], s1[3]
    tmp = zero.with_name(zero.name + ".src")
    os.replace(zero, tmp)
    zero_filled_copy(tmp, zero)
    tmp.unlink()
    import rasterio

    with rasterio.open(in_db, "r+") as ds:
        ds.write((10.0 * np.log10(ds.read(1))).astype("float32"), 1)
    bad = {zero, in_db}
    good = [p for p in delivered if p not in bad]
    # margin -1: promote unless the challenger is worse by more than 1 m3/m3, i.e. always
    write_params(project.root, {**OVERRIDES, "retrain.margin_mae": -1.0})
    result = retrain_flow(str(project.root / "params.yaml"))

    after = config.load(project.root / "params.yaml")
    newest = max(deliver.scene_date(p.name) for p in good)
    assert after.data.end == newest.isoformat() == result["data_end"]
    assert result["decision"] == "promoted" and _champion(project) == result["challenger_version"] == "2"
    assert result["champion_mae"] > 0 and result["n_matched_days"] > 0
    assert result["improvement"] == pytest.approx(result["champion_mae"] - result["challenger_mae"])
    aside = {Path(k).name: v for k, v in result["set_aside"].items()}
    assert set(aside) == {zero.name, in_db.name}
    assert "zero in every band" in aside[zero.name] and "look like dB" in aside[in_db.name]
    (reasons,) = (landing / "rejected").glob("*/reason.txt")
    assert sorted(p.name for p in reasons.parent.rglob("*.tif")) == sorted(p.name for p in bad)
    assert all(p.relative_to(landing).as_posix() in reasons.read_text() for p in bad)
    left = sorted(p.name for p in landing.rglob("*") if p.is_file() and "rejected" not in p.parts)
    assert left == [half.name]                                            # the rest moved to raw
    raw = project.path(project.paths.raw)
    assert all((raw / p.relative_to(landing)).is_file() for p in good)
    assert not any((raw / p.relative_to(landing)).exists() for p in bad)
    daily = pd.read_parquet(project.path(project.paths.processed) / "daily.parquet")
    assert daily["date"].max() == pd.Timestamp(newest)
    assert _state(project)["dvc.lock"] != before["dvc.lock"] and newest.isoformat() in _state(project)["dvc.lock"]
    run = _retrain_runs(project)[-1]
    assert run.data.tags["decision"] == "promoted" and run.info.status == "FINISHED"
    assert run.data.metrics["champion_mae"] == pytest.approx(result["champion_mae"])
    assert run.data.metrics["scenes_accepted"] == len(delivered) - 1 and run.data.metrics["scenes_incomplete"] == 1
    assert run.data.metrics["scenes_rejected"] == 1                      # the zero-filled one, at the scan
    assert {"challenger_run_id", "champion_run_id", "quality_run_id"} <= set(run.data.tags)
    assert run.data.tags["champion_before"].endswith("/1") and run.data.tags["champion_after"].endswith("/2")



def test_a_batch_failing_the_gate_is_set_aside_whole_and_leaves_champion_data_and_version(project) -> None:
    """A gate failure no single new scene explains (here: every ECV_SM value above a strict ``quality.ecv_sm_max``)
    sets the whole batch aside. (A scene a reader refuses is set aside alone: the promotion test above.)"""
    from soilmoisture.simulate import deliver

    from pipelines.retrain import retrain_flow

    write_params(project.root, {**OVERRIDES, "quality.ecv_sm_max": 0.01})
    before = _state(project)
    deliver.run(project, 20)
    state = retrain_flow(str(project.root / "params.yaml"), return_state=True)
    assert state.is_failed()
    assert _state(project) == before
    landing = project.path(project.paths.landing)
    rejected = list((landing / "rejected").glob("*/reason.txt"))
    assert len(rejected) == 1
    assert "quality gate failed" in rejected[0].read_text() and "ecv_sm_within_0_max" in rejected[0].read_text()
    assert not deliver.scene_files(landing)                               # the whole batch was set aside
    run = _retrain_runs(project)[-1]
    assert run.data.tags["decision"] == "rejected" and run.info.status == "FAILED"
    assert not list(project.path(project.paths.raw).parent.glob(".retrain-*"))   # staging removed


def test_a_failed_commit_rolls_back_data_parameters_and_version_and_keeps_the_scenes(project) -> None:
    """Step 6 fails after the folders were swapped (`dvc commit` of an unknown stage): all of it is undone."""
    import dataclasses

    from soilmoisture import retrain
    from soilmoisture.errors import DataError
    from soilmoisture.simulate import deliver

    before = _state(project)
    deliver.run(project, 10)
    files = retrain.scan_landing(project.path(project.paths.landing), project.path(project.paths.raw), 0)
    accepted = [f for f in files if f.status == "accepted"]
    st = retrain.stage(project, accepted, "t1")
    for name in ("interim", "processed"):     # stand-ins for the gate's output (the flow tests run the gate)
        shutil.copytree(project.path(getattr(project.paths, name)), getattr(st, name))
    bad = dataclasses.replace(project, retrain=dataclasses.replace(
        project.retrain, dvc_stages=["simulate", "ingest", "validate", "no_such_stage"]))
    with pytest.raises(DataError, match="no_such_stage"):
        retrain.commit_data(bad, project.root / "params.yaml", st, "2017-07-10", "t1", accepted)
    assert _state(project) == before                                      # folders, params.yaml, dvc.lock, alias
    assert all(f.path.is_file() for f in accepted)                        # left for the next run
    assert st.raw.is_dir() and not list(project.path(project.paths.raw).parent.glob(".*old-*"))
    retrain.commit_data(project, project.root / "params.yaml", st, "2017-07-10", "t1", accepted)   # now it works
    assert "2017-07-10" in (project.root / "params.yaml").read_text() and not st.raw.exists()
    assert all((project.path(project.paths.raw) / f.rel).is_file() and not f.path.exists() for f in accepted)
    assert _state(project)["dvc.lock"] != before["dvc.lock"]
