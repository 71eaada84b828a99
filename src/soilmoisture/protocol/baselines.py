"""Simple baselines, scored by the same metric code on the same days as the model (DESIGN: two modes).

* ``train_mean``: one number, the mean observed SSM of the training probes (m3/m3);
* ``network_day``: the mean SSM of the same network's other probes on the same day; unseen_site uses only
  the fold's training probes; known_site uses the network's other probes (their same-day values exist in a
  gap-filling setting, though the model never sees them). Days with no such value fall back to the mean of
  all those probes on that day, then to ``train_mean``;
* ``climatology`` (known_site only): the probe's own day-of-year climatology from its training period,
  a +-15-day circular window; days without one fall back to the probe's training mean, then ``train_mean``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from soilmoisture.tracking import BASELINES  # noqa: F401 - their MLflow names live in tracking

CLIMATOLOGY_WINDOW_DAYS = 15


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    cnt = np.isfinite(a).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.nansum(a, axis=axis) / np.maximum(cnt, 1), np.nan)


def train_mean(y: np.ndarray, train_idx: np.ndarray) -> float:
    """Mean observed SSM (m3/m3) over the training probes (NaN-aware)."""
    v = y[np.asarray(train_idx, dtype=np.int64)]
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def network_day(y: np.ndarray, pool_idx: np.ndarray, networks: list[str], network: str, fallback: float) -> np.ndarray:
    """(T,) daily mean SSM of the pool's probes in ``network`` (then of the whole pool, then ``fallback``)."""
    pool = np.asarray(pool_idx, dtype=np.int64)
    same = np.array([i for i in pool if networks[i] == network], dtype=np.int64)
    out = _nanmean(y[same], axis=0) if len(same) else np.full(y.shape[1], np.nan)
    if len(pool):
        out = np.where(np.isfinite(out), out, _nanmean(y[pool], axis=0))
    return np.where(np.isfinite(out), out, fallback).astype(np.float64)


def climatology_table(y_probe: np.ndarray, dates: pd.DatetimeIndex, train_days: np.ndarray, fallback: float,
                      window: int = CLIMATOLOGY_WINDOW_DAYS) -> np.ndarray:
    """(366,) the probe's day-of-year climatology (index = day of year - 1) from its observations on ``train_days``.

    Days of year without a value in the window hold the probe's own training mean (``fallback`` without one),
    so a known-site model can store the table and look up any date (``model/site.py``).
    """
    doy = np.asarray(dates.day_of_year) - 1
    obs = np.where(np.asarray(train_days, dtype=bool), y_probe, np.nan)
    sums, cnts = np.zeros(366), np.zeros(366)
    ok = np.isfinite(obs)
    np.add.at(sums, doy[ok], obs[ok])
    np.add.at(cnts, doy[ok], 1)
    kernel = np.ones(2 * window + 1)
    wrap = lambda a: np.convolve(np.concatenate([a[-window:], a, a[:window]]), kernel, mode="valid")  # noqa: E731
    s, c = wrap(sums), wrap(cnts)
    own = float(np.nanmean(obs)) if ok.any() else fallback
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), own).astype(np.float64)


def climatology(y_probe: np.ndarray, dates: pd.DatetimeIndex, train_days: np.ndarray, fallback: float,
                window: int = CLIMATOLOGY_WINDOW_DAYS) -> np.ndarray:
    """(T,) the probe's day-of-year climatology from its own observations on ``train_days`` (bool (T,))."""
    table = climatology_table(y_probe, dates, train_days, fallback, window)
    return table[np.asarray(dates.day_of_year) - 1]
