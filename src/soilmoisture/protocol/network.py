"""Network-informed estimation (``protocol.method: network``): the satellite model and the network's own
same-day readings together. Pure numpy + scikit-learn, no I/O.

For a site without a probe (the left-out probe of a fold) on day t:

    estimate(t) = L + w * sd * z_net(t) + (1 - w) * (s(t) - mean(s))
    L           = lam * mean(s) + (1 - lam) * mean level of the pool probes

* ``s(t)`` is the satellite model's estimate at the site (m3/m3), ``mean(s)`` its mean over the days;
* the **pool** is the probes whose readings may be used: in the protocol the fold's training probes, exactly
  the probes the network-day baseline averages (the test probe's own readings never enter, on any day);
* ``z_net(t)`` is the pool's standardised anomalies ``(y_q(t) - level_q) / sd_q`` interpolated to the site by
  Gaussian-process regression (scikit-learn; Matern kernel over distance + a white-noise nugget, fitted on the
  pool's days jointly). Far from every probe, or with few probes, the GP shrinks ``z_net`` towards 0 and its
  standard deviation grows: the network's information fades with distance;
* ``sd`` is the site's expected day-to-day spread, ``L`` times the pool's median coefficient of variation
  (wetter soils swing more);
* ``w`` and ``lam`` come from a small grid, chosen per fold on that fold's validation probes (never the test
  probe): how much of the dynamics comes from the network vs the satellite, and of the level from the
  satellite vs the pool's mean level.

Before any of this, each pool probe's readings are screened (:func:`screen`): a probe that flatlines (the same
reading for ``flat_days`` days in a row) or jumps away from what the rest of the network does that day (its
anomaly departs from the pool median by more than ``jump_k`` robust SDs of its usual departure) loses those
readings, so one failing probe cannot drag its neighbours.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_W, DEFAULT_LAM = 1.0, 0.5      # without validation probes to choose on
MIN_DAYS = 30                          # readings a pool probe needs to have a level and a spread
GP_FIT_DAYS = 400                      # days (evenly spaced) the GP's kernel is fitted on
DEFAULT_LENGTH_KM = 10.0


@dataclass(frozen=True)
class ScreenResult:
    """Readings kept after screening and how many were removed, by reason."""

    y: np.ndarray             # (P, T) with removed readings set to NaN
    flatline: int
    jump: int


def _runs_of_equal(v: np.ndarray, n: int, tol: float = 1e-9) -> np.ndarray:
    """(T,) True on days that belong to a run of >= ``n`` equal consecutive (observed) readings."""
    out = np.zeros(len(v), dtype=bool)
    start = 0
    for t in range(1, len(v) + 1):
        if t == len(v) or not (np.isfinite(v[t]) and np.isfinite(v[t - 1]) and abs(v[t] - v[t - 1]) <= tol):
            if t - start >= n and np.isfinite(v[start]):
                out[start:t] = True
            start = t
    return out


def screen(y: np.ndarray, idx: np.ndarray, *, flat_days: int = 7, jump_k: float = 6.0) -> ScreenResult:
    """Remove flatlined and jumping readings of the probes ``idx`` (other rows of ``y`` untouched)."""
    y = np.array(y, dtype=np.float64, copy=True)
    idx = np.asarray(idx, dtype=np.int64)
    n_flat = n_jump = 0
    for i in idx:
        bad = _runs_of_equal(y[i], flat_days)
        n_flat += int(bad.sum())
        y[i, bad] = np.nan
    if len(idx) >= 3:
        z, _, _ = anomalies(y, idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(z, axis=0)
        for k, i in enumerate(idx):
            d = z[k] - med
            ok = np.isfinite(d)
            if ok.sum() < MIN_DAYS:
                continue
            centre = np.median(d[ok])
            mad = 1.4826 * np.median(np.abs(d[ok] - centre))
            if mad <= 0:
                continue
            bad = ok & (np.abs(d - centre) > jump_k * mad)
            n_jump += int(bad.sum())
            y[i, bad] = np.nan
    return ScreenResult(y, n_flat, n_jump)


def anomalies(y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised anomalies (len(idx), T) of probes ``idx``, with their levels and spreads (m3/m3).

    A probe with fewer than ``MIN_DAYS`` readings (or no spread) has NaN anomalies: it does not inform.
    """
    v = np.asarray(y, dtype=np.float64)[np.asarray(idx, dtype=np.int64)]
    n = np.isfinite(v).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmean(v, axis=1)
        sd = np.nanstd(v, axis=1)
    good = (n >= MIN_DAYS) & (sd > 1e-6)
    z = np.where(good[:, None], (v - level[:, None]) / np.where(good, sd, 1.0)[:, None], np.nan)
    return z, np.where(good, level, np.nan), np.where(good, sd, np.nan)


