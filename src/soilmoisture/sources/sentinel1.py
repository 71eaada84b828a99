"""Sentinel-1 GRD sigma0 GeoTIFFs (one file per scene and region): sigma0 at each probe's pixel.

Thesis 3.2.2: VV backscatter in linear units, both orbits. The value of the pixel containing the
probe is taken; two scenes on one day (ascending + descending) are averaged. Outlier removal
(z-score, sigma0_max) happens in :mod:`soilmoisture.harmonise`, per probe, over the whole series.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.quality.rules import s1_impossible
from soilmoisture.sources._raster import (clip_files, covered_pixels, no_probe_error, open_raster, raster_env,
                                          sample_covered)

log = logging.getLogger(__name__)

# --- declaration ------------------------------------------------------------------------------
FILE_PATTERN = "sentinel1/<region>/[<area>/]S1<A|B>_IW_GRDH_1SDV_<YYYYmmddTHHMMSS>_<ASC|DSC>.tif"
NAME_RE = re.compile(r"^S1[AB]_IW_GRDH_1SDV_(\d{8}T\d{6})_(ASC|DSC)\.tif$")
DATE_FORMAT = "%Y%m%dT%H%M%S"            # in the file name; tag ACQUISITION_TIME (ISO) preferred
BANDS = {1: "sigma0_vv", 2: "sigma0_vh", 3: "incidence_angle_deg"}
UNITS = {"sigma0_vv": "linear (or dB: ingest.sigma0_units)", "sigma0_vh": "same as VV", "incidence_angle_deg": "deg"}
NODATA = float("nan")
SIGMA0_BANDS = ("sigma0_vv", "sigma0_vh")


def scene_files(folder: Path) -> list[Path]:
    """Sentinel-1 scenes in one region folder (the region's own grid, e.g. its mapping tile), sorted by name (date)."""
    return sorted(p for p in Path(folder).glob("S1*.tif") if NAME_RE.match(p.name))


def all_scene_files(folder: Path) -> list[Path]:
    """The region folder's scenes and those clipped to its areas (``<folder>/<area>/``), sorted by name."""
    return clip_files(folder, "S1*.tif", NAME_RE)


def _acquisition_date(src: object, path: Path) -> pd.Timestamp:
    tag = src.tags().get("ACQUISITION_TIME")  # type: ignore[attr-defined]
    try:
        if tag:
            ts = pd.Timestamp(tag)
            return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).normalize()
        m = NAME_RE.match(path.name)
        return pd.to_datetime(m.group(1), format=DATE_FORMAT).normalize()  # type: ignore[union-attr]
    except (ValueError, AttributeError) as e:
        raise DataError(path, f"no acquisition date in tag ACQUISITION_TIME or file name ({e})") from None


def mask_impossible(vals: np.ndarray, path: Path) -> int:
    """Set sigma0 <= 0 (linear) and incidence <= 0 deg to NaN in place (``quality.rules.s1_impossible``).

    ``vals``: (probes, bands) in BANDS order. Returns how many probe pixels lost a value; a warning names the
    scene (all bands zero: zero-filled bytes, e.g. a copy that stopped; a few negative sigma0: the noise floor).
    """
    bad = s1_impossible(vals)
    n = int(bad.any(axis=1).sum())
    if n:
        zero = int((vals == 0).all(axis=1).sum())
        log.warning("%s: %d of %d probe pixels hold sigma0 <= 0 or incidence <= 0 deg, impossible%s: masked", path,
                    n, len(vals), f" ({zero} zero in every band: zero-filled bytes?)" if zero else "")
        vals[bad] = np.nan
    return n


def check_linear(values: np.ndarray, path: Path, band: str) -> None:
    """Linear sigma0 is (almost always) in (0, 1]; dB values are mostly negative (or > 1).

    Checked on the values at the probe pixels of each scene.

    Declared linear but most valid values > 1 or < 0 => the file is in dB: refuse rather than
    guess (DESIGN: convert explicitly, never guess silently).
    """
    v = values[np.isfinite(values)]
    if v.size == 0:
        return
    if np.mean(v < 0) > 0.5 or np.mean(v > 1.0) > 0.5:
        raise DataError(path, "values look like dB (negative or mostly > 1) but ingest.sigma0_units is "
                              "'linear'; set ingest.sigma0_units: db or convert the rasters", field=band)


def check_db(values: np.ndarray, path: Path, band: str) -> None:
    """Declared dB but every valid value positive and <= 1 (typical linear sigma0; in dB that would be
    an implausibly bright 0..0 dB scene) => refuse rather than convert linear values a second time."""
    v = values[np.isfinite(values)]
    if v.size and ((v > 0) & (v <= 1.0)).all():
        raise DataError(path, "values look linear (all in (0, 1]) but ingest.sigma0_units is 'db'; "
                              "set ingest.sigma0_units: linear", field=band)


