"""`soilmoisture predict`: a registered known-site model through the ingest step reproduces the protocol.

One known-site model is trained per module on the real REMEDHUS export (5 probes, split 2019-01-01, 2 repeats,
1 epoch: the numbers are not the point, their identity is). Inputs copied into tmp_path are edited to make
rows ingest drops; the export itself is read-only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_params

SPLIT = "2019-01-01"
OVERRIDES = {"data.source": "remedhus", "data.start": "2017-03-28", "data.end": "2019-12-31",
             "protocol.mode": "known_site", "protocol.split_date": SPLIT, "protocol.repeats": 2,
             "protocol.engine": "keras", "model.epochs": 1, "model.units": 4}
MODEL = "soilmoisture-minimum-known-site@champion"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """(params, protocol run id, ensemble table of the run) of a known-site run on the export."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from soilmoisture import config, stages, tracking
    from soilmoisture.protocol.run import run
    from soilmoisture.quality.gate import publish

    root = tmp_path_factory.mktemp("predict")
    csv = shared_data / "remedhus" / "SM_Data_REMEDHUS.csv"
    params = config.load(write_params(root, {**OVERRIDES, "data.remedhus_csv": str(csv)}))
    stages.ingest(params)
    interim = params.path(params.paths.interim)
    publish(params.path(params.paths.processed), {n: interim / n for n in ("daily.parquet", "probes.parquet")})
    rid = run(params)
    # an unseen-site model in the same store (no calibration), for the refusals
    run(config.load(write_params(root, {**OVERRIDES, "data.remedhus_csv": str(csv), "protocol.mode": "unseen_site",
                                        "protocol.repeats": 1, "protocol.max_probes": 1})))
    tracking.configure(params)
    client = MlflowClient(tracking.tracking_uri(params))
    with tempfile.TemporaryDirectory() as d:
        ens = pd.read_parquet(client.download_artifacts(rid, tracking.ART_ENSEMBLE, d))
        pred = pd.read_parquet(client.download_artifacts(rid, tracking.ART_PREDICTIONS, d))
    return {"params": params, "run": rid, "ensemble": ens, "predictions": pred, "csv": csv, "root": root}


def _cli(params, *args: str) -> int:
    from soilmoisture.cli import main

    return main(["predict", "--params", str(params.root / "params.yaml"), *args])


