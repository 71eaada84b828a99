"""Task runners (params.yaml `runner`): local loop or Dask through Prefect; same seeds, same metrics."""
from __future__ import annotations

import operator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from soilmoisture import config
from soilmoisture.config import Runner
from soilmoisture.errors import ConfigError
from soilmoisture.runner import chunks, map_in_runner, task_runner

ROOT = Path(__file__).resolve().parents[1]
LOCAL = Runner(kind="local", address=None, n_workers=2)


@pytest.mark.parametrize(
    "runner, key, words",
    [
        ({"kind": "ray"}, "runner.kind", "allowed: local, dask_local, dask_address"),
        ({"kind": "dask_address", "address": None}, "runner.address", "required"),
        ({"n_workers": 0}, "runner.n_workers", "out of range"),
    ],
)
def test_bad_runner_parameters_name_the_key(runner: dict, key: str, words: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["runner"].update(runner)
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert e.value.key == key and words in str(e.value)


def test_chunks_cover_every_item_once_in_order_in_multiples_of_the_group_size() -> None:
    assert chunks(6, 2, align=2) == [range(0, 4), range(4, 6)]
    assert chunks(5, 2, align=8) == [range(0, 5)]          # one engine group: nothing to split
    assert chunks(17, 2, align=8) == [range(0, 16), range(16, 17)]
    assert chunks(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert chunks(0, 2) == []
    for n, k, a in [(61, 2, 8), (610, 4, 8), (3, 5, 1)]:
        assert [i for r in chunks(n, k, a) for i in r] == list(range(n))


def test_local_runner_is_a_plain_loop_without_prefect() -> None:
    assert task_runner(LOCAL) is None
    got: list = []
    assert map_in_runner(partial(operator.mul, 3), [1, 2, 3], LOCAL) == [3, 6, 9]
    assert map_in_runner(abs, [-1, -2], LOCAL, consume=lambda i, v: got.append((i, v))) == []
    assert got == [(0, 1), (1, 2)]


def test_an_unreachable_or_malformed_scheduler_address_is_named_before_any_work() -> None:
    import socket

    from soilmoisture.errors import BackendError

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address, words in ((f"tcp://127.0.0.1:{port}", "not reachable"), ("http://x", "tcp://HOST:PORT")):
        with pytest.raises(BackendError) as e:
            map_in_runner(abs, [1], Runner(kind="dask_address", address=address, n_workers=1))
        assert "runner.address" in str(e.value) and address in str(e.value) and words in str(e.value)


def _protocol_tables(params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-probe table, fold children's metrics sorted by probe) of the only protocol run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    tracking.configure(params)
    c = MlflowClient(tracking.tracking_uri(params))
    exp = c.get_experiment_by_name(tracking.experiment_name("simulated"))
    (parent,) = c.search_runs([exp.experiment_id], filter_string="tags.kind = 'protocol'")
    per_probe = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path=tracking.ART_PER_PROBE, dst_path=str(params.root / "dl")))
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                                "and tags.kind = 'fold'")
    folds = pd.DataFrame([{"probe": r.data.tags["test_probe"], **r.data.metrics} for r in children])
    return per_probe, folds.sort_values("probe").reset_index(drop=True)


