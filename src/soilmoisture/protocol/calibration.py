"""Known-site mode: a per-site calibration learned from the probe's own training period.

DESIGN "two questions": for a *known* site the model may use the probe's own past, never the period
predicted. The network alone is not told which probe it predicts, so it cannot learn a probe's level;
the thesis' future work (4.3) asked for exactly this. We fit, per probe and on its training days only,

    ssm ~ a + b * climatology_doy + c * model_prediction

(least squares with a small ridge penalty on b and c), and apply it to the predicted period. The
climatology is the probe's own day-of-year mean from the same training days (``baselines.climatology``),
so the calibrated model can only beat the climatology baseline by what the model adds to it.
The fitted coefficients are a :class:`soilmoisture.model.site.Calibration`: stored with the registered
known-site model and applied by ``soilmoisture predict`` with the same code.
"""
from __future__ import annotations

import numpy as np

from soilmoisture.model.site import Calibration

RIDGE = 1e-3        # shrinkage of b and c (units of the standardised regressors)
MIN_TRAIN_DAYS = 30


def fit_calibration(y_probe: np.ndarray, pred: np.ndarray, clim: np.ndarray, train_days: np.ndarray,
                    ridge: float = RIDGE) -> Calibration | None:
    """The calibration of one probe fitted on ``train_days`` (bool (T,)) only; None with fewer than
    ``MIN_TRAIN_DAYS`` observed training days (the network's prediction is then used unchanged)."""
    y_probe, pred, clim = (np.asarray(a, dtype=np.float64) for a in (y_probe, pred, clim))
    fit = np.asarray(train_days, dtype=bool) & np.isfinite(y_probe) & np.isfinite(pred) & np.isfinite(clim)
    if fit.sum() < MIN_TRAIN_DAYS:
        return None
    X = np.column_stack([clim, pred])
    mu, sd = X[fit].mean(axis=0), X[fit].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (X - mu) / sd
    A = np.column_stack([np.ones(len(Z)), Z])
    reg = np.diag([0.0, ridge, ridge]) * fit.sum()
    coef = np.linalg.solve(A[fit].T @ A[fit] + reg, A[fit].T @ y_probe[fit])
    return Calibration(coef, mu, sd)


def site_calibration(y_probe: np.ndarray, pred: np.ndarray, clim: np.ndarray, train_days: np.ndarray,
                     ridge: float = RIDGE) -> np.ndarray:
    """(T,) calibrated prediction (m3/m3) of one probe; ``train_days`` (bool (T,)) are the only days fitted.

    With fewer than ``MIN_TRAIN_DAYS`` observed training days the raw prediction is returned unchanged.
    """
    cal = fit_calibration(y_probe, pred, clim, train_days, ridge)
    return np.asarray(pred, dtype=np.float64) if cal is None else cal.apply(pred, clim)
