"""Shared backends by URL (issue 13): an MLflow server and Optuna storage on PostgreSQL, a Prefect server on
PostgreSQL, a DVC remote round trip, and clear errors naming the backend and the masked URL before any work."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest_postgres import admin_execute, with_database
from test_tune import _env, _frames_params, _worker_cmd, sim_root  # noqa: F401 - sim_root is a fixture

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_port() -> int:
    """A port nobody listens on (bound and released: connection refused, immediately)."""
    return _free_port()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout} s: {log.read_text()[-3000:]}")


def _start_server(cmd: list[str], env: dict[str, str], health: str, log: Path, timeout: float = 90) -> subprocess.Popen:
    """Start a server in its own process group (so stopping it stops its workers too) and wait for ``health``."""
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    try:
        _wait_http(health, proc, timeout, log)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def mlflow_server(postgres_db: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``mlflow server`` on 127.0.0.1 (free port) with a fresh PostgreSQL backend store; (http URL, db URL)."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres_db,
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = _start_server(cmd, env, f"http://127.0.0.1:{port}/health", tmp_path / "mlflow-server.log")
    try:
        yield f"http://127.0.0.1:{port}", postgres_db
    finally:
        _stop(proc)


# --- MLflow tracking server on PostgreSQL --------------------------------------------------------------------
def test_protocol_run_with_folds_and_registered_model_round_trips_through_a_tracking_server_on_postgres(
        mlflow_server, sim_root: Path, monkeypatch):  # noqa: F811 - sim_root is the imported fixture
    from mlflow.tracking import MlflowClient

    from conftest import write_params
    from soilmoisture import backends, config, stages, tracking

    uri, db = mlflow_server
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A storage URL with a password (not used by train): it must reach MLflow only masked.
    secret = "s3cret-" + uuid.uuid4().hex[:6]
    params = config.load(write_params(sim_root, {"tracking.uri": uri, "protocol.engine": "keras",
                                                 "protocol.max_probes": 2, "model.epochs": 1,
                                                 "tune.storage": f"postgresql://sm:{secret}@db.example:5432/optuna"}))
    status = backends.check(params, [backends.MLFLOW])[0]
    assert status.ok and status.detail == f"MLflow server {_mlflow_version()}"

    rid = stages.train(params)

    client = MlflowClient(uri)
    parent = client.get_run(rid)
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.TAG_KIND] == "protocol"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{rid}'")
    folds = [r for r in children if r.data.tags.get(tracking.TAG_KIND) == "fold"]
    assert len(folds) == 2 and all("mae" in r.data.metrics for r in folds)
    assert {r.data.tags[tracking.TAG_TEST_PROBE] for r in folds} and "mean_mae" in parent.data.metrics
    name = tracking.registered_model_name(params.tracking.registered_model_prefix, params.variant.name)
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION_ALIAS)
    assert champion.run_id in {r.info.run_id for r in children}
    # The model's files went through the server's artifact proxy and come back.
    assert any(a.path == tracking.ART_NORMALISATION.split("/")[0] for a in client.list_artifacts(champion.run_id))
    # Passwords of backend URLs never reach MLflow in clear text (params and the saved configuration).
    assert parent.data.params["tune.storage"] == "postgresql://sm:***@db.example:5432/optuna"
    saved = client.download_artifacts(rid, tracking.ART_CONFIG, str(sim_root / "dl"))
    assert secret not in Path(saved).read_text() and "sm:***@" in Path(saved).read_text()
    # The runs live in the PostgreSQL database behind the server.
    import sqlalchemy as sa

    engine = sa.create_engine(db, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        n = conn.execute(sa.text("select count(*) from runs where run_uuid = :r"), {"r": rid}).scalar()
    engine.dispose()
    assert n == 1


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


# --- Optuna on PostgreSQL: two workers, one killed, the study resumes ----------------------------------------
def test_two_workers_on_a_postgres_study_lose_and_duplicate_nothing_and_the_study_resumes_after_a_sigkill(
        postgres_db: str, tmp_path: Path, monkeypatch):
    import mlflow

    from soilmoisture import backends, cli, config, tracking
    from soilmoisture.protocol import tune

    # 2-epoch trials so that the kill lands inside one; 3 trials shared by two workers.
    path = _frames_params(tmp_path, {"tune.n_trials": 3, "tune.space.epochs_min": 2, "tune.max_epochs": 2,
                                     "tune.space.cells": ["lstm", "gru"]})
    monkeypatch.setenv("SOILMOISTURE_OPTUNA_STORAGE", postgres_db)  # overrides tune.storage (SQLite), also in workers
    params = config.load(path)
    assert backends.storage_url(params) == postgres_db
    procs = [subprocess.Popen(_worker_cmd(path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    study = None
    try:
        deadline, states = time.time() + 240, {}
        while time.time() < deadline:
            time.sleep(0.3)
            for p in procs:
                assert p.poll() is None, p.communicate()[1].decode()[-3000:]
            try:
                study = study or tune.open_study(params)
                trials = study.get_trials(deepcopy=False)
            except Exception:  # the first worker may be creating the tables right now
                continue
            states = {t.number: t.state.name for t in trials}
            # Both workers training (every hyperparameter drawn, so past the suggestions): kill the first now.
            if sum(t.state.name == "RUNNING" and len(t.params) == len(tune.TUNED_KEYS) for t in trials) == 2:
                break
        else:
            pytest.fail(f"the workers never ran two trials at once: {states}")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        out, err = procs[1].communicate(timeout=300)
        assert procs[1].returncode == 0, err.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    finished = {t.number: t.value for t in study.get_trials() if t.state.name == "COMPLETE"}
    time.sleep(params.tune.grace_seconds + 1)  # the killed worker's heartbeat goes stale

    assert cli.main(["tune", "--params", str(path)]) == 0

    after = {t.number: t for t in tune.open_study(params).get_trials()}
    failed = [t for t in after.values() if t.state.name == "FAIL"]
    assert len(failed) == 1                                   # exactly the killed worker's trial
    retried = [t for t in after.values() if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].params == failed[0].params and retried[0].state.name != "FAIL"
    for n, v in finished.items():                             # nothing finished was lost or re-run
        assert after[n].state.name == "COMPLETE" and after[n].value == v
    live = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(live) == 3                                     # exactly n_trials, none extra (the advisory lock)
    assert sorted(after) == list(range(len(after)))           # trial numbers distinct, none missing
    draws = [tuple(sorted(t.params.items())) for t in live]
    assert len(set(draws)) == 3                               # no configuration trained twice
    assert not (tmp_path / "optuna" / "optuna.db").exists()   # the SQLite default was never used
    tracking.configure(params)                                # the tuning parent names the storage in use
    parent = mlflow.get_run(tune.open_study(params).user_attrs[tune.ATTR_PARENT])
    assert parent.data.params["tune.storage"] == postgres_db


# --- Prefect server on PostgreSQL ------------------------------------------------------------------------------
def test_prefect_server_on_postgres_is_reported_by_backends_check_and_runs_a_flow(postgres_db: str, tmp_path: Path,
                                                                                 make_params, monkeypatch, capsys):
    from soilmoisture import cli

    port = _free_port()
    home = tmp_path / "prefect-home"
    db = postgres_db.replace("postgresql://", "postgresql+asyncpg://", 1)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": db,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{port}/api"
    proc = _start_server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         env, f"{api}/health", tmp_path / "prefect-server.log")
    try:
        monkeypatch.setenv("PREFECT_API_URL", api)
        params = make_params(root=tmp_path / "proj")
        assert cli.main(["backends", "check", "--only", "prefect", "--params", str(params.root / "params.yaml")]) == 0
        line = capsys.readouterr().out
        assert api in line and f"Prefect server {_version('prefect')}" in line
        # A flow run recorded by that server (what a team's scheduled retraining deployment does).
        code = ("from prefect import flow\n@flow(name='sm-backends-check')\ndef f():\n    return 42\n"
                "assert f() == 42\n")
        run = subprocess.run([sys.executable, "-c", code], env={**env, "PREFECT_API_URL": api}, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        _stop(proc)
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_db, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        states = conn.execute(sa.text("select r.state_type from flow_run r join flow f on f.id = r.flow_id "
                                      "where f.name = 'sm-backends-check'")).scalars().all()
    engine.dispose()
    assert [str(s).split(".")[-1] for s in states] == ["COMPLETED"]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# --- DVC remote -----------------------------------------------------------------------------------------------
def test_dvc_push_then_pull_restores_data_from_a_local_remote(tmp_path: Path):
    from soilmoisture import backends

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def sh(*cmd: str) -> None:
        r = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"

    dvc = str(BIN / "dvc")
    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh(dvc, "config", "core.site_cache_dir", str(tmp_path / "site-cache"))
    sh(dvc, "remote", "add", "-d", "local", str(remote))
    assert backends.dvc_status(repo).ok and not remote.exists()   # created by the first push
    data = repo / "data" / "probes.csv"
    data.parent.mkdir()
    payload = "probe,ssm\nA,0.21\nB,0.34\n" * 50
    data.write_text(payload)
    sh(dvc, "add", "data/probes.csv")
    sh(dvc, "push")
    assert any(p.is_file() for p in remote.rglob("*"))
    status = backends.dvc_status(repo)
    assert status.ok and status.url == f"local: {remote}" and "local-path remote" in status.detail

    data.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(dvc, "pull")
    assert data.read_text() == payload


def test_project_default_dvc_remote_is_a_local_folder_outside_the_repository():
    from conftest import ROOT
    from soilmoisture import backends

    name, url = backends.dvc_remote(ROOT)
    assert name == "local" and url is not None
    assert not Path(url).resolve().is_relative_to(ROOT.resolve())


# --- bad input: the backend and the masked URL named, before any work -----------------------------------------
def test_check_reports_every_embedded_default_with_its_version(make_params):
    from soilmoisture import backends

    params = make_params()
    statuses = {s.backend: s for s in backends.check(params)}
    assert all(s.ok for s in statuses.values()), statuses
    assert statuses[backends.MLFLOW].detail.startswith("SQLite ") and "MLflow client" in statuses[backends.MLFLOW].detail
    assert "Optuna" in statuses[backends.OPTUNA].detail
    assert statuses[backends.PREFECT].detail.startswith("temporary local API")


@pytest.mark.parametrize("stage", ["train", "tune", "map"])
def test_an_unreachable_tracking_server_stops_the_stage_before_it_reads_any_data(stage, make_params, capsys):
    from soilmoisture import cli

    secret = f"pw-{uuid.uuid4().hex[:6]}"
    # No processed data and no registered model: a stage that got past the check would fail on those instead.
    params = make_params({"tracking.uri": f"http://mlflow:{secret}@127.0.0.1:{_closed_port()}"})
    assert cli.main([stage, "--params", str(params.root / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mlflow tracking backend at http://mlflow:***@127.0.0.1:")
    assert "not reachable" in err and secret not in err


def test_a_closed_postgres_port_stops_tune_naming_the_optuna_storage(make_params, capsys, monkeypatch):
    from soilmoisture import cli

    url = f"postgresql://sm:hunter2@127.0.0.1:{_closed_port()}/optuna"
    monkeypatch.setenv("SOILMOISTURE_OPTUNA_STORAGE", url)   # the environment overrides tune.storage
    params = make_params()
    assert cli.main(["tune", "--params", str(params.root / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optuna storage backend at postgresql://sm:***@127.0.0.1:")
    assert "not reachable" in err and "Connection refused" in err and "hunter2" not in err


def test_a_database_that_does_not_exist_is_named_for_optuna_and_for_an_mlflow_database_store(
        postgres_url: str, make_params, capsys, monkeypatch):
    from soilmoisture import cli

    missing = with_database(postgres_url, f"sm_missing_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("SOILMOISTURE_OPTUNA_STORAGE", missing)
    params = make_params()
    assert cli.main(["tune", "--params", str(params.root / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optuna storage backend at postgresql://") and "database does not exist" in err

    monkeypatch.delenv("SOILMOISTURE_OPTUNA_STORAGE")
    params = make_params({"tracking.uri": missing})
    assert cli.main(["train", "--params", str(params.root / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mlflow tracking backend at postgresql://") and "database does not exist" in err


def test_bad_credentials_are_reported_as_authentication_failures_with_the_password_masked(postgres_url: str):
    from soilmoisture import backends

    # A role that does not exist: refused at login by any server, whatever its authentication method.
    ghost = with_database(postgres_url, "postgres", user=f"sm_ghost_{uuid.uuid4().hex[:8]}", password="wrong-pw")
    status = backends.optuna_status(ghost)
    assert not status.ok and status.detail.startswith("authentication failed")
    assert "wrong-pw" not in status.line() and ":***@" in status.url

    # A real role with a password, asked with a wrong one.
    role = f"sm_role_{uuid.uuid4().hex[:8]}"
    admin_execute(postgres_url, f"create role {role} login password 'right-pw'")
    try:
        wrong = backends.optuna_status(with_database(postgres_url, "postgres", user=role, password="wrong-pw"))
    finally:
        admin_execute(postgres_url, f"drop role {role}")
    assert "wrong-pw" not in wrong.line()
    if wrong.ok:  # pg_hba.conf "trust" for 127.0.0.1 (this machine's test server) accepts any password
        pytest.skip(f"the server at {wrong.url} does not check passwords (trust authentication); "
                    "only the unknown-role case was testable")
    assert wrong.detail.startswith("authentication failed") and "password authentication failed" in wrong.detail


def test_passwords_are_masked_even_with_an_at_sign_in_a_query_or_inside_a_message():
    from soilmoisture.tracking import mask_url, masked_params

    assert mask_url("postgresql://sm:p@ss@db:5432/optuna") == "postgresql://sm:***@db:5432/optuna"
    assert mask_url("postgresql://sm@db/optuna?password=hunter2&sslmode=require") == \
        "postgresql://sm@db/optuna?password=***&sslmode=require"
    assert mask_url("see http://host:5000/x and a@b") == "see http://host:5000/x and a@b"   # a port is no password
    assert masked_params({"tune": {"storage": "postgresql://u:pw@h/db", "n": 3}}) == \
        {"tune": {"storage": "postgresql://u:***@h/db", "n": 3}}


def test_a_sqlite_store_that_is_not_a_database_fails_the_check_and_nothing_is_created(tmp_path: Path):
    from soilmoisture import backends

    bad = tmp_path / "mlflow.db"
    bad.write_text("not a database " * 100)
    status = backends.mlflow_status(f"sqlite:///{bad}")
    assert not status.ok and status.detail.startswith("cannot open the SQLite file")
    fresh = tmp_path / "new" / "optuna.db"
    assert backends.optuna_status(f"sqlite:///{fresh}").ok and not fresh.parent.exists()


def test_credentials_in_an_http_url_are_sent_as_basic_auth_and_a_wrong_one_is_named():
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from soilmoisture import backends

    good = "Basic " + base64.b64encode(b"team:s3cret").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            ok = self.headers.get("Authorization") == good
            self.send_response(200 if ok else 401)
            self.end_headers()
            if ok:
                self.wfile.write(b"3.17.2")

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert backends.http_get(f"http://team:s3cret@127.0.0.1:{port}/version", 5) == "3.17.2"
        with pytest.raises(Exception) as e:
            backends.http_get(f"http://team:wrong@127.0.0.1:{port}/version", 5)
        assert "authentication failed (HTTP 401" in str(e.value) and "wrong" not in str(e.value)
    finally:
        server.shutdown()