def _kernel(length_km: float) -> object:
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    return (ConstantKernel(0.8, (0.05, 5.0)) * Matern(length_scale=length_km, length_scale_bounds=(0.05, 2000.0), nu=1.5)
            + WhiteKernel(0.2, (1e-3, 5.0)))


def fit_kernel(xy: np.ndarray, z: np.ndarray) -> object:
    """The GP kernel of the pool's standardised anomalies (xy: (n, 2) km; z: (n, T)), fitted on the days every
    probe observed (at most ``GP_FIT_DAYS`` of them, evenly spaced); the default kernel where that is too few."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor

    complete = np.flatnonzero(np.isfinite(z).all(axis=0))
    if len(xy) < 2 or len(complete) < 10:
        return _kernel(DEFAULT_LENGTH_KM)
    days = complete[np.linspace(0, len(complete) - 1, min(GP_FIT_DAYS, len(complete))).astype(int)]
    gp = GaussianProcessRegressor(kernel=_kernel(DEFAULT_LENGTH_KM), normalize_y=False, n_restarts_optimizer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(xy, z[:, days])
    return gp.kernel_


def interpolate(xy: np.ndarray, z: np.ndarray, targets: np.ndarray, kernel: object | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """GP prediction of the standardised anomaly at ``targets`` (m, 2) km on every day: mean and SD, (m, T).

    Days are grouped by which pool probes observed them; a day without any reading gets 0 (the prior mean)
    and the prior SD.
    """
    from sklearn.gaussian_process import GaussianProcessRegressor

    xy, z, targets = np.asarray(xy, float), np.asarray(z, float), np.asarray(targets, float).reshape(-1, 2)
    kernel = kernel if kernel is not None else fit_kernel(xy, z)
    T = z.shape[1]
    mean = np.zeros((len(targets), T))
    prior_sd = float(np.sqrt(kernel(targets[:1])[0, 0])) if len(targets) else 1.0
    sd = np.full((len(targets), T), prior_sd)
    avail = np.isfinite(z)
    patterns, inverse = np.unique(avail.T, axis=0, return_inverse=True)
    for k, pat in enumerate(patterns):
        if not pat.any():
            continue
        days = np.flatnonzero(inverse.ravel() == k)
        gp = GaussianProcessRegressor(kernel=kernel, optimizer=None, normalize_y=False)
        gp.fit(xy[pat], z[np.ix_(pat, days)])
        m, s = gp.predict(targets, return_std=True)
        mean[:, days] = np.asarray(m).reshape(len(targets), len(days))
        s = np.asarray(s)
        sd[:, days] = s.reshape(len(targets), -1) if s.ndim > 1 else s[:, None]
    return mean, sd


@dataclass(frozen=True)
class Pool:
    """What the network contributes for a fold: the pool probes' anomalies, levels, spreads and positions."""

    xy: np.ndarray            # (n, 2) km
    z: np.ndarray             # (n, T) standardised anomalies (screened)
    level: np.ndarray         # (n,) m3/m3
    sd: np.ndarray            # (n,) m3/m3
    kernel: object
    flatline: int
    jump: int

    @property
    def mean_level(self) -> float:
        return float(np.nanmean(self.level)) if np.isfinite(self.level).any() else float("nan")

    @property
    def cv(self) -> float:
        """Median coefficient of variation (sd / level) of the pool probes."""
        r = self.sd / self.level
        r = r[np.isfinite(r)]
        return float(np.median(r)) if r.size else 0.0