CHECK_MIN_VALUES = 25   # the unit checks judge at least this many pixels (one probe's pixel may be a bright target)


def _check_values(src: object, probes: pd.DataFrame, path: Path, vals: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Values the unit checks judge: the covered probe pixels, or, when there are fewer than CHECK_MIN_VALUES, the
    7 x 7 windows around them (a scene clipped around one probe: a single corner reflector must not look like dB)."""
    from rasterio.windows import Window

    from soilmoisture.sources._raster import read_all

    if covered.sum() >= CHECK_MIN_VALUES:
        return vals[covered]
    rows, cols, _ = covered_pixels(src, probes, path)
    parts = []
    for i in np.flatnonzero(covered):
        r0, c0 = max(int(rows[i]) - 3, 0), max(int(cols[i]) - 3, 0)
        win = Window(c0, r0, min(7, src.width - c0), min(7, src.height - r0))  # type: ignore[attr-defined]
        a = read_all(src, path, win).astype("float64").reshape(src.count, -1)  # type: ignore[attr-defined]
        for b, nd in enumerate(src.nodatavals):  # type: ignore[attr-defined]
            if nd is not None and not np.isnan(nd):
                a[b][a[b] == nd] = np.nan
        parts.append(a[: vals.shape[1]].T)
    return np.concatenate(parts)


def read_sentinel1(folder: Path, probes: pd.DataFrame, units: str = "linear") -> pd.DataFrame:
    """Sample every scene in ``folder`` and its area sub-folders at the probes (``probe_id, lat, lon``).

    Returns ``probe_id, date, sigma0_vv, sigma0_vh, incidence_angle_deg`` (sigma0 linear), one row per
    probe and acquisition day (scenes of the same day averaged). Each file is opened once and all
    probes of the region it covers are sampled in one go. A scene that covers only some probes (a swath edge, a
    scene clipped to part of the network) gives the others NaN for that day, counted per probe in
    ``out.attrs["not_covered"]``; a scene that covers none of them is refused.
    """
    files = all_scene_files(folder)
    rows = []
    impossible: dict[str, int] = {}     # scene file -> probe pixels masked by mask_impossible
    ids = probes["probe_id"].to_numpy()
    seen: dict[pd.Timestamp, np.ndarray] = {}
    with raster_env():
        for path in files:
            with open_raster(path) as src:
                date = _acquisition_date(src, path)
                declared = (src.tags().get("UNITS") or "").lower()
                vals, covered = sample_covered(src, probes, path)
                if not covered.any():
                    raise no_probe_error(src, probes, path)
                check = _check_values(src, probes, path, vals, covered)
            seen[date] = seen.get(date, np.zeros(len(ids), bool)) | covered
            vals = vals.copy()
            vals[~covered] = np.nan
            if vals.shape[1] < 1:
                raise DataError(path, "band 1 (sigma0_vv) missing", field="sigma0_vv")
            vals = vals[:, : len(BANDS)]
            for b in range(min(vals.shape[1], len(SIGMA0_BANDS))):
                band = SIGMA0_BANDS[b]
                if units == "linear":
                    if declared == "db":
                        raise DataError(path, "tag UNITS=dB but ingest.sigma0_units is 'linear'", field=band)
                    check_linear(check[:, b], path, band)
                else:  # explicit conversion dB -> linear
                    if declared == "linear":
                        raise DataError(path, "tag UNITS=linear but ingest.sigma0_units is 'db'", field=band)
                    check_db(check[:, b], path, band)
                    vals[:, b] = 10.0 ** (vals[:, b] / 10.0)
            n_masked = mask_impossible(vals, path)
            if n_masked:
                impossible[path.name] = n_masked
            block = np.full((len(ids), len(BANDS)), np.nan)
            block[:, : vals.shape[1]] = vals
            rows.append((date, block))
    if not rows:
        log.warning("no Sentinel-1 scene in %s", folder)
        return pd.DataFrame(columns=["probe_id", "date", *BANDS.values()])
    out = pd.DataFrame(np.concatenate([b for _, b in rows]), columns=list(BANDS.values()))
    out.insert(0, "date", np.repeat(np.array([d for d, _ in rows], dtype="datetime64[ns]"), len(ids)))
    out.insert(0, "probe_id", np.tile(ids, len(rows)))
    # Ascending and descending scenes of the same day: mean (task spec; the thesis used both orbits).
    out = out.groupby(["probe_id", "date"], as_index=False).mean(numeric_only=True)
    out.attrs["impossible_masked"] = impossible
    missing = np.sum([~c for c in seen.values()], axis=0)
    out.attrs["not_covered"] = {str(p): int(n) for p, n in zip(ids, missing) if n}
    log.info("Sentinel-1 %s: %d scene files, %d acquisition days, %d probes (%d probe-days not covered)", folder,
             len(files), len(seen), len(probes), int(missing.sum()))
    return out
