"""Metric functions against values computed by hand and data with a known bias and correlation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from soilmoisture.evaluate import metrics as M

OBS = np.array([0.1, 0.2, 0.3, np.nan])
PRED = np.array([0.2, 0.2, 0.5, 0.1])   # last pair dropped: no observation


def test_metrics_match_hand_computed_values_on_observed_days_only():
    # differences on the 3 observed days: 0.1, 0.0, 0.2
    assert M.n_days(OBS, PRED) == 3
    assert M.mae(OBS, PRED) == pytest.approx(0.1)
    assert M.rmse(OBS, PRED) == pytest.approx(math.sqrt(0.05 / 3))
    assert M.bias(OBS, PRED) == pytest.approx(0.1)
    # centred differences 0, -0.1, 0.1 -> sqrt(0.02 / 3) == sqrt(rmse^2 - bias^2)
    assert M.ubrmse(OBS, PRED) == pytest.approx(math.sqrt(0.02 / 3))
    assert M.ubrmse(OBS, PRED) == pytest.approx(math.sqrt(M.rmse(OBS, PRED) ** 2 - M.bias(OBS, PRED) ** 2))
    # cov 0.03 / sqrt(0.02 * 0.06) = sqrt(3) / 2
    assert M.pearson_r(OBS, PRED) == pytest.approx(math.sqrt(3) / 2)


def test_a_constant_offset_is_pure_bias():
    obs = np.random.default_rng(0).uniform(0.05, 0.45, 200)
    pred = obs + 0.05
    assert M.bias(obs, pred) == pytest.approx(0.05)
    assert M.mae(obs, pred) == pytest.approx(0.05)
    assert M.ubrmse(obs, pred) == pytest.approx(0.0, abs=1e-12)
    assert M.pearson_r(obs, pred) == pytest.approx(1.0)


def test_pearson_r_recovers_a_chosen_correlation():
    rng = np.random.default_rng(42)
    a, b = rng.normal(size=(2, 200_000))
    rho = 0.6
    obs, pred = a, rho * a + math.sqrt(1 - rho ** 2) * b
    assert M.pearson_r(obs, pred) == pytest.approx(rho, abs=0.01)


def test_undefined_metrics_are_nan_not_errors():
    assert math.isnan(M.mae([np.nan, np.nan], [0.1, 0.2]))
    assert math.isnan(M.pearson_r([0.1, 0.2, 0.3], [0.2, 0.2, 0.2]))  # constant prediction
    assert math.isnan(M.pearson_r([0.1], [0.2]))
    assert M.n_days([np.nan], [0.1]) == 0


def test_all_metrics_follow_the_tracking_names():
    from soilmoisture import tracking

    assert tuple(M.all_metrics(OBS, PRED)) == tracking.METRICS
