"""Derived model inputs: computed from the raw columns of the daily/probe tables (pure numpy, no I/O).

Raw features (``schema.FEATURES``) go into the network as the tables hold them; the *derived* features
below are computed from them by one function, :func:`derive`, for probes (``tensors.build_tensors``) and,
in the same array shape, for map pixels. Every name, unit and meaning is declared in ``DERIVED`` (and
``docs/data.md``). Arrays are (N, T): series (probes or pixels) first, days second; static features (N,).

**Fit days and leakage.** Some features need per-series reference values (the change-detection index's
dry and wet references, the incidence-angle slope, the series' mean backscatter). These come from the
series' own *inputs* (sigma0, angle: never SSM) on the **fit days** only: in known-site mode the days before
``protocol.split_date`` (the predicted period never enters), in unseen-site mode every day (no day is
held out in time; the test probe's SSM is never read). A series' features depend on that series' inputs
alone, never on another probe's, so a test probe leaks nothing into a training probe or back
(``tests/test_features.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilmoisture.schema import CORINE

IRRIGATED_CODES = (212,)       # CORINE 212 "Permanently irrigated land"
MIN_FIT_OBS = 10               # fewer valid sigma0 days on the fit days: no per-series reference
MIN_ANGLE_SPREAD_DEG = 1.0     # a slope needs angles at least this far apart (else the default slope)
SLOPE_BOUNDS_DB_PER_DEG = (-0.5, 0.1)   # a fitted slope outside this is implausible: the default is used


@dataclass(frozen=True)
class FeatureOptions:
    """How derived features are computed (params.yaml ``features``)."""

    reference_angle_deg: float = 40.0        # sigma0 is normalised to this incidence angle
    angle_slope_db_per_deg: float = -0.12    # default d(sigma0 dB)/d(angle) where a series' own slope is unknown
    cdi_percentiles: tuple[float, float] = (5.0, 95.0)   # dry and wet references of the change-detection index
    s1_age_cap_days: float = 30.0            # days since the last overpass are capped here (and before the first)


# name -> (kind, unit, meaning, raw inputs it needs)
DERIVED: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "sigma0_vv_db": ("dynamic", "dB", "10 log10(sigma0_vv) on overpass days", ("sigma0_vv",)),
    "sigma0_vh_db": ("dynamic", "dB", "10 log10(sigma0_vh) on overpass days", ("sigma0_vh",)),
    "vh_vv_db": ("dynamic", "dB", "cross-polarisation ratio sigma0_vh_db - sigma0_vv_db", ("sigma0_vv", "sigma0_vh")),
    "sigma0_vv_db_ref": ("dynamic", "dB", "sigma0_vv_db normalised to features.reference_angle_deg with the "
                         "series' own slope against the angle (fit days; default slope if unknown)",
                         ("sigma0_vv", "incidence_angle_deg")),
    "sigma0_vh_db_ref": ("dynamic", "dB", "sigma0_vh_db normalised to the reference angle (as sigma0_vv_db_ref)",
                         ("sigma0_vh", "incidence_angle_deg")),
    "cdi_vv": ("dynamic", "", "change-detection index (s - dry) / (wet - dry) of sigma0_vv_db_ref; dry/wet = "
               "features.cdi_percentiles of the series' own fit days", ("sigma0_vv", "incidence_angle_deg")),
    "s1_mask": ("dynamic", "", "1 on days with a valid sigma0_vv (overpass, not an outlier), else 0", ("sigma0_vv",)),
    "s1_age_days": ("dynamic", "days", "days since the last valid sigma0_vv, capped at features.s1_age_cap_days",
                    ("sigma0_vv",)),
    "lst_mask": ("dynamic", "", "1 on days with a MODIS LST value, else 0", ("lst_day_c",)),
    "sigma0_vv_db_mean": ("static", "dB", "mean of the series' sigma0_vv_db_ref over its fit days (its level)",
                          ("sigma0_vv", "incidence_angle_deg")),
    "vh_vv_db_mean": ("static", "dB", "mean of the series' vh_vv_db over its fit days", ("sigma0_vv", "sigma0_vh")),
    "irrigated": ("static", "", "1 where the CORINE class is irrigated (212), else 0", ("landcover_code",)),
}
for _code, _name in CORINE.items():  # one-hot land cover, one feature per class (the code is a category)
    DERIVED[f"lc_{_code}"] = ("static", "", f"1 where CORINE class is {_code} ({_name}), else 0", ("landcover_code",))
del _code, _name

# Group names a variant may list; each expands to its features in this order.
GROUPS: dict[str, tuple[str, ...]] = {"landcover_onehot": tuple(f"lc_{c}" for c in CORINE)}
# Raw inputs that are optional for a derived feature (used when present, else a documented fallback).
OPTIONAL_INPUTS = frozenset({"incidence_angle_deg"})


def expand(features: list[str]) -> list[str]:
    """A variant's feature list with group names (``landcover_onehot``) expanded, order kept."""
    out: list[str] = []
    for f in features:
        out.extend(GROUPS.get(f, (f,)))
    return out


