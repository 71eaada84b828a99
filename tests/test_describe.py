"""Exploratory figures (thesis 3.2.6) from the processed tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from soilmoisture.errors import DataError


def _tables(n_probes: int = 4, n_days: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded tables where sigma0 rises monotonically with SSM and NDWI falls with it."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_probes):
        ssm = rng.uniform(0.05, 0.45, n_days)
        rows.append(pd.DataFrame({
            "probe_id": f"p{p}", "date": pd.date_range("2017-01-01", periods=n_days),
            "ssm": ssm, "sigma0_vv": 0.01 + 0.3 * ssm ** 2, "ndwi": 0.5 - ssm,
            "ndvi": rng.uniform(0, 1, n_days), "ts_max": rng.normal(10, 5, n_days),
            "precip_mm": rng.exponential(1, n_days), "ta_mean": rng.normal(8, 4, n_days)}))
    daily = pd.concat(rows, ignore_index=True)
    probes = pd.DataFrame({"probe_id": [f"p{p}" for p in range(n_probes)],
                           "elevation_m": [10.0, 20.0, 30.0, 40.0][:n_probes],
                           "landcover_code": [211, 212, 211, 312][:n_probes]})
    return daily, probes


def test_spearman_of_monotonic_relations_is_plus_or_minus_one():
    from soilmoisture.evaluate.describe import spearman

    daily, _ = _tables()
    corr = spearman(daily, ["ssm", "sigma0_vv", "ndwi", "missing_column"])
    assert corr.loc["ssm", "sigma0_vv"] == pytest.approx(1.0)
    assert corr.loc["ssm", "ndwi"] == pytest.approx(-1.0)
    assert "missing_column" not in corr


def test_normalised_variables_span_zero_to_one():
    from soilmoisture.evaluate.describe import normalised

    daily, _ = _tables()
    norm = normalised(daily, ["ssm", "precip_mm"])
    assert norm.min().tolist() == [0.0, 0.0] and norm.max().tolist() == [1.0, 1.0]


def test_describe_stage_writes_every_figure(make_params):
    from soilmoisture.evaluate.describe import FIGURES, run

    params = make_params()
    daily, probes = _tables()
    proc = params.path(params.paths.processed)
    proc.mkdir(parents=True)
    daily.to_parquet(proc / "daily.parquet")
    probes.to_parquet(proc / "probes.parquet")
    run(params)
    out = params.path(params.paths.reports) / "describe"
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    corr = pd.read_csv(out / "spearman_static.csv", index_col=0)
    assert corr.loc["elevation_m", "elevation_m"] == 1.0
    assert not list(out.glob(".*"))  # no temporary file left


def test_describe_without_processed_tables_names_the_missing_file(make_params):
    from soilmoisture.evaluate.describe import run

    params = make_params()
    with pytest.raises(DataError, match=r"processed/daily\.parquet: processed table not found"):
        run(params)
