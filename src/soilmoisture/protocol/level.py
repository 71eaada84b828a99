"""Anomaly target + level model (``protocol.target: anomaly``): pure numpy, no I/O.

On real networks most unseen-site error is each probe's *level* (its mean SSM; SD of the REMEDHUS probe
means ≈ 0.095 m3/m3), which a network trained on absolute SSM must guess from inputs it sees for a handful of
probes. Here the two are split:

* the network learns the **anomaly** ``ssm - level_p``, where ``level_p`` is probe p's own mean observed SSM on
  its fit days (training probes only ever use their own, observed level);
* the **level** of a probe the model has not seen is predicted by a ridge regression of the training probes'
  levels on static inputs (``protocol.level_features``, e.g. ``sigma0_vv_db_mean``, ``irrigated``, texture),
  fitted on that fold's training probes only; with no level features it is the training probes' mean level.
  A known site's level is its own training-period mean (its past is known, DESIGN "two questions").

Prediction = level + predicted anomaly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilmoisture.protocol.folds import CONSTANT_STD


def probe_levels(y: np.ndarray, fit_days: np.ndarray | None = None) -> np.ndarray:
    """(P,) mean observed SSM (m3/m3) of each probe on ``fit_days`` (None = all days); NaN without one."""
    v = np.asarray(y, dtype=np.float64)
    if fit_days is not None:
        v = np.where(np.asarray(fit_days, bool)[None, :], v, np.nan)
    n = np.isfinite(v).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(v, axis=1) / np.maximum(n, 1), np.nan)


@dataclass(frozen=True)
class LevelModel:
    """level = intercept + coef . (z - mean) / std, fitted on training probes (m3/m3)."""

    intercept: float
    coef: np.ndarray        # (L,)
    mean: np.ndarray        # (L,)
    std: np.ndarray         # (L,)

    def predict(self, z: np.ndarray) -> np.ndarray:
        """(N,) levels of series with static level inputs ``z`` (N, L); a missing input counts as its mean."""
        zz = np.asarray(z, dtype=np.float64).reshape(len(z), len(self.coef))
        s = np.nan_to_num((zz - self.mean) / self.std, nan=0.0)
        return self.intercept + s @ self.coef

    def to_dict(self) -> dict:
        return {"intercept": float(self.intercept), "coef": [float(v) for v in self.coef],
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


def fit_level(levels: np.ndarray, z: np.ndarray, idx: np.ndarray, ridge: float) -> LevelModel:
    """Ridge regression of ``levels[idx]`` on ``z[idx]`` (standardised over ``idx``; intercept not penalised).

    ``ridge`` is the penalty per training probe on standardised inputs: larger shrinks toward the mean level.
    Probes without a level (NaN) are left out; a constant input gets coefficient 0.
    """
    idx = np.asarray(idx, dtype=np.int64)
    lv = np.asarray(levels, dtype=np.float64)[idx]
    zz = np.asarray(z, dtype=np.float64).reshape(len(levels), -1)[idx]
    ok = np.isfinite(lv)
    lv, zz = lv[ok], zz[ok]
    L = zz.shape[1]
    if lv.size == 0:
        return LevelModel(float("nan"), np.zeros(L), np.zeros(L), np.ones(L))
    with np.errstate(invalid="ignore"):
        mean = np.where(np.isfinite(zz).any(axis=0), np.nanmean(np.where(np.isfinite(zz), zz, np.nan), axis=0), 0.0) \
            if L else np.zeros(0)
        std = np.nanstd(zz, axis=0) if L else np.ones(0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, CONSTANT_STD)   # constant input: no effect
    s = np.nan_to_num((zz - mean) / std, nan=0.0)
    if L == 0:
        return LevelModel(float(lv.mean()), np.zeros(0), mean, std)
    A = np.column_stack([np.ones(len(s)), s])
    reg = np.diag([0.0] + [ridge * len(s)] * L)
    coef = np.linalg.lstsq(A.T @ A + reg, A.T @ lv, rcond=None)[0]
    return LevelModel(float(coef[0]), coef[1:], mean, std)