def raw_inputs(features: list[str]) -> list[str]:
    """The raw columns the (expanded) ``features`` need, in first-use order (derived -> their inputs)."""
    out: list[str] = []
    for f in features:
        for r in (DERIVED[f][3] if f in DERIVED else (f,)):
            if r not in out:
                out.append(r)
    return out


def is_static(name: str) -> bool:
    """True for a derived feature with one value per series."""
    return name in DERIVED and DERIVED[name][0] == "static"


# --- the computations --------------------------------------------------------------------------------
def to_db(linear: np.ndarray) -> np.ndarray:
    """10 log10 of a linear power ratio; values <= 0 or NaN -> NaN."""
    a = np.asarray(linear, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, 10.0 * np.log10(np.where(a > 0, a, 1.0)), np.nan)


def _fit_mask(shape: tuple[int, int], fit_days: np.ndarray | None) -> np.ndarray:
    T = shape[1]
    m = np.ones(T, bool) if fit_days is None else np.asarray(fit_days, bool)
    if m.shape != (T,):
        raise ValueError(f"fit_days has shape {m.shape}, expected ({T},)")
    return np.broadcast_to(m[None, :], shape)


def angle_slope(db: np.ndarray, angle: np.ndarray | None, fit_days: np.ndarray | None,
                default: float) -> np.ndarray:
    """(N,) least-squares slope d(dB)/d(angle) of each series over its fit days (``default`` where unknown)."""
    N = db.shape[0]
    if angle is None:
        return np.full(N, default)
    ok = np.isfinite(db) & np.isfinite(angle) & _fit_mask(db.shape, fit_days)
    n = ok.sum(axis=1)
    a = np.where(ok, angle, 0.0)
    s = np.where(ok, db, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        am = a.sum(axis=1) / np.maximum(n, 1)
        sm = s.sum(axis=1) / np.maximum(n, 1)
        cov = (np.where(ok, (a - am[:, None]) * (s - sm[:, None]), 0.0)).sum(axis=1)
        var = (np.where(ok, (a - am[:, None]) ** 2, 0.0)).sum(axis=1)
        slope = cov / var
        amin = np.where(ok, angle, np.inf).min(axis=1)
        amax = np.where(ok, angle, -np.inf).max(axis=1)
    lo, hi = SLOPE_BOUNDS_DB_PER_DEG
    good = (n >= MIN_FIT_OBS) & (amax - amin >= MIN_ANGLE_SPREAD_DEG) & np.isfinite(slope) & (slope >= lo) & (slope <= hi)
    return np.where(good, slope, default)


def angle_normalised(db: np.ndarray, angle: np.ndarray | None, fit_days: np.ndarray | None,
                     opt: FeatureOptions) -> np.ndarray:
    """(N, T) backscatter in dB at ``opt.reference_angle_deg``: s - slope * (angle - ref).

    Without an angle (column absent) the dB values are returned unchanged; a day with sigma0 but no
    angle keeps its dB value (no correction is better than a guessed one).
    """
    if angle is None:
        return db.copy()
    slope = angle_slope(db, angle, fit_days, opt.angle_slope_db_per_deg)
    corr = slope[:, None] * (angle - opt.reference_angle_deg)
    return np.where(np.isfinite(corr), db - corr, db)


def change_detection_index(s: np.ndarray, fit_days: np.ndarray | None, percentiles: tuple[float, float]) -> np.ndarray:
    """(N, T) (s - dry) / (wet - dry), dry/wet = the series' own percentiles of ``s`` on its fit days.

    A series with fewer than ``MIN_FIT_OBS`` fit-day values, or no spread, gets NaN (missing, 0 after
    normalisation). Values outside [0, 1] are kept (a day drier or wetter than the references).
    """
    lo_p, hi_p = percentiles
    ref = np.where(_fit_mask(s.shape, fit_days), s, np.nan)
    n = np.isfinite(ref).sum(axis=1)
    out = np.full(s.shape, np.nan)
    rows = np.flatnonzero(n >= MIN_FIT_OBS)
    if len(rows):
        dry = np.nanpercentile(ref[rows], lo_p, axis=1)
        wet = np.nanpercentile(ref[rows], hi_p, axis=1)
        span = wet - dry
        okr = span > 1e-6
        rr = rows[okr]
        out[rr] = (s[rr] - dry[okr, None]) / span[okr, None]
    return out


def age_days(valid: np.ndarray, cap: float) -> np.ndarray:
    """(N, T) days since the last True of ``valid`` (0 on such a day), ``cap`` before the first and beyond it."""
    N, T = valid.shape
    idx = np.where(valid, np.arange(T)[None, :], -1)
    last = np.maximum.accumulate(idx, axis=1)
    age = np.where(last >= 0, np.arange(T)[None, :] - last, np.inf)
    return np.minimum(age, cap).astype(np.float64)


def _series_mean(a: np.ndarray, fit_days: np.ndarray | None) -> np.ndarray:
    ref = np.where(_fit_mask(a.shape, fit_days), a, np.nan)
    n = np.isfinite(ref).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(ref, axis=1) / np.maximum(n, 1), np.nan)


