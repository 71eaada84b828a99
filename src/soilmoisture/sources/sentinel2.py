"""Sentinel-2 L2A GeoTIFFs: NDVI and NDWI at each probe's pixel on observation days.

Thesis 3.2.3: pixels with cloud or snow probability >= 90 % (``ingest.s2_mask_probability``) are
masked before the indices are computed; NDVI = (B8A-B04)/(B8A+B04), NDWI = (B8A-B12)/(B8A+B12).
The linear interpolation (at most ``vi_max_gap_days`` from an observation) is done in
:func:`interpolate_limited`, called by the harmonisation on the full daily range.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.sources._raster import clip_files, no_probe_error, open_raster, raster_env, sample_covered

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "sentinel2/<region>/[<area>/]S2<A|B>_MSIL2A_<YYYYmmddTHHMMSS>_<TILE>.tif"
NAME_RE = re.compile(r"^S2[AB]_MSIL2A_(\d{8}T\d{6})_[^.]+\.tif$")
DATE_FORMAT = "%Y%m%dT%H%M%S"
BANDS = {1: "B04", 2: "B8A", 3: "B12", 4: "CLD", 5: "SNW"}
UNITS = {"B04": "reflectance x 10000", "B8A": "reflectance x 10000", "B12": "reflectance x 10000",
         "CLD": "%", "SNW": "%"}
NODATA = 0


def scene_files(folder: Path) -> list[Path]:
    """Sentinel-2 scenes in one region folder (the region's own grid, e.g. its mapping tile), sorted by name (date)."""
    return sorted(p for p in Path(folder).glob("S2*.tif") if NAME_RE.match(p.name))


def all_scene_files(folder: Path) -> list[Path]:
    """The region folder's scenes and those clipped to its areas (``<folder>/<area>/``), sorted by name."""
    return clip_files(folder, "S2*.tif", NAME_RE)


def _band_index(src: object, path: Path) -> dict[str, int]:
    """Band name -> 0-based index, from the band descriptions when set, else the declared order."""
    desc = [d.upper() if d else None for d in src.descriptions]  # type: ignore[attr-defined]
    if all(desc):
        idx = {d: i for i, d in enumerate(desc)}
    else:
        idx = {name: i - 1 for i, name in BANDS.items() if i <= src.count}  # type: ignore[attr-defined]
    missing = [b for b in BANDS.values() if b not in idx]
    if missing:
        raise DataError(path, f"missing band(s) {', '.join(missing)}", field=",".join(missing))
    return idx


def _date(src: object, path: Path) -> pd.Timestamp:
    tag = src.tags().get("ACQUISITION_TIME")  # type: ignore[attr-defined]
    try:
        if tag:
            ts = pd.Timestamp(tag)
            return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).normalize()
        return pd.to_datetime(NAME_RE.match(path.name).group(1), format=DATE_FORMAT).normalize()  # type: ignore[union-attr]
    except (ValueError, AttributeError) as e:
        raise DataError(path, f"no acquisition date in tag ACQUISITION_TIME or file name ({e})") from None


