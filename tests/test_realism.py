"""The realism statistics (evaluate/realism.py) on series whose answers are known, and the script on real data."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from soilmoisture.evaluate import realism

from conftest import ROOT


def _frame(values: dict[str, np.ndarray], start: str = "2017-01-01", **extra: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for p, v in values.items():
        dates = pd.date_range(start, periods=len(v), freq="D")
        df = pd.DataFrame({"probe_id": p, "date": dates, "ssm": v})
        for col, per in extra.items():
            df[col] = per[p]
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def test_known_answers_for_shifted_copies():
    """Probes that are one signal plus constant offsets: r = 1, the network-day baseline errs by the offsets."""
    rng = np.random.default_rng(0)
    base = 0.2 + 0.05 * np.sin(np.arange(400) / 20) + 0.01 * rng.standard_normal(400)
    offsets = {"a": -0.06, "b": 0.0, "c": 0.06}
    d = _frame({p: base + o for p, o in offsets.items()})
    s = realism.network_stats(d, start="2017-01-01", end="2018-02-04", split_date="2017-09-01").stats
    assert s["pair_r_mean"].value == pytest.approx(1.0)
    assert s["sd_probe_means"].value == pytest.approx(0.06, rel=1e-6)
    # Network-day for a: mean of b and c = base + 0.03, so |error| = 0.09; b: 0; c: 0.09 -> mean 0.06.
    assert s["network_day_mae"].value == pytest.approx(0.06, rel=1e-6)
    assert s["network_day_r"].value == pytest.approx(1.0)
    assert s["probe_mean_min"].value == pytest.approx(base.mean() - 0.06, abs=1e-9)


def test_independent_probes_and_autocorrelation():
    rng = np.random.default_rng(1)
    n = 2000
    ar = {}
    for p in "abcd":   # AR(1) series with coefficient 0.9, independent of each other
        e = rng.standard_normal(n)
        x = np.empty(n)
        x[0] = e[0]
        for i in range(1, n):
            x[i] = 0.9 * x[i - 1] + np.sqrt(1 - 0.81) * e[i]
        ar[p] = 0.2 + 0.03 * x
    s = realism.network_stats(_frame(ar), start="2017-01-01", end="2022-06-23", split_date="2019-01-01").stats
    assert abs(s["pair_r_mean"].value) < 0.1
    assert s["acf_lag1"].value == pytest.approx(0.9, abs=0.03)
    assert s["acf_lag10"].value == pytest.approx(0.9 ** 10, abs=0.08)


def test_subsets_gaps_sigma0_and_falloff():
    rng = np.random.default_rng(2)
    n = 300
    common = rng.standard_normal(n)
    probes = {f"p{i}": 0.15 + 0.02 * (common + 0.5 * rng.standard_normal(n)) for i in range(8)}
    probes["p0"][:100] = np.nan          # gaps are skipped, not zero
    sigma = {p: np.where(np.arange(n) % 6 == 0, 10 ** ((-20 + 40 * v) / 10), np.nan) for p, v in probes.items()}
    d = _frame(probes, sigma0_vv=sigma)
    coords = pd.DataFrame({"probe_id": list(probes), "x_km": [0, 0.5, 3, 3.2, 10, 10.1, 30, 31], "y_km": 0.0})
    st = realism.network_stats(d, start="2017-01-01", end="2017-10-27", split_date="2017-07-01",
                               coords_km=coords, n_subsets=20)
    s = st.stats
    assert st.n_probes == 8
    assert s["pair_r_mean"].lo <= s["pair_r_mean"].value <= s["pair_r_mean"].hi
    assert s["r_vv_ssm"].value == pytest.approx(1.0)     # sigma0 dB is linear in SSM here
    assert s["vv_db_p05"].value < s["vv_db_p95"].value
    assert np.isnan(s["vh_db_p05"].value)               # no VH column: n/a, not an error
    assert [n for _, n, _ in st.falloff] and sum(n for _, n, _ in st.falloff) == 28
    text = realism.markdown({"x": st})
    assert "n/a" in text and "network-day baseline" in text


def test_too_few_probes_is_a_clear_error():
    d = _frame({"a": np.full(100, 0.2)})
    with pytest.raises(ValueError, match="at least 2 probes"):
        realism.network_stats(d, start="2017-01-01", end="2017-04-10", split_date="2017-03-01")


def test_script_compares_a_processed_table_with_the_real_export(tmp_path, shared_data):
    real = shared_data / "remedhus" / "SM_Data_REMEDHUS.csv"
    # A "simulated" processed table: the real export itself, shifted (so the script runs end to end on
    # real readings without a simulation; its values are not the point here).
    from soilmoisture.sources.remedhus import read_remedhus

    daily, probes = read_remedhus(real)
    probes = probes.assign(lat=41.3 + 0.01 * np.arange(len(probes)), lon=-5.4)
    proc = tmp_path / "processed"
    proc.mkdir()
    daily.to_parquet(proc / "daily.parquet")
    probes.to_parquet(proc / "probes.parquet")
    out = tmp_path / "table.md"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "realism_table.py"), "--params",
                        str(ROOT / "params.yaml"), "--processed", str(proc), "--real-csv", str(real),
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr          # identical networks: ratio 1.0, within the target
    text = out.read_text()
    assert "1.00 ×" in text and "real REMEDHUS export" in text
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "realism_table.py"), "--params",
                          str(ROOT / "params.yaml"), "--processed", str(proc), "--region", "nowhere"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "no rows for region 'nowhere'" in bad.stderr
