"""Static layers of a simulated tile: relief, CORINE land cover (field parcels), soil texture, probe sites.

Pure numpy (scipy's KD-tree for the parcel map); nothing here touches files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilmoisture.simulate.regions import Region

# Hydraulic and surface parameters by CORINE class that override texture-derived values.
PEAT = 412
SAND = 331
WATER = 512
BUILT = 112
FOREST = 312


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~``scale_px`` pixels (FFT filter)."""
    h, w = shape
    white = rng.standard_normal((h, w))
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-0.5 * (2 * np.pi * scale_px) ** 2 * (kx ** 2 + ky ** 2) / 4.0)
    f = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(h, w))
    sd = f.std()
    return (f - f.mean()) / (sd if sd > 0 else 1.0)


@dataclass
class Landscape:
    """Per-pixel static fields of one tile (arrays of shape (tile, tile))."""

    elevation_m: np.ndarray
    clc: np.ndarray                # uint16 CORINE codes
    clay_pct: np.ndarray
    silt_pct: np.ndarray
    sand_pct: np.ndarray
    oc_pct: np.ndarray
    base_sat_pct: np.ndarray
    porosity: np.ndarray           # m3/m3, saturated water content
    residual: np.ndarray           # m3/m3, residual water content
    ks_mm_day: np.ndarray          # saturated hydraulic conductivity
    b: np.ndarray                  # Clapp-Hornberger exponent
    probe_rc: np.ndarray           # (n_probes, 2) int row, col


def max_probes(tile: int) -> int:
    """How many probes a tile holds: one in four interior pixels (probes keep their own parcel)."""
    margin = 2 if tile > 8 else 0
    return (tile - 2 * margin) ** 2 // 4


def place_probes(rng: np.random.Generator, tile: int, n: int) -> np.ndarray:
    """``n`` distinct probe pixels, >= 2 px from the edge, as far apart as the tile allows."""
    margin = 2 if tile > 8 else 0
    lo, hi = margin, tile - margin
    min_sep = max(1.0, 0.6 * (hi - lo) / max(np.sqrt(n), 1.0))
    while True:
        pts: list[tuple[int, int]] = []
        for _ in range(200 * max(n, 1)):
            if len(pts) == n:
                break
            r, c = (int(v) for v in rng.integers(lo, hi, size=2))
            if all((r - a) ** 2 + (c - b) ** 2 >= min_sep ** 2 for a, b in pts):
                pts.append((r, c))
        if len(pts) == n:
            return np.array(pts, dtype=np.int64).reshape(n, 2)
        min_sep = max(1.0, min_sep * 0.8)  # the tile is crowded: relax the spacing (pixels stay distinct)


def _parcels(rng: np.random.Generator, region: Region, tile: int, probe_rc: np.ndarray,
             probe_codes: list[int]) -> np.ndarray:
    """CORINE map as a Voronoi mosaic of parcels (~200 m); every probe is the seed of its own parcel,
    so the pixel under a probe always carries the probe's land cover."""
    from scipy.spatial import cKDTree

    n_rand = max(4, int(round(tile * tile / 400.0)))
    codes = np.array(list(region.landcover), dtype=np.int64)
    w = np.array([region.landcover[c] for c in codes], dtype=float)
    rand_rc = rng.uniform(0, tile, size=(n_rand, 2))
    rand_codes = rng.choice(codes, size=n_rand, p=w / w.sum())
    seeds = np.vstack([probe_rc + 0.5, rand_rc]) if len(probe_rc) else rand_rc
    seed_codes = np.concatenate([np.asarray(probe_codes, dtype=np.int64), rand_codes])
    # Gently warped coordinates give natural-looking parcel borders.
    warp = 0.04 * tile
    rr, cc = np.mgrid[0:tile, 0:tile].astype(float) + 0.5
    rr_w = rr + warp * smooth_noise(rng, (tile, tile), tile / 6.0)
    cc_w = cc + warp * smooth_noise(rng, (tile, tile), tile / 6.0)
    _, idx = cKDTree(seeds).query(np.column_stack([rr_w.ravel(), cc_w.ravel()]))
    clc = seed_codes[idx].reshape(tile, tile)
    # The warp may shift a border across a probe: the probe pixel itself keeps its class (and stays on land).
    if len(probe_rc):
        clc[probe_rc[:, 0], probe_rc[:, 1]] = probe_codes
    return clc.astype(np.uint16)


def hydraulics(sand: np.ndarray, clay: np.ndarray, oc: np.ndarray, clc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Porosity and residual water content (m3/m3), K_s (mm/day) and the Clapp-Hornberger b per pixel.

    Pedotransfer functions of Cosby et al. (1984) / Clapp & Hornberger (1978): sands drain fast. Peat: a wet
    organic surface held near saturation by the water table (physics.water_balance); its porosity is kept at 0.52
    so that daily readings stay mostly below the 0.5 quality flag (DESIGN data rules).
    """
    porosity = 0.489 - 0.00126 * sand + 0.003 * np.minimum(oc, 10)
    residual = 0.02 + 0.0015 * clay
    ks = 0.0070556 * 10 ** (-0.884 + 0.0153 * sand) * 86400.0
    b = 2.91 + 0.159 * clay
    peat = clc == PEAT
    return (np.where(peat, 0.52, porosity), np.where(peat, 0.15, residual), np.where(peat, 150.0, ks),
            np.where(peat, 4.0, b))


def build(rng: np.random.Generator, region: Region, tile: int, probe_codes: list[int]) -> Landscape:
    """Relief, land cover, texture and hydraulic parameters of one tile."""
    probe_rc = place_probes(rng, tile, len(probe_codes))
    clc = _parcels(rng, region, tile, probe_rc, probe_codes)
    # Relief: a broad smooth field plus a gentle regional tilt (thesis 3.1.2: HOBE/FMI/ICOS low and gentle,
    # REMEDHUS 650-900 m with steeper slopes).
    # Correlation lengths in metres-worth of pixels (600 m, 120 m), drawn on a grid of at least 128 px and
    # cropped, so slopes do not depend on the tile size (thesis 3.1.2: mostly < 5 %, REMEDHUS up to ~15 %).
    g = max(tile, 128)
    elev = region.elev_m + region.relief_m * (0.8 * smooth_noise(rng, (g, g), 60.0)
                                              + 0.2 * smooth_noise(rng, (g, g), 12.0))[:tile, :tile]
    sand = np.clip(region.sand_pct + 8.0 * smooth_noise(rng, (tile, tile), tile / 5.0), 5, 95)
    clay = np.clip(region.clay_pct * (1 + 0.3 * smooth_noise(rng, (tile, tile), tile / 5.0)), 1, 60)
    oc = np.clip(region.oc_pct * (1 + 0.3 * smooth_noise(rng, (tile, tile), tile / 8.0)), 0.1, 60)
    sand = np.where(clc == SAND, 93.0, sand)
    clay = np.where(clc == SAND, 2.0, clay)
    oc = np.where(clc == PEAT, 30.0, np.where(clc == FOREST, oc + 1.5, oc))
    clay = np.minimum(clay, 100 - sand - 1)
    silt = 100 - sand - clay
    base_sat = np.clip(region.base_sat_pct + 8.0 * smooth_noise(rng, (tile, tile), tile / 5.0), 5, 100)
    porosity, residual, ks, b = hydraulics(sand, clay, oc, clc)
    return Landscape(elev.astype(np.float32), clc, clay, silt, sand, oc, base_sat, porosity, residual, ks, b,
                     probe_rc)