def indices(b04: np.ndarray, b8a: np.ndarray, b12: np.ndarray, cld: np.ndarray, snw: np.ndarray,
            mask_probability: float) -> tuple[np.ndarray, np.ndarray]:
    """NDVI, NDWI from reflectances (any common scale); NaN where cloud or snow >= mask_probability %."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (b8a - b04) / (b8a + b04)
        ndwi = (b8a - b12) / (b8a + b12)
    masked = (cld >= mask_probability) | (snw >= mask_probability) | ~np.isfinite(cld) | ~np.isfinite(snw)
    ndvi = np.where(masked, np.nan, ndvi)
    ndwi = np.where(masked, np.nan, ndwi)
    return ndvi, ndwi


def read_sentinel2(folder: Path, probes: pd.DataFrame, mask_probability: float = 90.0) -> pd.DataFrame:
    """Every scene in ``folder`` and its area sub-folders sampled at the probes -> ``probe_id, date, ndvi, ndwi``
    (observations only). A scene covering only some probes gives the others nothing that day; one covering none
    of them is refused."""
    files = all_scene_files(folder)
    ids = probes["probe_id"].to_numpy()
    dates, ndvis, ndwis = [], [], []
    seen: dict[pd.Timestamp, np.ndarray] = {}
    with raster_env():
        for path in files:
            with open_raster(path) as src:
                idx = _band_index(src, path)
                date = _date(src, path)
                vals, covered = sample_covered(src, probes, path)
                if not covered.any():
                    raise no_probe_error(src, probes, path)
                nodata = src.nodata
            refl = {b: vals[:, idx[b]] for b in ("B04", "B8A", "B12")}
            prob = {b: vals[:, idx[b]] for b in ("CLD", "SNW")}
            if nodata is not None and not np.isnan(nodata):
                # nodata 0 is meant for the reflectances; a probability of 0 % is valid, restore it.
                prob = {b: np.where(np.isnan(v) & covered, float(nodata), v) for b, v in prob.items()}
            ndvi, ndwi = indices(refl["B04"], refl["B8A"], refl["B12"], prob["CLD"], prob["SNW"], mask_probability)
            seen[date] = seen.get(date, np.zeros(len(ids), bool)) | covered
            dates.append(date)
            ndvis.append(ndvi)
            ndwis.append(ndwi)
    if not files:
        log.warning("no Sentinel-2 scene in %s", folder)
        return pd.DataFrame(columns=["probe_id", "date", "ndvi", "ndwi"])
    out = pd.DataFrame({"probe_id": np.tile(ids, len(files)),
                        "date": np.repeat(np.array(dates, dtype="datetime64[ns]"), len(ids)),
                        "ndvi": np.concatenate(ndvis), "ndwi": np.concatenate(ndwis)})
    out = out.dropna(subset=["ndvi", "ndwi"], how="all")
    # Two tiles/scenes on one day: mean of the unmasked values.
    out = out.groupby(["probe_id", "date"], as_index=False).mean(numeric_only=True)
    missing = np.sum([~c for c in seen.values()], axis=0)
    out.attrs["not_covered"] = {str(p): int(n) for p, n in zip(ids, missing) if n}
    log.info("Sentinel-2 %s: %d scene files, %d probes", folder, len(files), len(probes))
    return out


def interpolate_limited(dates: pd.DatetimeIndex, obs_dates: pd.Series, obs_values: pd.Series,
                        max_gap_days: int) -> np.ndarray:
    """Linear interpolation of observations onto ``dates``, kept only within ``max_gap_days`` of an
    observation (thesis 3.2.3: 30 days before and after each known point); no extrapolation beyond
    the first/last observation except within that distance (held constant there).
    """
    ok = obs_values.notna().to_numpy()
    # whole days since 1970 (independent of the datetime unit: pandas 3 may use us or s)
    t_obs = np.asarray(pd.DatetimeIndex(obs_dates[ok]).to_numpy(), dtype="datetime64[D]").astype("int64")
    v_obs = obs_values.to_numpy(float)[ok]
    out = np.full(len(dates), np.nan)
    if t_obs.size == 0:
        return out
    order = np.argsort(t_obs)
    t_obs, v_obs = t_obs[order], v_obs[order]
    t = np.asarray(dates.to_numpy(), dtype="datetime64[D]").astype("int64")
    out = np.interp(t, t_obs, v_obs)
    # distance to the nearest observation
    pos = np.searchsorted(t_obs, t)
    left = np.abs(t - t_obs[np.clip(pos - 1, 0, t_obs.size - 1)])
    right = np.abs(t_obs[np.clip(pos, 0, t_obs.size - 1)] - t)
    dist = np.minimum(left, right)
    out[dist > max_gap_days] = np.nan
    return out
