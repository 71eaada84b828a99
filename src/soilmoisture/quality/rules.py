"""Data rules shared by every input path (thesis 3.2): pure array functions, no file access.

Harmonise applies them per probe (its daily table), maps per pixel (:mod:`soilmoisture.mapping.inputs`):
one implementation, so a probe's series and its pixel's series cannot drift apart (STYLE: one input path).
"""
from __future__ import annotations

import numpy as np


def sigma0_outliers(sigma0: np.ndarray, zscore: float, sigma0_max: float) -> np.ndarray:
    """Boolean (D, N) mask of sigma0 (linear) to remove, per column (a probe or a pixel) over its series axis 0.

    Thesis 3.2.2: |sigma0 - mean| / std > ``zscore`` (corner reflectors; sample std, ddof=1 as
    scipy.stats.zscore(ddof=1); fewer than 2 values or std 0: no z-score outlier), then whatever is still
    above ``sigma0_max``. NaN values are never outliers.
    """
    s = np.asarray(sigma0, np.float64)
    ok = np.isfinite(s)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, s, 0.0).sum(axis=0) / n
        var = np.where(ok, (s - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
        std = np.sqrt(var)
        z = (s - mean) / np.where(std > 0, std, np.nan)
    out = np.abs(z) > zscore                      # NaN compares False
    out |= (~out) & (s > sigma0_max)
    return out


def s1_impossible(values: np.ndarray) -> np.ndarray:
    """Boolean mask of Sentinel-1 values that cannot be: linear sigma0 (VV, VH) <= 0 and incidence angle <= 0 deg.

    Zero bytes (a file allocated at full size and never filled) read as exactly these; thermal-noise removal
    leaves slightly negative sigma0 over dark surfaces. Masked (NaN) before anything else reads them; NaN is
    never impossible. Apply to linear values (after a dB conversion every value is positive).
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(values, np.float64) <= 0.0


__all__ = ["s1_impossible", "sigma0_outliers"]