def make_pool(y: np.ndarray, idx: np.ndarray, xy_km: np.ndarray, *, flat_days: int = 7, jump_k: float = 6.0) -> Pool:
    """Screen the readings of the pool probes ``idx``, standardise them and fit the GP kernel on them."""
    idx = np.asarray(idx, dtype=np.int64)
    scr = screen(y, idx, flat_days=flat_days, jump_k=jump_k)
    z, level, sd = anomalies(scr.y, idx)
    keep = np.isfinite(level)
    xy = np.asarray(xy_km, dtype=float)[idx][keep]
    z, level, sd = z[keep], level[keep], sd[keep]
    return Pool(xy, z, level, sd, fit_kernel(xy, z), scr.flatline, scr.jump)


def components(pool: Pool, sat: np.ndarray, xy_targets: np.ndarray) -> dict[str, np.ndarray]:
    """The pieces the estimate is combined from, for sites ``xy_targets`` (m, 2) with satellite series (m, T)."""
    sat = np.asarray(sat, dtype=np.float64).reshape(len(xy_targets), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sat_mean = np.nanmean(sat, axis=1)
    if len(pool.level):
        zhat, zsd = interpolate(pool.xy, pool.z, xy_targets, pool.kernel)
    else:
        zhat, zsd = np.zeros_like(sat), np.ones_like(sat)
    return {"sat": sat, "sat_mean": sat_mean, "zhat": zhat, "zsd": zsd}


def combine(comp: dict[str, np.ndarray], pool: Pool, w: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The estimate (m, T) and its 1-SD network uncertainty (m, T; the GP's SD times the site's spread)."""
    pool_level = pool.mean_level if np.isfinite(pool.mean_level) else 0.0
    level = lam * comp["sat_mean"] + (1 - lam) * pool_level
    level = np.where(np.isfinite(level), level, comp["sat_mean"])
    spread = np.maximum(level, 0.0) * pool.cv
    est = level[:, None] + w * spread[:, None] * comp["zhat"] + (1 - w) * (comp["sat"] - comp["sat_mean"][:, None])
    return est, spread[:, None] * comp["zsd"]


def choose(comps: list[dict[str, np.ndarray]], obs: list[np.ndarray], pool: Pool, *,
           w_grid: tuple[float, ...] = GRID, lam_grid: tuple[float, ...] = GRID) -> tuple[float, float, float]:
    """(w, lam, MAE) minimising the mean absolute error over the given (validation) sites, searched over the
    grids (a one-value grid fixes that weight); without sites: the defaults (or the fixed values)."""
    if not comps:
        return (w_grid[0] if len(w_grid) == 1 else DEFAULT_W, lam_grid[0] if len(lam_grid) == 1 else DEFAULT_LAM,
                float("nan"))
    best, best_mae = (float(w_grid[0]), float(lam_grid[0]), float("nan")), np.inf
    for w in w_grid:
        for lam in lam_grid:
            errs = []
            for c, o in zip(comps, obs):
                est, _ = combine(c, pool, w, lam)
                e = np.abs(est - np.asarray(o, dtype=np.float64).reshape(est.shape))
                errs.append(e[np.isfinite(e)])
            e = np.concatenate(errs)
            if e.size and e.mean() < best_mae - 1e-12:
                best_mae, best = float(e.mean()), (float(w), float(lam), float(e.mean()))
    return best
