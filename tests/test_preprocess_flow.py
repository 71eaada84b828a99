"""The Prefect preprocessing flow: ingest -> quality gate; publishes valid data, stops on bad data."""
from __future__ import annotations

from pathlib import Path

import pytest

from soilmoisture.errors import DataError, QualityGateError
from test_quality import END, START, gx_copy, make_tables, shared_mlflow_store, tree_hashes, write_interim


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, prefect_harness) -> None:
    """Every test here runs against the session's temporary Prefect API and this module's MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    return shared_mlflow_store(tmp_path_factory.mktemp("mlruns"))


def _project(make_params, root: Path, daily, probes, store: dict):
    """A temporary project: params.yaml, a copy of expectations/ (never the repository's), interim tables."""
    params = make_params({"data.start": START, "data.end": END, **store}, root=root)
    gx_copy(params.root / "expectations")
    write_interim(params.path(params.paths.interim), daily, probes)
    return params


def test_flow_publishes_a_valid_interim_table(tmp_path: Path, make_params, store) -> None:
    from pipelines.preprocess import preprocess_flow

    params = _project(make_params, tmp_path, *make_tables(), store)
    summary = preprocess_flow(str(params.root / "params.yaml"), skip_ingest=True)
    assert summary["success"] and summary["expectations_failed"] == 0
    processed = params.path(params.paths.processed)
    assert tree_hashes(processed)["daily.parquet"] == tree_hashes(params.path(params.paths.interim))["daily.parquet"]
    assert Path(summary["data_docs"]).is_relative_to(params.root / "expectations")


def test_flow_fails_on_a_corrupted_table_and_keeps_processed(tmp_path: Path, make_params, store) -> None:
    from pipelines.preprocess import preprocess_flow

    daily, probes = make_tables()
    params = _project(make_params, tmp_path, daily, probes, store)
    preprocess_flow(str(params.root / "params.yaml"), skip_ingest=True)       # a previous good publication
    processed = params.path(params.paths.processed)
    before = tree_hashes(processed)
    daily.loc[daily["sigma0_vv"].notna().idxmax(), "sigma0_vv"] = 0.9          # a corner reflector slipped through
    write_interim(params.path(params.paths.interim), daily, probes)
    state = preprocess_flow(str(params.root / "params.yaml"), skip_ingest=True, return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, QualityGateError) and "sigma0_within_0_max" in str(err)
    assert tree_hashes(processed) == before


def test_gate_failures_are_not_retried_but_io_errors_are() -> None:
    from prefect.states import Failed

    from pipelines.preprocess import retry_on_io_error

    assert not retry_on_io_error(None, None, Failed(data=QualityGateError(["x"])))
    assert not retry_on_io_error(None, None, Failed(data=DataError("a.csv", "bad")))
    assert retry_on_io_error(None, None, Failed(data=OSError("disk hiccup")))


def test_flow_ingests_and_publishes_real_remedhus(shared_data: Path, tmp_path: Path, make_params, store) -> None:
    pytest.importorskip("soilmoisture.harmonise", reason="harmonise.py (ingest) not written yet")
    from pipelines.preprocess import preprocess_flow

    params = make_params({**store, "data.source": "remedhus",
                          "data.remedhus_csv": str(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv"),
                          "data.start": "2017-04-01", "data.end": "2018-03-31"}, root=tmp_path)
    gx_copy(params.root / "expectations")
    import logging

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    # The ingest task's summary goes through Prefect's run logger (shown in the UI), not only the CLI's stderr.
    keep, task_log = Keep(), logging.getLogger("prefect.task_runs")
    task_log.addHandler(keep)
    try:
        summary = preprocess_flow(str(params.root / "params.yaml"))
    finally:
        task_log.removeHandler(keep)
    assert summary["success"], summary["failures"]
    assert (params.path(params.paths.processed) / "daily.parquet").is_file()
    assert any(m.startswith("ingest: 5 probes x 365 days") for m in keep.messages), keep.messages
