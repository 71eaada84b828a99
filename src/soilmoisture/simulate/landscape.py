"""Static layers of a simulated network: probe layout, relief, topographic wetness, CORINE parcels, soil texture.

A region spans its network's real extent (tens of km, or ICOS sites hundreds of km apart); only what is needed is
simulated at 10 m: the mapping tile (around the first probe) and a patch around every other probe. Relief, texture
and organic carbon are continuous random fields of the map coordinates (random Fourier features), so a tile, a
patch and the 250 m SoilGrids-like raster sample one and the same landscape. Pure numpy (scipy's KD-tree for the
parcel map); nothing here touches files.
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
PARCEL_M = 200.0          # typical field size (Voronoi seed spacing)
CLUSTER_KM = 100.0        # probes farther apart than this are clipped into separate areas (ICOS sites)
TPI_RADIUS_M = 300.0      # topographic position: elevation minus its mean over this radius (hollow < 0 < ridge)


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


class Field:
    """A stationary Gaussian random field of map coordinates (m), unit variance, covariance exp(-r^2 / 2 L^2).

    Random Fourier features: sum of ``n`` cosines with wave vectors drawn from N(0, 1/L^2). It can be evaluated at
    any coordinates (tile, patches, 250 m cells alike), smoothed analytically (Gaussian kernel of sd ``smooth_m``)
    and differentiated analytically. Coordinates are taken relative to ``origin`` (precision of the phases).
    """

    def __init__(self, rng: np.random.Generator, scale_m: float, n: int = 96,
                 origin: tuple[float, float] = (0.0, 0.0)) -> None:
        self.k = rng.standard_normal((n, 2)) / scale_m
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = np.sqrt(2.0 / n)
        self.origin = origin

    def _weights(self, smooth_m: float) -> np.ndarray:
        return self.amp * np.exp(-0.5 * (self.k ** 2).sum(axis=1) * smooth_m ** 2)

    def evaluate(self, x: np.ndarray, y: np.ndarray, smooths: tuple[float, ...] = (0.0,), grad: bool = False,
                 chunk: int = 16384) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Values for each smoothing (pixels, len(smooths)) and, with ``grad``, d/dx and d/dy per metre; the cosines
        are computed once per chunk for all of them."""
        # float32 phases: |k x| < ~5000 rad within 500 km of the origin, error < 1e-3 rad (cos twice as fast)
        x = (np.asarray(x, float).ravel() - self.origin[0]).astype(np.float32)
        y = (np.asarray(y, float).ravel() - self.origin[1]).astype(np.float32)
        kx, ky, ph = (v.astype(np.float32) for v in (self.k[:, 0], self.k[:, 1], self.phase))
        wts = np.stack([self._weights(s) for s in smooths], axis=1).astype(np.float32)
        out = np.empty((x.size, len(smooths)))
        gx = np.empty(x.size) if grad else None
        gy = np.empty(x.size) if grad else None
        for s in range(0, x.size, chunk):
            arg = x[s:s + chunk, None] * kx[None, :] + y[s:s + chunk, None] * ky[None, :] + ph
            out[s:s + chunk] = np.cos(arg) @ wts
            if grad:
                sn = np.sin(arg) * np.float32(-self.amp)
                gx[s:s + chunk], gy[s:s + chunk] = sn @ kx, sn @ ky  # type: ignore[index]
        return out, gx, gy

    def __call__(self, x: np.ndarray, y: np.ndarray, smooth_m: float = 0.0) -> np.ndarray:
        return self.evaluate(x, y, (smooth_m,))[0][:, 0]

    def grad(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d/dx, d/dy) per metre."""
        _, gx, gy = self.evaluate(x, y, grad=True)
        return gx, gy  # type: ignore[return-value]

    def highpass_sd(self, smooth_m: float) -> float:
        """SD of the field minus its smoothed version (what a topographic-position index sees)."""
        w = self.amp * (1 - np.exp(-0.5 * (self.k ** 2).sum(axis=1) * smooth_m ** 2))
        return float(np.sqrt((w ** 2).sum() / 2))

    def highpass(self, x: np.ndarray, y: np.ndarray, smooth_m: float) -> np.ndarray:
        v = self.evaluate(x, y, (0.0, smooth_m))[0]
        return v[:, 0] - v[:, 1]


@dataclass
class Terrain:
    """The region's relief as a sum of fields: elevation (m) = elev_m + sum(sd_i * field_i)."""

    elev_m: float
    parts: list[tuple[float, Field]]

    def elevation(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.elev_m + sum(sd * f(x, y) for sd, f in self.parts)

    def slope_aspect(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gradient east, north (m/m) and slope (%)."""
        _, gx, gy, slope, _ = self.all(x, y)
        return gx, gy, slope

    def wetness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Topographic wetness term (unitless, ~unit SD): positive in hollows and valley bottoms, negative on ridges
        and steep slopes. A topographic-position proxy of the TWI ln(a / tan(beta)): minus the elevation above its
        mean over ``TPI_RADIUS_M``, standardised, minus a slope term."""
        return self.all(x, y)[4]

    def all(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """Elevation (m), gradient east and north (m/m), slope (%), wetness term, in one pass over the fields."""
        n = np.size(x)
        z, gx, gy, tpi = np.full(n, self.elev_m), np.zeros(n), np.zeros(n), np.zeros(n)
        for sd, f in self.parts:
            v, a, b = f.evaluate(x, y, (0.0, TPI_RADIUS_M), grad=True)
            z += sd * v[:, 0]
            tpi += sd * (v[:, 0] - v[:, 1])
            gx += sd * a  # type: ignore[operator]
            gy += sd * b  # type: ignore[operator]
        slope = np.hypot(gx, gy) * 100.0
        tpi_sd = np.sqrt(sum((sd * f.highpass_sd(TPI_RADIUS_M)) ** 2 for sd, f in self.parts)) or 1.0
        wet = np.clip(-tpi / tpi_sd - 0.15 * (slope - 3.0), -3.0, 3.0)
        return z, gx, gy, slope, wet


def terrain(rng: np.random.Generator, region: Region, origin: tuple[float, float] = (0.0, 0.0)) -> Terrain:
    """Relief: broad swells (4 km), field-scale undulation (600 m) and small hollows (120 m), scaled by the region's
    relief (thesis 3.1.2: HOBE/FMI/ICOS low and gentle, REMEDHUS 650-900 m with steeper slopes)."""
    r = region.relief_m
    return Terrain(region.elev_m, [(2.0 * r, Field(rng, 4000.0, origin=origin)),
                                   (0.5 * r, Field(rng, 600.0, origin=origin)),
                                   (0.15 * r, Field(rng, 120.0, origin=origin))])


@dataclass
class Soils:
    """Regional texture and organic-carbon fields (what SoilGrids can see; parcels add field-to-field offsets)."""

    region: Region
    sand_f: tuple[Field, Field]
    clay_f: Field
    oc_f: Field
    bs_f: Field

    def regional_multi(self, x: np.ndarray, y: np.ndarray, smooths: tuple[float, ...]
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Sand, clay, organic carbon, base saturation (%) of the regional fields (no parcel offsets), for each
        smoothing (m), each field evaluated once."""
        reg = self.region
        a, b = (f.evaluate(x, y, smooths)[0] for f in self.sand_f)
        c, o, bs = (f.evaluate(x, y, smooths)[0] for f in (self.clay_f, self.oc_f, self.bs_f))
        out = []
        for j in range(len(smooths)):
            sand = np.clip(reg.sand_pct + reg.sand_sd_pct * (0.8 * a[:, j] + 0.45 * b[:, j]), 5.0, 92.0)
            clay = reg.clay_pct - 0.35 * (sand - reg.sand_pct) + reg.clay_sd_pct * 0.6 * c[:, j]
            clay = np.minimum(np.clip(clay, 1.0, 60.0), 99.0 - sand)
            oc = np.clip(reg.oc_pct * np.exp(0.35 * o[:, j]), 0.1, 20.0)
            out.append((sand, clay, oc, np.clip(reg.base_sat_pct + 8.0 * bs[:, j], 5.0, 100.0)))
        return out

    def regional(self, x: np.ndarray, y: np.ndarray, smooth_m: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sand, clay, organic carbon (%) of the regional fields (no parcel offsets)."""
        return self.regional_multi(x, y, (smooth_m,))[0][:3]


def soils(rng: np.random.Generator, region: Region, origin: tuple[float, float] = (0.0, 0.0)) -> Soils:
    return Soils(region, (Field(rng, 3000.0, origin=origin), Field(rng, 800.0, origin=origin)),
                 Field(rng, 1500.0, origin=origin), Field(rng, 2500.0, origin=origin), Field(rng, 3000.0, origin=origin))


def hydraulics(sand: np.ndarray, clay: np.ndarray, oc: np.ndarray, clc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Porosity and residual (air-dry) water content (m3/m3), K_s (mm/day) and the Clapp-Hornberger b per pixel.

    Pedotransfer functions of Cosby et al. (1984) / Clapp & Hornberger (1978): sands drain fast and dry out; the
    air-dry water content of the 0-5 cm layer rises with clay (~0.03 in sand, ~0.16 in clay loam). Peat: a wet
    organic surface held near saturation by the water table (physics.water_balance); its porosity is kept at 0.52
    so that daily readings stay mostly below the 0.5 quality flag (DESIGN data rules).
    """
    porosity = 0.489 - 0.00126 * sand + 0.003 * np.minimum(oc, 10)
    residual = 0.01 + 0.005 * clay
    ks = 0.0070556 * 10 ** (-0.884 + 0.0153 * sand) * 86400.0
    b = 2.91 + 0.159 * clay
    peat = clc == PEAT
    return (np.where(peat, 0.52, porosity), np.where(peat, 0.15, residual), np.where(peat, 150.0, ks),
            np.where(peat, 4.0, b))


# --- network layout ------------------------------------------------------------------------------------
@dataclass
class Area:
    """One simulated 10 m window of the region grid: the mapping tile or the patch around one probe."""

    name: str                    # "tile" or the probe id
    row0: int                    # offset in the region's global pixel grid (rows grow southwards)
    col0: int
    size: int                    # square, pixels
    cluster: int                 # index of the clipped area (probe cluster) it belongs to


@dataclass
class Layout:
    """Where the probes, the tile and the patches are: pixel indices of the region's global 10 m grid.

    The grid origin (x0, y0) is the north-west corner of pixel (0, 0), in the region's UTM CRS; probe pixels sit at
    the centre of their patch (patches are aligned to a ``patch_px`` lattice, so each patch lies in one 64 px block
    of the clipped scenes)."""

    x0: float
    y0: float
    pixel_m: float
    probe_rc: np.ndarray          # (n, 2) global row, col
    probe_area: list[int]         # index into ``areas`` of the area holding each probe
    areas: list[Area]
    clusters: list[list[int]]     # probe indices per clipped area
    cluster_names: list[str]

    def xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (m) of pixel centres."""
        return self.x0 + (np.asarray(cols) + 0.5) * self.pixel_m, self.y0 - (np.asarray(rows) + 0.5) * self.pixel_m


def _scatter(rng: np.random.Generator, n: int, extent_km: float, min_sep_km: float) -> np.ndarray:
    """``n`` points (east, north km) in a square of ``extent_km`` centred on 0, at least ``min_sep_km`` apart
    (dart throwing; the spacing relaxes if the square is too crowded)."""
    sep = min_sep_km
    while True:
        pts: list[tuple[float, float]] = []
        for _ in range(500 * max(n, 1)):
            if len(pts) == n:
                break
            p = rng.uniform(-extent_km / 2, extent_km / 2, 2)
            if all((p[0] - a) ** 2 + (p[1] - b) ** 2 >= sep ** 2 for a, b in pts):
                pts.append((float(p[0]), float(p[1])))
        if len(pts) == n:
            return np.array(pts).reshape(n, 2)
        sep *= 0.8


def _clusters(xy_km: np.ndarray, limit_km: float) -> list[list[int]]:
    """Single-linkage groups of points closer than ``limit_km`` (in input order)."""
    n = len(xy_km)
    label = list(range(n))

    def find(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if np.hypot(*(xy_km[i] - xy_km[j])) < limit_km:
                label[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def layout(rng: np.random.Generator, region: Region, names: list[str], tile: int, patch: int, pixel_m: float,
           to_xy: "callable") -> Layout:  # noqa: F821 - (lon, lat) -> UTM (x, y)
    """Probe positions over the network's extent, the mapping tile centred on the first probe, one patch per other
    probe. Fixed sites (ICOS) sit at their real coordinates; the others are scattered with the region's spacing."""
    n = len(names)
    cx, cy = to_xy(region.lon, region.lat)
    rand = _scatter(rng, n, region.extent_km, region.min_sep_km) * 1000.0
    xs, ys = cx + rand[:, 0], cy + rand[:, 1]
    for i, name in enumerate(names):
        if name in region.sites:
            lat, lon = region.sites[name][:2]
            xs[i], ys[i] = to_xy(lon, lat)
    # Global grid: origin snapped to a 64 px block north-west of everything (so clips align to blocks).
    margin = (max(tile, 64) + 64) * pixel_m
    step = 64 * pixel_m
    x0 = np.floor((xs.min() - margin) / step) * step
    y0 = np.ceil((ys.max() + margin) / step) * step
    # Probe pixels at the centre of a patch-lattice cell.
    cols = (np.floor((xs - x0) / (patch * pixel_m)) * patch + patch // 2).astype(np.int64)
    rows = (np.floor((y0 - ys) / (patch * pixel_m)) * patch + patch // 2).astype(np.int64)
    probe_rc = np.column_stack([rows, cols])
    xy_km = np.column_stack([xs, ys]) / 1000.0
    clusters = _clusters(xy_km, CLUSTER_KM)
    cl_of = np.empty(n, dtype=int)
    for k, members in enumerate(clusters):
        cl_of[members] = k
    names_cl = ["network"] if len(clusters) == 1 else [names[m[0]] for m in clusters]
    t0r, t0c = int(rows[0]) - tile // 2, int(cols[0]) - tile // 2
    areas = [Area("tile", t0r, t0c, tile, int(cl_of[0]))]
    probe_area = []
    for i in range(n):
        r, c = int(rows[i]), int(cols[i])
        if t0r <= r < t0r + tile and t0c <= c < t0c + tile:
            probe_area.append(0)
        else:
            areas.append(Area(names[i], r - patch // 2, c - patch // 2, patch, int(cl_of[i])))
            probe_area.append(len(areas) - 1)
    return Layout(float(x0), float(y0), pixel_m, probe_rc, probe_area, areas, clusters, names_cl)


def parcels(rng: np.random.Generator, region: Region, area: Area, pixel_m: float, probe_local: list[tuple[int, int]],
            probe_codes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CORINE map of one area as a Voronoi mosaic of fields (~``PARCEL_M``): (parcel id per pixel (size, size),
    code per parcel, parcel is a probe's own field). Every probe seeds its own parcel, so the pixel under a probe
    always carries the probe's land cover."""
    from scipy.spatial import cKDTree

    s = area.size
    n_rand = max(3, int(round((s * pixel_m / PARCEL_M) ** 2)))
    codes = np.array(list(region.landcover), dtype=np.int64)
    w = np.array([region.landcover[c] for c in codes])
    rand_rc = rng.uniform(0, s, size=(n_rand, 2))
    rand_codes = rng.choice(codes, size=n_rand, p=w / w.sum())
    pr = np.asarray(probe_local, dtype=float).reshape(-1, 2) + 0.5
    seeds = np.vstack([pr, rand_rc])
    seed_codes = np.concatenate([np.asarray(probe_codes, dtype=np.int64), rand_codes])
    own = np.concatenate([np.ones(len(pr), bool), np.zeros(n_rand, bool)])
    warp = 0.04 * s
    rr, cc = np.mgrid[0:s, 0:s].astype(float) + 0.5
    rr_w = rr + warp * smooth_noise(rng, (s, s), s / 6.0)
    cc_w = cc + warp * smooth_noise(rng, (s, s), s / 6.0)
    _, idx = cKDTree(seeds).query(np.column_stack([rr_w.ravel(), cc_w.ravel()]))
    idx = idx.reshape(s, s)
    # The warp may shift a border across a probe: the probe pixel keeps its own parcel.
    for k, (r, c) in enumerate(probe_local):
        idx[r, c] = k
    return idx.astype(np.int64), seed_codes, own
