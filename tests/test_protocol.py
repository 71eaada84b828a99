"""The protocol end to end on tiny tables: fold plans, MLflow runs, baselines, failures, prediction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soilmoisture.schema import DAILY_COLUMNS, PROBE_COLUMNS

START, END = "2017-01-01", "2017-03-31"   # 90 days


def tiny_tables(n_probes: int = 4, seed: int = 0, empty: tuple[str, ...] = (),
                landcover: tuple[int, ...] = (211, 212, 312, 231)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily and probe tables in the data contract: SSM follows rain and sigma0, 30 % of SSM days missing.

    Probes listed in ``empty`` have no observed SSM at all.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range(START, END, freq="D")
    rows, probes = [], []
    for i in range(n_probes):
        pid = f"P{i:02d}"
        net = "NETA" if i % 2 == 0 else "NETB"
        rain = rng.gamma(0.4, 4.0, len(dates)) * (rng.random(len(dates)) < 0.3)
        ssm = np.empty(len(dates))
        s = 0.2 + 0.02 * i
        for t, r in enumerate(rain):
            s = 0.1 + 0.9 * (s - 0.1) + 0.01 * r
            ssm[t] = min(s, 0.45)
        sigma0 = 0.02 + 0.2 * ssm + rng.normal(0, 0.003, len(dates))
        obs = ssm + rng.normal(0, 0.005, len(dates))
        obs[rng.random(len(dates)) < 0.3] = np.nan
        if pid in empty:
            obs[:] = np.nan
        ta = 5 + 3 * np.sin(np.arange(len(dates)) / 10) + rng.normal(0, 1, len(dates))
        df = pd.DataFrame({"probe_id": pid, "date": dates, "network": net, "region": "spain", "ssm": obs,
                           "ssm_flag_gt50": False, "frozen": False, "ts_max": ta + 2, "sigma0_vv": sigma0,
                           "sigma0_outlier": False, "ndvi": 0.5 + 0.001 * np.arange(len(dates)),
                           "ndwi": 0.1 + rng.normal(0, 0.01, len(dates)), "precip_mm": rain,
                           "dry_days": np.zeros(len(dates)), "ta_min": ta - 3, "ta_mean": ta, "ta_max": ta + 3,
                           "ecv_sm": np.nan, "csm": np.nan})
        rows.append(df[list(DAILY_COLUMNS)])
        probes.append({"probe_id": pid, "network": net, "region": "spain", "lat": 41.3 + 0.01 * i, "lon": -5.4,
                       "landcover_code": landcover[i % len(landcover)], "landcover_name": "x",
                       "elevation_m": 800.0 + i, "slope_pct": 1.0, "aspect_x": 0.0, "aspect_y": 1.0,
                       "clay_pct": 20.0, "silt_pct": 30.0, "sand_pct": 50.0, "organic_carbon_pct": 1.0,
                       "base_saturation_pct": 60.0, "climate_class": "Csb"})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(probes)[list(PROBE_COLUMNS)]


def write_processed(params, daily: pd.DataFrame, probes: pd.DataFrame) -> Path:
    out = params.path(params.paths.processed)
    out.mkdir(parents=True, exist_ok=True)
    daily.to_parquet(out / "daily.parquet", index=False)
    probes.to_parquet(out / "probes.parquet", index=False)
    return out


BASE = {"data.start": START, "data.end": END, "protocol.engine": "keras", "model.epochs": 2,
        "protocol.repeats": 1, "variant.name": "minimum"}


# --- fold plans (pure) -------------------------------------------------------------------------------
def test_fold_plans_never_use_the_test_probe_for_training_validation_or_statistics():
    from soilmoisture.protocol.folds import norm_stats, plan_unseen_site

    ids = [f"P{i}" for i in range(7)]
    plans, skipped = plan_unseen_site(ids, np.full(7, 50), repeats=3, val_fraction=0.2, seed=1)
    assert not skipped and len(plans) == 21
    x = np.random.default_rng(0).normal(size=(7, 30, 2)).astype(np.float32)
    for plan in plans:
        t = plan.test_idx[0]
        assert ids[t] == plan.test_probe
        assert t not in plan.train_idx and t not in plan.val_idx
        assert not set(plan.train_idx) & set(plan.val_idx)
        assert len(plan.train_idx) + len(plan.val_idx) == 6 and len(plan.val_idx) == 1  # 80/20 of the others
        # statistics do not move when the test probe's values explode
        x2 = x.copy()
        x2[t] = 1e6
        for a, b in zip(norm_stats(x, plan.train_idx), norm_stats(x2, plan.train_idx)):
            np.testing.assert_array_equal(a, b)


def test_fold_seeds_are_deterministic_and_differ_per_probe_and_repeat():
    from soilmoisture.protocol.folds import fold_seed, plan_unseen_site

    ids = [f"P{i}" for i in range(6)]
    a, _ = plan_unseen_site(ids, np.full(6, 9), repeats=2, val_fraction=0.2, seed=5)
    b, _ = plan_unseen_site(ids, np.full(6, 9), repeats=2, val_fraction=0.2, seed=5)
    assert [(p.seed, list(p.train_idx), list(p.val_idx)) for p in a] == \
           [(p.seed, list(p.train_idx), list(p.val_idx)) for p in b]
    assert len({p.seed for p in a}) == len(a)
    assert fold_seed(5, 0, 0) != fold_seed(6, 0, 0)


def test_normalisation_uses_observed_values_and_never_divides_by_zero():
    from soilmoisture.protocol.folds import CONSTANT_STD, norm_stats

    x = np.array([[[1.0, 5.0, np.nan]], [[3.0, 5.0, np.nan]], [[np.nan, 5.0, np.nan]]], np.float32)
    mean, std = norm_stats(x, np.array([0, 1, 2]))
    np.testing.assert_allclose(mean, [2.0, 5.0, 0.0])
    np.testing.assert_allclose(std, [1.0, CONSTANT_STD, 1.0])  # empty: std 1; constant: ~infinite std


def test_a_value_never_seen_in_a_constant_training_feature_normalises_to_zero():
    """Land cover 212 as the test probe among 211-only training probes is no information, not an outlier."""
    from soilmoisture.model.interface import normalise
    from soilmoisture.protocol.folds import norm_stats

    x = np.array([[[211.0]], [[211.0]], [[212.0]]], np.float32)
    mean, std = norm_stats(x, np.array([0, 1]))
    assert abs(normalise(x[2], mean, std)).max() < 1e-20


def test_a_probe_without_observations_is_reported_and_skipped():
    from soilmoisture.errors import ProtocolError
    from soilmoisture.protocol.folds import plan_unseen_site

    plans, skipped = plan_unseen_site(["A", "B", "C"], np.array([10, 0, 10]), repeats=1, val_fraction=0.2, seed=0,
                                      variant="minimum")
    assert [p.test_probe for p in plans] == ["A", "C"]
    assert all(1 not in p.train_idx and 1 not in p.val_idx for p in plans)
    assert len(skipped) == 1 and isinstance(skipped[0], ProtocolError) and "'B'" in str(skipped[0])


def test_known_site_hides_the_predicted_period_from_training():
    from soilmoisture.protocol.run import known_site_targets

    dates = pd.date_range(START, END, freq="D")
    y = np.random.default_rng(0).uniform(0.1, 0.4, (3, len(dates))).astype(np.float32)
    y_train, eval_days = known_site_targets(y, dates, "2017-03-01")
    assert eval_days.sum() == 31 and not eval_days[:59].any()
    assert np.isnan(y_train[:, eval_days]).all()
    np.testing.assert_array_equal(y_train[:, ~eval_days], y[:, ~eval_days])
    assert not np.isnan(y).any()  # input untouched


def test_baselines_use_same_network_same_day_and_own_climatology():
    from soilmoisture.protocol import baselines as bl

    y = np.array([[0.1, np.nan, 0.3], [0.2, 0.2, np.nan], [0.4, 0.4, 0.4]])
    nd = bl.network_day(y, np.array([1, 2]), ["A", "A", "B"], "A", fallback=9.0)
    np.testing.assert_allclose(nd, [0.2, 0.2, 0.4])  # probe 1 (same network), else pool of the day
    assert bl.train_mean(y, np.array([0, 1])) == pytest.approx(0.2)
    dates = pd.date_range("2017-01-01", periods=730, freq="D")
    series = 0.2 + 0.1 * np.sin(2 * np.pi * dates.day_of_year.to_numpy() / 365.0)
    clim = bl.climatology(series, dates, np.arange(730) < 365, fallback=0.0)
    assert np.abs(clim[365:] - series[365:]).max() < 0.01  # second year predicted from the first


# --- the stage, tracked in MLflow ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    """One unseen_site protocol on 4 probes + 1 without observations (1 repeat, 2 epochs), run through
    the real command line (``soilmoisture train``)."""
    from conftest import write_params

    from soilmoisture import cli, config, tracking

    root = tmp_path_factory.mktemp("protocol")
    path = write_params(root, {**BASE, "protocol.mode": "unseen_site"})
    params = config.load(path)
    daily, probes = tiny_tables(n_probes=5, empty=("P04",))
    write_processed(params, daily, probes)
    assert cli.main(["train", "--params", str(path)]) == 0
    c = _client(params)
    exp = c.get_experiment_by_name(tracking.experiment_name("simulated"))
    (parent,) = c.search_runs([exp.experiment_id], filter_string="tags.kind = 'protocol'")
    return params, parent.info.run_id


def _client(params):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    return MlflowClient(tracking.tracking_uri(params))


def test_mlflow_holds_the_parent_and_every_fold_with_tags_metrics_and_curves(unseen_run):
    from soilmoisture import tracking

    params, rid = unseen_run
    c = _client(params)
    parent = c.get_run(rid)
    assert parent.info.status == "FINISHED"
    t = parent.data.tags
    assert (t["kind"], t["variant"], t["data_source"], t["mode"], t["engine"]) == \
           ("protocol", "minimum", "simulated", "unseen_site", "keras")
    assert len(t[tracking.TAG_DATA_HASH]) == 32 and tracking.TAG_GIT_COMMIT in t
    assert parent.data.params["model.units"] == "16" and parent.data.params["variant.name"] == "minimum"
    for m in ("mean_mae", "median_mae", "mean_pearson_r", "mean_ubrmse", "mean_baseline_train_mean_mae",
              "mean_baseline_network_day_mae"):
        assert np.isfinite(parent.data.metrics[m]), m
    exp = parent.info.experiment_id
    assert c.get_experiment(exp).name == tracking.experiment_name("simulated")
    assert c.get_experiment(exp).tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"  # not GenAI
    assert parent.inputs.dataset_inputs[0].dataset.digest == t[tracking.TAG_DATA_HASH][:36]
    children = c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{rid}' and tags.kind = 'fold'")
    assert sorted(r.data.tags[tracking.TAG_TEST_PROBE] for r in children) == ["P00", "P01", "P02", "P03"]
    for r in children:
        assert r.data.tags[tracking.TAG_REPEAT] == "0" and r.data.tags["variant"] == "minimum"
        assert set(tracking.METRICS) <= set(r.data.metrics)
        assert r.data.tags[tracking.TAG_TEST_PROBE] not in r.data.tags["train_probes"].split(",")
        # what the UI's compare view shows: hyperparameters as params, identifiers as tags, a real duration,
        # the source command and the dataset (the published daily table, versioned by its DVC hash)
        assert r.data.params["units"] == "16" and r.data.params["cell"] == "lstm"
        assert not {"seed", "train_probes", "val_probes"} & set(r.data.params)
        assert r.info.end_time - r.info.start_time >= 100          # the training window, not the logging instant
        assert r.data.tags[tracking.TAG_SOURCE_NAME] == "soilmoisture train"
        [ds] = r.inputs.dataset_inputs
        assert ds.dataset.digest == t[tracking.TAG_DATA_HASH][:36] and ds.dataset.name == "simulated/processed/daily"
        curve = c.get_metric_history(r.info.run_id, "train_loss")
        assert sorted(m.step for m in curve) == [0, 1]
        assert len(c.get_metric_history(r.info.run_id, "val_loss")) == 2  # 3 others -> 1 validation probe
    # the probe with no observed day is reported, not tested
    assert t["skipped_probes"] == "P04"


def test_parent_holds_per_probe_table_and_predictions(unseen_run, tmp_path):
    import mlflow

    from soilmoisture import tracking

    params, rid = unseen_run
    tracking.configure(params)
    per_probe = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=tracking.ART_PER_PROBE,
                                                                   dst_path=str(tmp_path)))
    assert list(per_probe["probe_id"]) == ["P00", "P01", "P02", "P03"]
    assert {"mae", "pearson_r", "n_days", "baseline_network_day_mae", "network", "landcover_code"} <= set(per_probe)
    preds = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=tracking.ART_PREDICTIONS,
                                                                dst_path=str(tmp_path)))
    assert len(preds) == 4 * 90 and {"probe_id", "date", "repeat", "ssm", "ssm_pred"} <= set(preds)
    # metrics are computed on observed days only
    p0 = preds[preds.probe_id == "P00"]
    assert per_probe.set_index("probe_id").loc["P00", "n_days"] == p0["ssm"].notna().sum()


def test_final_model_is_registered_with_its_normalisation_and_predict_cli_uses_it(unseen_run, tmp_path):
    import mlflow

    from soilmoisture import cli, tracking

    params, rid = unseen_run
    c = _client(params)
    name = tracking.registered_model_name(params.tracking.registered_model_prefix, "minimum")
    mv = c.get_model_version_by_alias(name, "champion")
    assert c.get_run(rid).data.tags["registered_model"] == f"{name}/{mv.version}"
    tracking.configure(params)
    meta = mlflow.models.get_model_info(f"models:/{name}@champion").metadata
    assert meta["features"] == params.variant_spec.features and len(meta["mean"]) == len(meta["std"]) == 10

    out = tmp_path / "pred.parquet"
    processed = params.path(params.paths.processed)
    code = cli.main(["predict", "--params", str(params.root / "params.yaml"), "--model", name,
                     "--input", str(processed / "daily.parquet"), "--output", str(out)])
    assert code == 0
    pred = pd.read_parquet(out)
    assert set(pred.probe_id) == {f"P0{i}" for i in range(5)} and pred["ssm_pred"].notna().all()
    # a missing feature is an error naming it
    daily = pd.read_parquet(processed / "daily.parquet").drop(columns=["ndvi"])
    bad = tmp_path / "daily.parquet"
    daily.to_parquet(bad)
    code = cli.main(["predict", "--params", str(params.root / "params.yaml"), "--model", f"{name}/{mv.version}",
                     "--input", str(bad), "--probes", str(processed / "probes.parquet"), "--output", str(out)])
    assert code == 2


def test_a_variant_without_training_probes_fails_by_name_and_marks_the_run_failed(make_params):
    from soilmoisture import tracking
    from soilmoisture.errors import ProtocolError
    from soilmoisture.protocol.run import run

    params = make_params({**BASE, "variant.name": "agriculture", "variants.agriculture.landcover": [312]})
    daily, probes = tiny_tables(n_probes=4)  # only P02 is on 312
    write_processed(params, daily, probes)
    with pytest.raises(ProtocolError, match="variant 'agriculture' leaves no training probe"):
        run(params)
    c = _client(params)
    exp = c.get_experiment_by_name(tracking.experiment_name("simulated"))
    (r,) = c.search_runs([exp.experiment_id])
    assert r.info.status == "FAILED"
    assert "agriculture" in r.data.tags[tracking.TAG_FAILURE]


def test_known_site_reports_each_probe_against_its_climatology(make_params):
    from soilmoisture.protocol.run import run

    params = make_params({**BASE, "protocol.mode": "known_site", "protocol.split_date": "2017-03-01",
                          "model.epochs": 1})
    daily, probes = tiny_tables(n_probes=3)
    write_processed(params, daily, probes)
    rid = run(params)
    c = _client(params)
    parent = c.get_run(rid)
    assert parent.data.tags["mode"] == "known_site"
    assert np.isfinite(parent.data.metrics["mean_baseline_climatology_mae"])
    # the network before its per-site calibration is scored too, so the calibration's gain is visible
    assert np.isfinite(parent.data.metrics["mean_baseline_uncalibrated_model_mae"])
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{rid}' and tags.kind = 'fold'")
    assert sorted(r.data.tags["test_probe"] for r in children) == ["P00", "P01", "P02"]
    # scored on March only (31 days, ~30 % missing)
    assert all(10 < r.data.metrics["n_days"] <= 31 for r in children)


def test_engine_falls_back_to_keras_for_cells_the_jax_engine_lacks(caplog):
    from soilmoisture.model import keras_engine
    from soilmoisture.protocol.run import get_engine

    assert get_engine("keras", "lstm") == (keras_engine, "keras")
    with caplog.at_level("WARNING"):
        engine, name = get_engine("jax", "conv1d")  # no jax engine supports conv1d
    assert (engine, name) == (keras_engine, "keras") and "keras" in caplog.text


def test_native_engine_is_chosen_for_the_lstm_and_falls_back_for_other_cells(caplog):
    from soilmoisture.model import keras_engine, native_engine
    from soilmoisture.protocol.run import engine_group_size, get_engine

    assert get_engine("native", "lstm") == (native_engine, "native")
    assert engine_group_size("native") == 1
    with caplog.at_level("WARNING"):
        engine, name = get_engine("native", "conv1d")
    assert (engine, name) == (keras_engine, "keras") and "native engine does not support" in caplog.text


def test_predict_reads_the_real_remedhus_export(unseen_run, shared_data, tmp_path):
    from soilmoisture import cli

    params, _ = unseen_run
    out = tmp_path / "remedhus_pred.parquet"
    args = ["predict", "--params", str(params.root / "params.yaml"), "--model", "soilmoisture-minimum@champion",
            "--input", str(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv"), "--output", str(out)]
    assert cli.main(args) == 2  # the export lacks ts_max, ta_min, ta_max: refused unless allowed
    assert cli.main(args + ["--allow-missing-features"]) == 0
    pred = pd.read_parquet(out)
    assert pred["probe_id"].nunique() == 5 and pred["ssm_pred"].notna().all()
    assert pred["ssm"].notna().sum() > 4000  # observed SSM carried along for comparison
