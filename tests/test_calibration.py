"""Known-site calibration uses the probe's own past only and recovers a known level and scale."""
from __future__ import annotations

import numpy as np
import pandas as pd

from soilmoisture.protocol.baselines import climatology
from soilmoisture.protocol.calibration import site_calibration


def _series(seed: int = 0):
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2017-01-01", periods=3 * 365, freq="D")
    season = 0.25 + 0.08 * np.cos(2 * np.pi * (dates.day_of_year.to_numpy() - 30) / 365.25)
    weather = np.convolve(rng.gamma(0.3, 1.0, len(dates)), np.exp(-np.arange(20) / 5.0))[: len(dates)] * 0.02
    y = season + weather + rng.normal(0, 0.01, len(dates))
    return dates, y, weather


def test_calibration_corrects_a_biased_scaled_model_using_only_training_days() -> None:
    dates, y, weather = _series()
    train = dates < "2019-01-01"
    model = 0.5 * (y - 0.1) + 0.03      # right dynamics, wrong level and scale
    clim = climatology(y, dates, train, float(np.nanmean(y[train])))
    cal = site_calibration(y, model, clim, train)
    test = ~train
    raw_mae = np.mean(np.abs(model[test] - y[test]))
    cal_mae = np.mean(np.abs(cal[test] - y[test]))
    clim_mae = np.mean(np.abs(clim[test] - y[test]))
    assert cal_mae < 0.2 * raw_mae
    assert cal_mae < clim_mae          # the model's dynamics add to the climatology


def test_calibration_never_looks_at_the_predicted_period() -> None:
    dates, y, _ = _series(1)
    train = dates < "2019-01-01"
    model = y + 0.05
    clim = climatology(y, dates, train, 0.2)
    a = site_calibration(y, model, clim, train)
    y2 = y.copy()
    y2[~train] = np.nan                # hide the predicted period entirely
    b = site_calibration(y2, model, clim, train)
    np.testing.assert_allclose(a, b)


def test_too_few_training_days_leave_the_prediction_unchanged() -> None:
    dates, y, _ = _series(2)
    train = np.zeros(len(dates), dtype=bool)
    train[:10] = True
    model = y * 0.9
    np.testing.assert_array_equal(site_calibration(y, model, y, train), model)