def derive(names: list[str], dynamic: dict[str, np.ndarray], static: dict[str, np.ndarray],
           fit_days: np.ndarray | None = None, opt: FeatureOptions | None = None) -> dict[str, np.ndarray]:
    """The derived features ``names``: dynamic ones (N, T), static ones (N,).

    ``dynamic`` maps raw daily columns to (N, T) arrays (sigma0 linear), ``static`` raw per-series columns to
    (N,) arrays (``landcover_code``). ``fit_days`` (T,) bool: the days references may come from (None = all).
    Raises KeyError naming a required raw input that is missing (callers turn it into a DataError).
    """
    opt = opt or FeatureOptions()
    cache: dict[str, np.ndarray] = {}

    def raw(name: str) -> np.ndarray | None:
        if name in dynamic:
            return np.asarray(dynamic[name], dtype=np.float64)
        if name in OPTIONAL_INPUTS:
            return None
        raise KeyError(name)

    def db(pol: str) -> np.ndarray:
        key = f"sigma0_{pol}_db"
        if key not in cache:
            cache[key] = to_db(raw(f"sigma0_{pol}"))
        return cache[key]

    def ref(pol: str) -> np.ndarray:
        key = f"sigma0_{pol}_db_ref"
        if key not in cache:
            cache[key] = angle_normalised(db(pol), raw("incidence_angle_deg"), fit_days, opt)
        return cache[key]

    def lc() -> np.ndarray:
        if "landcover_code" not in static:
            raise KeyError("landcover_code")
        return np.asarray(static["landcover_code"], dtype=np.float64)

    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("sigma0_vv_db", "sigma0_vh_db"):
            v = db(name.split("_")[1])
        elif name == "vh_vv_db":
            v = db("vh") - db("vv")
        elif name in ("sigma0_vv_db_ref", "sigma0_vh_db_ref"):
            v = ref(name.split("_")[1])
        elif name == "cdi_vv":
            v = change_detection_index(ref("vv"), fit_days, opt.cdi_percentiles)
        elif name == "s1_mask":
            v = np.isfinite(raw("sigma0_vv")).astype(np.float64)
        elif name == "s1_age_days":
            v = age_days(np.isfinite(raw("sigma0_vv")), opt.s1_age_cap_days)
        elif name == "lst_mask":
            v = np.isfinite(raw("lst_day_c")).astype(np.float64)
        elif name == "sigma0_vv_db_mean":
            v = _series_mean(ref("vv"), fit_days)
        elif name == "vh_vv_db_mean":
            v = _series_mean(db("vh") - db("vv"), fit_days)
        elif name == "irrigated":
            c = lc()
            v = np.where(np.isfinite(c), np.isin(c, IRRIGATED_CODES).astype(np.float64), np.nan)
        elif name.startswith("lc_") and name in DERIVED:
            c = lc()
            v = np.where(np.isfinite(c), (c == float(name[3:])).astype(np.float64), np.nan)
        else:
            raise ValueError(f"{name!r} is not a derived feature")  # programming error: config checks names
        out[name] = v
    return out
