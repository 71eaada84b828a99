"""Skill metrics ``f(obs, pred) -> float`` on observed days only (names as in pytesmo).

Both arguments are SSM in m3/m3 (any shape, flattened); pairs where either value is NaN are
dropped first, so every metric is computed on the same days. With no pair left a metric is NaN.
The thesis reports MAE only (3.3.3); RMSE, unbiased RMSE, bias and Pearson r are the field's
standard set and are added here.
"""
from __future__ import annotations

import numpy as np


def _pairs(obs: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.asarray(obs, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if o.shape != p.shape:
        raise ValueError(f"obs and pred differ in size: {o.shape} vs {p.shape}")
    ok = np.isfinite(o) & np.isfinite(p)
    return o[ok], p[ok]


def n_days(obs: np.ndarray, pred: np.ndarray) -> float:
    """Number of days with both an observation and a prediction."""
    return float(_pairs(obs, pred)[0].size)


def mae(obs: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error (m3/m3), the thesis' metric (3.3.3)."""
    o, p = _pairs(obs, pred)
    return float(np.mean(np.abs(p - o))) if o.size else float("nan")


def rmse(obs: np.ndarray, pred: np.ndarray) -> float:
    """Root mean square error (m3/m3)."""
    o, p = _pairs(obs, pred)
    return float(np.sqrt(np.mean((p - o) ** 2))) if o.size else float("nan")


def bias(obs: np.ndarray, pred: np.ndarray) -> float:
    """Mean of pred - obs (m3/m3); positive = overestimation."""
    o, p = _pairs(obs, pred)
    return float(np.mean(p - o)) if o.size else float("nan")


def ubrmse(obs: np.ndarray, pred: np.ndarray) -> float:
    """Unbiased RMSE (m3/m3): RMSE after removing each series' mean, sqrt(rmse^2 - bias^2)."""
    o, p = _pairs(obs, pred)
    if not o.size:
        return float("nan")
    d = (p - p.mean()) - (o - o.mean())
    return float(np.sqrt(np.mean(d ** 2)))


def pearson_r(obs: np.ndarray, pred: np.ndarray) -> float:
    """Pearson correlation coefficient; NaN with fewer than 2 pairs or a constant series."""
    o, p = _pairs(obs, pred)
    if o.size < 2:
        return float("nan")
    if np.ptp(o) == 0 or np.ptp(p) == 0:  # a constant series (std would be rounding noise, not 0)
        return float("nan")
    so, sp = o.std(), p.std()
    return float(np.mean((o - o.mean()) * (p - p.mean())) / (so * sp))


# name -> function, in the order of ``tracking.METRICS``
METRIC_FUNCTIONS = {"mae": mae, "rmse": rmse, "ubrmse": ubrmse, "bias": bias, "pearson_r": pearson_r,
                    "n_days": n_days}


def all_metrics(obs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric of ``METRIC_FUNCTIONS`` on the same observed days."""
    return {name: f(obs, pred) for name, f in METRIC_FUNCTIONS.items()}
