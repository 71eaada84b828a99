"""The repeats of a fold as one ensemble prediction with an interval (pure, no I/O).

Each test probe is predicted by ``protocol.repeats`` models (different seeds and, for unseen sites,
different training/validation probes). Their mean is the ensemble prediction. The interval is *split
conformal* on data the members never trained on:

* unseen site: the residuals (observed - predicted, m3/m3) of the members on their own **validation
  probes** (never the test probe); the interval is ``ensemble + [q_lo, q_hi]`` of those residuals;
* known site: there are no validation probes; the residuals of the calibrated ensemble on the probe's own
  **training period** (days before the split) are used. These are in-sample for the network, so expect
  coverage below nominal; the measured coverage is reported beside the nominal value.

Coverage (share of observed test days inside the interval) is reported beside MAE: an interval is
honest when its coverage on test days is close to ``protocol.interval``.
"""
from __future__ import annotations

import numpy as np

MIN_RESIDUALS = 20   # fewer residuals: no interval (NaN bounds)


def ensemble_mean(members: np.ndarray) -> np.ndarray:
    """(T,) NaN-aware mean of (R, T) member predictions."""
    m = np.asarray(members, dtype=np.float64)
    cnt = np.isfinite(m).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.nansum(m, axis=0) / np.maximum(cnt, 1), np.nan)


def residual_bounds(residuals: np.ndarray, coverage: float) -> tuple[float, float]:
    """(q_lo, q_hi) quantiles of observed - predicted so that ``coverage`` of them lie inside."""
    r = np.asarray(residuals, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size < MIN_RESIDUALS:
        return float("nan"), float("nan")
    a = (1.0 - coverage) / 2.0
    n = r.size
    # finite-sample conformal correction: the ceil((n + 1)(1 - a)) / n quantile
    hi_q = min(1.0, np.ceil((n + 1) * (1.0 - a)) / n)
    lo_q = max(0.0, np.floor((n + 1) * a) / n)
    return float(np.quantile(r, lo_q)), float(np.quantile(r, hi_q))


def interval(pred: np.ndarray, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) (T,) of the ensemble prediction; SSM cannot be negative, so the lower bound is >= 0."""
    p = np.asarray(pred, dtype=np.float64)
    return np.maximum(p + bounds[0], 0.0), p + bounds[1]


def coverage(obs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of observed days with lower <= obs <= upper (NaN without any observed day or bound)."""
    o, lo, hi = (np.asarray(a, dtype=np.float64) for a in (obs, lower, upper))
    ok = np.isfinite(o) & np.isfinite(lo) & np.isfinite(hi)
    return float(np.mean((o[ok] >= lo[ok]) & (o[ok] <= hi[ok]))) if ok.any() else float("nan")