def test_predict_reproduces_the_protocols_calibrated_test_predictions(trained, tmp_path):
    """The registered model, applied by `predict` to the export, gives the protocol's ensemble and interval."""
    out = tmp_path / "pred.parquet"
    assert _cli(trained["params"], "--model", MODEL, "--input", str(trained["csv"]), "--output", str(out)) == 0
    got = pd.read_parquet(out)
    ens = trained["ensemble"]
    m = ens.merge(got, on=["probe_id", "date"], suffixes=("_protocol", ""))
    assert len(m) == len(ens) and m["date"].min() == pd.Timestamp(SPLIT)
    np.testing.assert_allclose(m["ssm_pred"], m["ssm_pred_protocol"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(m["ssm_lower"], m["ssm_lower_protocol"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(m["ssm_upper"], m["ssm_upper_protocol"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(m["ssm"].isna(), m["ssm_protocol"].isna())   # the same observations
    assert got["calibrated"].all() and got.loc[got["date"] >= SPLIT, "ssm_pred"].notna().all()
    # a repeat alone is a member: the per-repeat predictions average to the ensemble
    per_repeat = trained["predictions"].groupby(["probe_id", "date"])["ssm_pred"].mean().reset_index()
    mm = per_repeat.merge(got, on=["probe_id", "date"], suffixes=("_repeats", ""))
    np.testing.assert_allclose(mm["ssm_pred"], mm["ssm_pred_repeats"], atol=1e-6, rtol=0)


def test_a_sigma0_value_ingest_drops_is_not_predicted_from(trained, tmp_path):
    """VV of +3 dB (linear 2.0 > sigma0_max 0.35) on one day: removed and flagged; the model sees the harmonised
    series (the value would have changed the estimates had it reached the network)."""
    from soilmoisture.harmonise import read_for_prediction
    from soilmoisture.model.predictor import load_site_model, predict_file, predict_site_table

    raw = pd.read_csv(trained["csv"], dtype=str, keep_default_na=False)
    probe = sorted(raw["ID"].unique())[0]
    when = pd.to_datetime(raw["Date"], format="%d/%m/%Y")
    rows = raw.index[(raw["ID"] == probe) & (raw["VV"] != "") & (when >= "2019-03-01")]
    day = rows[len(rows) // 2]                            # an overpass day in the predicted period
    date = when[day]
    raw.loc[day, "VV"] = "3.0"
    f = tmp_path / "SM_Data_REMEDHUS.csv"
    raw.to_csv(f, index=False)
    out, site = predict_file(trained["params"], MODEL, f)
    row = out[(out["probe_id"] == probe) & (out["date"] == date)].iloc[0]
    assert row["sigma0_removed"] and not row["overpass"]

    daily, probes, _ = read_for_prediction(f, trained["params"])
    at = (daily["probe_id"] == probe) & (daily["date"] == date)
    assert daily.loc[at, "sigma0_vv"].isna().all() and daily.loc[at, "sigma0_outlier"].all()
    same = predict_site_table(site, daily, probes)
    np.testing.assert_allclose(out["ssm_pred"].where(~out["frozen"]), same["ssm_pred"], atol=1e-9, rtol=0)
    leaked = predict_site_table(site, daily.assign(sigma0_vv=daily["sigma0_vv"].mask(at, 2.0)), probes)
    later = (same["probe_id"] == probe) & (same["date"] >= date)
    assert np.abs(leaked.loc[later, "ssm_pred"] - same.loc[later, "ssm_pred"]).max() > 1e-4


def test_a_frozen_day_gets_no_estimate_and_is_flagged(trained, tmp_path):
    """A daily table with ts_max <= 0 on some days goes through harmonise: those rows are NaN and flagged."""
    from soilmoisture.model.predictor import predict_file
    from soilmoisture.sources.remedhus import read_remedhus

    daily, probes = read_remedhus(trained["csv"])
    frozen_days = pd.to_datetime(["2019-01-10", "2019-01-11"])
    daily["ts_max"] = np.where(daily["date"].isin(frozen_days), -2.0, 5.0)
    daily.to_parquet(tmp_path / "daily.parquet")
    probes.to_parquet(tmp_path / "probes.parquet")
    out, _ = predict_file(trained["params"], MODEL, tmp_path / "daily.parquet")
    fz = out[out["date"].isin(frozen_days)]
    assert len(fz) == 2 * out["probe_id"].nunique() and fz["frozen"].all()
    assert fz["ssm_pred"].isna().all() and fz["ssm"].isna().all()          # no estimate, the reading dropped
    assert out.loc[~out["frozen"] & (out["date"] >= SPLIT), "ssm_pred"].notna().all()


def test_gaps_are_filled_and_marked_and_the_record_is_extended(trained, tmp_path):
    """A month removed from a probe's readings is estimated and marked ``filled``; days after its last reading
    are ``extended``."""
    from soilmoisture.model.predictor import predict_file

    raw = pd.read_csv(trained["csv"], dtype=str, keep_default_na=False)
    probe = sorted(raw["ID"].unique())[1]
    date = pd.to_datetime(raw["Date"], format="%d/%m/%Y")
    gap = (raw["ID"] == probe) & (date >= "2019-05-01") & (date <= "2019-05-31")
    tail = (raw["ID"] == probe) & (date > "2019-11-30")
    raw.loc[gap | tail, "soil_moisture"] = ""
    f = tmp_path / "SM_Data_REMEDHUS.csv"
    raw.to_csv(f, index=False)
    out, _ = predict_file(trained["params"], MODEL, f)
    mine = out[out["probe_id"] == probe].set_index("date")
    may = mine.loc["2019-05-01":"2019-05-31"]
    assert may["filled"].all() and may["ssm_pred"].notna().all() and not may["observed"].any()
    dec = mine.loc["2019-12-01":]
    assert dec["extended"].all() and dec["ssm_pred"].notna().all()
    assert not mine.loc["2019-06-01":"2019-11-30", "extended"].any()


def _daily_input(tmp_path: Path, **cols) -> Path:
    tmp_path = tmp_path / f"in{len(list(tmp_path.glob('in*')))}"
    tmp_path.mkdir()
    daily = pd.DataFrame({"probe_id": "A", "date": pd.date_range("2019-01-01", periods=40), "ssm": 0.2, **cols})
    daily.to_parquet(tmp_path / "daily.parquet")
    pd.DataFrame({"probe_id": ["A"], "network": ["REMEDHUS"], "region": ["spain"]}).to_parquet(
        tmp_path / "probes.parquet")
    return tmp_path / "daily.parquet"


def test_bad_inputs_stop_with_one_line_naming_the_file_field_or_model(trained, tmp_path, capsys):
    params = trained["params"]
    out = tmp_path / "x.parquet"
    cases = [
        (["--model", "no-such-model@champion", "--input", str(trained["csv"])], "no-such-model"),
        (["--model", "soilmoisture-minimum@champion", "--mode", "known_site", "--input", str(trained["csv"])],
         "is not a known-site model"),
        (["--model", MODEL, "--input", str(tmp_path / "missing.csv")], "input file not found"),
        (["--model", MODEL, "--input", str(_daily_input(tmp_path))], "with no value in the input: sigma0_vv"),
        (["--model", MODEL, "--input", str(_daily_input(tmp_path, sigma0_vv=-12.0, ndvi=0.5))],
         "[sigma0_vv]: negative values"),
        (["--model", MODEL, "--input", str(_daily_input(tmp_path, ssm=25.0))], "[ssm]: values above 1"),
        (["--model", MODEL, "--known-only", "--input", str(_daily_input(tmp_path, sigma0_vv=0.05, ndvi=0.5,
                                                                           ndwi=0.1, precip_mm=0.0, ta_mean=5.0))],
         "unknown to the known-site model"),
    ]
    for args, words in cases:
        assert _cli(params, *args, "--output", str(out)) == 2, words
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (words, err)
        assert not out.exists()