def test_a_protocol_on_two_dask_worker_processes_gives_the_local_run_metrics(prefect_harness, make_params, tmp_path,
                                                                          monkeypatch, caplog) -> None:
    """The jax engine in groups of 2: 4 fold models + the final one are 3 groups, cut into 2 chunks of whole
    groups, so every model trains in the same group as locally: per-probe metrics are identical."""
    from test_protocol import BASE, tiny_tables, write_processed

    from soilmoisture.protocol.run import run

    monkeypatch.setenv("SOILMOISTURE_JAX_GROUP_SIZE", "2")   # inherited by the LocalCluster's workers
    daily, probes = tiny_tables(n_probes=4)
    tables = {}
    for kind in ("local", "dask_local"):
        params = make_params({**BASE, "protocol.engine": "jax", "protocol.mode": "unseen_site", "model.epochs": 1,
                              "runner.kind": kind, "runner.n_workers": 2}, root=tmp_path / kind)
        write_processed(params, daily, probes)
        with caplog.at_level("INFO", logger="soilmoisture"):
            run(params)
        tables[kind] = _protocol_tables(params)
    assert "training 5 models in 2 chunks on runner dask_local" in caplog.text
    (pp_local, f_local), (pp_dask, f_dask) = tables["local"], tables["dask_local"]
    assert list(pp_local["probe_id"]) == ["P00", "P01", "P02", "P03"]
    pd.testing.assert_frame_equal(pp_local, pp_dask, check_exact=True)
    pd.testing.assert_frame_equal(f_local, f_dask, check_exact=True)
    assert np.isfinite(pp_dask["mae"]).all()


# --- one shared LocalCluster, reached by address (runner.kind: dask_address) ---------------------------
@pytest.fixture(scope="module")
def dask_address(prefect_harness):
    """A LocalCluster of 2 worker processes as a user would start with ``dask scheduler`` + ``dask worker``:
    workers know the Prefect API (as the README asks for dask_address) and take one XLA thread each."""
    from distributed import LocalCluster

    from soilmoisture.runner import prefect_api_url, worker_env

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      env=worker_env(prefect_api_url())) as cluster:
        yield Runner(kind="dask_address", address=cluster.scheduler_address, n_workers=2)


def _refuse_two(x: int) -> int:
    from soilmoisture.errors import DataError

    if x == 2:
        raise DataError("window_2.tif", "band 3 is unreadable")
    return x


def test_an_error_on_a_worker_reaches_the_caller_as_the_same_clear_error(dask_address) -> None:
    from soilmoisture.errors import DataError

    with pytest.raises(DataError, match="window_2.tif.*band 3 is unreadable"):
        map_in_runner(_refuse_two, [1, 2, 3], dask_address)


def test_map_windows_on_dask_workers_equal_the_local_map_and_its_validation(tiny_area, dask_address, tmp_path):
    import rasterio

    from soilmoisture import mapping
    from soilmoisture.model.jax_engine import init_weights

    params = config.load(tiny_area / "params.yaml")
    features = params.variants["mappable"].features
    model = mapping.MapModel(init_weights(3, len(features), params.model), list(features),
                             np.zeros(len(features), np.float32), np.ones(len(features), np.float32), name="random")
    src = mapping.open_sources(params.path(params.paths.raw), "spain")
    truth = params.path(params.paths.truth) / "spain_ssm.tif"
    maps, checks, on_runner = [], [], []
    try:
        for runner in (LOCAL, dask_address):
            res = mapping.make_map(model, src, tmp_path / f"{runner.kind}.tif", start="2017-06-01", end="2017-06-05",
                                   warmup_start=params.data.start, stat_range=(params.data.start, params.data.end),
                                   window_px=8, truth=truth, runner=runner)    # 16 px tile: 4 windows
            with rasterio.open(res.path) as ds:
                maps.append(ds.read())
            checks.append(res.validation.summary())
            on_runner.append("runner" in res.seconds)
    finally:
        src.close()
    assert on_runner == [False, True] and np.isfinite(maps[0]).any()
    np.testing.assert_array_equal(maps[0], maps[1])
    assert checks[0] == checks[1]


def test_tuning_workers_run_as_dask_tasks_on_one_study(dask_address, tmp_path) -> None:
    from test_tune import _frames_params

    from soilmoisture.protocol import tune

    path = _frames_params(tmp_path, {"tune.n_trials": 2, "tune.max_epochs": 1, "runner.kind": "dask_address",
                                     "runner.address": dask_address.address})
    params = config.load(path)
    result = tune.run(params)
    assert result["trials_run"] == [0, 1]                # two workers, distinct trials, total = requested
    trials = tune.open_study(params).get_trials()
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 2
    assert result["n_complete"] + result["n_pruned"] == 2 and Path(result["best_params_path"]).is_file()
