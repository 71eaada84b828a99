"""Ensemble interval, level model and `soilmoisture ablate` end to end (tiny tables, real MLflow store)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.test_protocol import BASE, tiny_tables, write_processed


# --- ensemble and interval (pure) ---------------------------------------------------------------------
def test_interval_from_held_out_residuals_covers_the_nominal_share():
    from soilmoisture.protocol import ensemble as en

    rng = np.random.default_rng(0)
    resid = rng.normal(0.01, 0.05, 5000)              # held-out residuals (obs - pred)
    lo_q, hi_q = en.residual_bounds(resid, 0.9)
    assert lo_q == pytest.approx(0.01 - 1.645 * 0.05, abs=0.006) and hi_q == pytest.approx(0.01 + 1.645 * 0.05, abs=0.006)
    pred = np.full(2000, 0.25)
    obs = pred + rng.normal(0.01, 0.05, 2000)          # new days from the same error distribution
    lo, hi = en.interval(pred, (lo_q, hi_q))
    assert 0.87 < en.coverage(obs, lo, hi) < 0.93
    assert en.residual_bounds(resid[:5], 0.9) != en.residual_bounds(resid[:5], 0.9)  # too few: NaN (NaN != NaN)
    assert (en.interval(np.array([0.01]), (-0.1, 0.1))[0] >= 0).all()   # SSM is not negative


def test_ensemble_mean_ignores_missing_members():
    from soilmoisture.protocol.ensemble import ensemble_mean

    m = np.array([[0.1, np.nan, 0.3], [0.3, 0.2, np.nan]])
    assert np.allclose(ensemble_mean(m), [0.2, 0.2, 0.3])


# --- level model (pure) -----------------------------------------------------------------------------
def test_level_model_learns_levels_from_training_probes_only():
    from soilmoisture.protocol.level import fit_level, probe_levels

    y = np.array([[0.1, 0.1, np.nan], [0.2, 0.2, 0.2], [0.3, np.nan, 0.3], [0.9, 0.9, 0.9]])
    lv = probe_levels(y)
    assert np.allclose(lv, [0.1, 0.2, 0.3, 0.9])
    assert np.allclose(probe_levels(y, np.array([True, False, False])), [0.1, 0.2, 0.3, 0.9])
    z = np.array([[1.0], [2.0], [3.0], [4.0]])
    lm = fit_level(lv, z, np.array([0, 1, 2]), ridge=0.0)       # probe 3 is the test probe: never fitted
    assert lm.predict(z[[3]])[0] == pytest.approx(0.4)           # the line of the training probes, not 0.9
    shrunk = fit_level(lv, z, np.array([0, 1, 2]), ridge=100.0)
    assert abs(shrunk.predict(z[[3]])[0] - 0.2) < 0.01           # heavy ridge: the training probes' mean level
    none = fit_level(lv, np.zeros((4, 0)), np.array([0, 1, 2]), ridge=1.0)
    assert none.predict(np.zeros((1, 0)))[0] == pytest.approx(0.2)
    json.dumps(lm.to_dict())                                     # goes into the model's metadata


# --- ablation end to end ------------------------------------------------------------------------------
ABL = {**BASE, "model.epochs": 1, "protocol.split_date": "2017-03-01", "ablate.repeats": 1,
       "ablate.modes": ["unseen_site", "known_site"], "ablate.known_site_val_days": 30,
       "ablate.configs": {"thesis": {"variant": "minimum", "set": {}},
                          "s1db_anomaly": {"variant": "s1db", "set": {"protocol.target": "anomaly",
                                                                       "protocol.level_features": ["irrigated"]}}}}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from conftest import write_params

    from soilmoisture import cli, config

    root = tmp_path_factory.mktemp("ablate")
    path = write_params(root, ABL)
    params = config.load(path)
    daily, probes = tiny_tables(n_probes=5)
    daily = daily.assign(incidence_angle_deg=np.where(daily["date"].dt.day % 2 == 0, 35.0, 45.0))
    write_processed(params, daily, probes)
    assert cli.main(["ablate", "--params", str(path)]) == 0
    return params


def test_ablation_is_one_run_with_a_child_per_configuration_and_mode(ablation):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    c = MlflowClient(tracking.tracking_uri(ablation))
    exp = c.get_experiment_by_name(tracking.experiment_name("simulated", "ablation"))
    (parent,) = c.search_runs([exp.experiment_id], filter_string="tags.kind = 'ablation'")
    assert parent.info.status == "FINISHED"
    kids = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                           "and tags.kind = 'protocol'")
    roles = sorted((r.data.tags["ablation_config"], r.data.tags["mode"], r.data.tags["ablation_role"]) for r in kids)
    assert roles == [("s1db_anomaly", "known_site", "test"), ("s1db_anomaly", "known_site", "validation"),
                     ("s1db_anomaly", "unseen_site", "test"), ("thesis", "known_site", "test"),
                     ("thesis", "known_site", "validation"), ("thesis", "unseen_site", "test")]
    # the validation run of the known site never reads the test period
    for r in kids:
        if r.data.tags["ablation_role"] == "validation":
            assert r.data.params["data.end"] == "2017-02-28" and r.data.params["protocol.split_date"] == "2017-01-30"
    # same folds and seeds for every configuration: identical baselines on identical days
    unseen = [r for r in kids if r.data.tags["mode"] == "unseen_site"]
    b = {r.data.metrics["mean_baseline_network_day_mae"] for r in unseen}
    assert len(b) == 1
    # nothing registered by an ablation
    assert not c.search_registered_models()
    assert "ablation/table.csv" in {a.path for a in c.list_artifacts(parent.info.run_id, "ablation")}


def test_ablation_table_reports_scores_baselines_tests_and_a_validation_choice(ablation):
    out = ablation.path(ablation.ablate.reports)
    table = pd.read_csv(out / "table.csv")
    assert set(table["region"]) == {"overall", "spain"}
    ov = table[table["region"] == "overall"].set_index(["mode", "config"])
    for col in ("val_mae", "ensemble_mae", "model_mae", "ensemble_ubrmse", "ensemble_pearson_r", "ensemble_bias",
                "network_day_mae", "train_mean_mae", "interval_coverage"):
        assert ov[col].notna().all(), col
    assert ov.loc[("known_site", "thesis"), "climatology_mae"] > 0
    assert np.isnan(ov.loc[("unseen_site", "thesis"), "wilcoxon_p"])            # the reference itself
    assert ov.loc[("unseen_site", "thesis"), "delta_ensemble_mae"] == 0
    summary = json.loads((out / "summary.json").read_text())
    for mode in ("unseen_site", "known_site"):
        s = summary["modes"][mode]
        g = ov.loc[mode]
        assert s["selected"] == g["val_mae"].idxmin()                           # chosen on validation only
    assert "| mode | config |" in (out / "table.md").read_text()


def test_an_ablation_override_of_an_unknown_key_fails_before_any_training(make_params):
    from soilmoisture.errors import ConfigError
    from soilmoisture.protocol.ablate import config_params

    params = make_params({**ABL, "ablate.configs": {"thesis": {"variant": "minimum", "set": {"model.unitz": 3}}}})
    with pytest.raises(ConfigError, match=r"ablate.configs.thesis.set.model.unitz"):
        config_params(params, "thesis", "unseen_site")
    with pytest.raises(ConfigError, match=r"ablate.configs.nope.variant"):
        make_params({**ABL, "ablate.configs": {"thesis": {"variant": "minimum", "set": {}},
                                               "nope": {"variant": "nope", "set": {}}}})
