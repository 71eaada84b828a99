"""The physics of the simulated area: weather, snow, soil temperature, vegetation phenology, a daily soil
water balance per pixel, and the sensors (water-cloud radar model, optical reflectances).

Vectorised over pixels; only the water balance and soil temperature loop over days. Equations and
parameter values are documented in docs/simulation.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilmoisture.simulate.regions import Region

LAYER_MM = 150.0         # effective depth of the sensed surface layer (0-5 cm readings + coupling below), mm
RAIN_SNOW_C = 0.5        # air temperature below which precipitation falls as snow, degC
MELT_MM_PER_C = 3.0      # degree-day snowmelt factor, mm / degC / day
LIQUID_FROZEN = 0.25     # share of soil water still liquid when frozen (what probes and radar see)
PEAT_WATER_TABLE = 0.44  # m3/m3 the water table pulls peat surfaces towards (peat bogs stay wet)


@dataclass
class Weather:
    """Daily weather at the region's sites (arrays (days, sites)): probe areas, the tile and the stations."""

    precip_mm: np.ndarray
    ta_mean: np.ndarray
    ta_min: np.ndarray
    ta_max: np.ndarray
    pet_mm: np.ndarray
    swe_mm: np.ndarray          # snow water equivalent at the end of the day
    melt_mm: np.ndarray
    rain_mm: np.ndarray
    dtr: np.ndarray             # diurnal temperature range (degC)


def _ra_mm(lat_deg: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Extraterrestrial radiation as evaporation equivalent (FAO-56 eq. 21, x 0.408), mm/day; (days, sites)."""
    phi = np.deg2rad(np.asarray(lat_deg, float))[None, :]
    doy = np.asarray(doy, float)[:, None]
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    dec = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(dec), -1, 1))
    ra = 24 * 60 / np.pi * 0.082 * dr * (ws * np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.sin(ws))
    return 0.408 * np.maximum(ra, 0)


RAIN_COMMON_SHARE = 0.7      # share of the latent rain field common to the whole network (synoptic weather)
RAIN_COMMON_L_KM = 300.0     # ... which itself decorrelates over hundreds of km (ICOS sites)
RAIN_PERSISTENCE = 0.45      # lag-1 autocorrelation of the latent field (wet spells)
TEMP_L_KM = 800.0            # temperature anomalies are coherent over hundreds of km
LAPSE_C_PER_M = -0.0065      # air temperature lapse rate


def _chol(d_km: np.ndarray, length_km: float, common: float = 0.0) -> np.ndarray:
    """Cholesky factor of the exponential covariance (1 - common) exp(-d/L) + common exp(-d/RAIN_COMMON_L_KM)."""
    c = (1 - common) * np.exp(-d_km / length_km) + common * np.exp(-d_km / RAIN_COMMON_L_KM)
    return np.linalg.cholesky(c + 1e-9 * np.eye(len(c)))


def weather(rng: np.random.Generator, region: Region, doy: np.ndarray, site_xy_km: np.ndarray,
            site_elev_m: np.ndarray, site_lat: np.ndarray, site_t_mean: np.ndarray, site_p_annual: np.ndarray
            ) -> Weather:
    """Daily weather at every site (issue 18: weather that varies in space).

    Temperature: seasonal cycle + AR(1) anomalies correlated over ``TEMP_L_KM`` + elevation lapse. Rain: a latent
    Gaussian field over the sites, exponential covariance with a correlation length that shrinks from
    ``rain_l_winter_km`` (frontal rain) to ``rain_l_summer_km`` (convective cells) with the season, plus a share
    common to the network; a day is wet where the field exceeds the quantile of the seasonal wet-day probability
    and the amount is the gamma quantile of the excess (a meta-Gaussian multi-site generator, Wilks 1998). Snow by
    degree days; Hargreaves reference evapotranspiration.
    """
    from scipy.special import gammaincinv, ndtr

    n, S = len(doy), len(site_elev_m)
    d_km = np.hypot(*(site_xy_km[:, None, :] - site_xy_km[None, :, :]).transpose(2, 0, 1))
    season = -np.cos(2 * np.pi * (doy - 20) / 365.0)           # -1 on 20 January, +1 in mid-July
    # temperature
    lt = _chol(d_km, TEMP_L_KM)
    eps = rng.standard_normal((n, S)) @ lt.T * region.t_anom_sd_c * np.sqrt(1 - 0.75 ** 2)
    anom = np.empty((n, S))
    a = np.zeros(S)
    for i in range(n):
        a = 0.75 * a + eps[i]
        anom[i] = a
    ta_mean = (site_t_mean[None, :] + region.t_amp_c * season[:, None] + anom
               + LAPSE_C_PER_M * (site_elev_m - region.elev_m)[None, :])
    dtr = np.clip(region.dtr_c * (1 + 0.25 * season[:, None]) + rng.normal(0, 1.5, (n, 1))
                  + rng.normal(0, 0.4, (n, S)), 1.0, None)
    # rain: latent field, persistence, seasonal correlation length
    ls = _chol(d_km, region.rain_l_summer_km, RAIN_COMMON_SHARE)
    lw = _chol(d_km, region.rain_l_winter_km, RAIN_COMMON_SHARE)
    w_summer = (1 + season) / 2
    e = (np.sqrt(w_summer)[:, None] * (rng.standard_normal((n, S)) @ ls.T)
         + np.sqrt(1 - w_summer)[:, None] * (rng.standard_normal((n, S)) @ lw.T))
    z = np.empty((n, S))
    zz = e[0]
    for i in range(n):
        zz = RAIN_PERSISTENCE * zz + np.sqrt(1 - RAIN_PERSISTENCE ** 2) * e[i] if i else e[0]
        z[i] = zz
    p = np.clip(region.p_wet * (1 - region.p_wet_seasonal / region.p_wet * season), 0.03, 0.95)[:, None]
    u = (ndtr(z) - (1 - p)) / p
    wet = u > 0
    mean_amount = site_p_annual[None, :] / (365.0 * region.p_wet)
    amount = gammaincinv(0.75, np.clip(u, 1e-6, 1 - 1e-9)) * mean_amount / 0.75
    precip = np.round(np.where(wet, amount, 0.0), 1)
    # snow: accumulation below RAIN_SNOW_C, degree-day melt above 0 degC
    rain = np.where(ta_mean >= RAIN_SNOW_C, precip, 0.0)
    swe = np.empty((n, S))
    melt = np.empty((n, S))
    s = np.zeros(S)
    for i in range(n):
        s = s + precip[i] - rain[i]
        m = np.minimum(s, MELT_MM_PER_C * np.maximum(ta_mean[i], 0.0))
        s = s - m
        swe[i], melt[i] = s, m
    ta_min, ta_max = ta_mean - dtr / 2, ta_mean + dtr / 2
    pet = 0.0023 * _ra_mm(site_lat, doy) * (ta_mean + 17.8) * np.sqrt(dtr)
    return Weather(precip, ta_mean, ta_min, ta_max, np.maximum(pet, 0.0), swe, melt, rain, dtr)


def hourly(rng: np.random.Generator, w: Weather, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Hourly air temperature and precipitation (days x 24) at site ``j``: a sinusoidal daily cycle (max ~15 UTC)
    and the day's rain in one shower of 1-8 hours."""
    n = w.ta_mean.shape[0]
    h = np.arange(24)[None, :]
    ta_h = w.ta_mean[:, j, None] + w.dtr[:, j, None] / 2 * np.sin(2 * np.pi * (h - 9) / 24) + rng.normal(0, 0.3, (n, 24))
    start = rng.integers(0, 24, n)[:, None]
    dur = rng.integers(1, 9, n)[:, None]
    inside = ((h - start) % 24) < dur
    wts = np.where(inside, rng.gamma(2.0, 1.0, (n, 24)), 0.0)
    return ta_h, w.precip_mm[:, j, None] * wts / wts.sum(axis=1, keepdims=True)


def soil_temperature(w: Weather, forest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Daily mean and maximum soil temperature at 5 cm (degC) per site: a damped, lagged air temperature, insulated
    (held just below 0 degC) under snow. Forest soils follow the air more slowly and with a smaller daily range."""
    k = 0.2 if forest else 0.35
    n = w.ta_mean.shape[0]
    ts = np.empty_like(w.ta_mean)
    t = w.ta_mean[0].copy()
    for i in range(n):
        snow = w.swe_mm[i] > 5.0
        target = np.where(snow & (w.ta_mean[i] < 0.5), -0.5, w.ta_mean[i])
        t = t + np.where(snow, 0.08, k) * (target - t)
        ts[i] = t
    amp = np.where(w.swe_mm > 5.0, 0.3, (0.3 if forest else 0.6) * w.dtr)
    return ts, ts + amp / 2


# --- vegetation -----------------------------------------------------------------------------------
# CORINE code -> (NDVI base, amplitude, peak day of year, half-width days, harvest day or 0), Danish timing.
PHENOLOGY = {211: (0.22, 0.62, 170, 45, 215), 212: (0.20, 0.65, 205, 40, 265), 221: (0.22, 0.30, 200, 50, 0),
             242: (0.35, 0.45, 180, 60, 0), 243: (0.40, 0.40, 180, 65, 0), 312: (0.74, 0.10, 190, 70, 0),
             321: (0.35, 0.35, 165, 55, 0), 322: (0.38, 0.25, 200, 50, 0), 331: (0.08, 0.06, 190, 50, 0),
             412: (0.40, 0.30, 200, 45, 0), 512: (-0.25, 0.0, 190, 50, 0), 112: (0.15, 0.08, 190, 60, 0)}
# Spain: winter cereals harvested in June, irrigated maize, grass green in spring and dry in summer.
PHENOLOGY_SPAIN = {211: (0.20, 0.55, 110, 40, 170), 212: (0.20, 0.65, 215, 35, 275), 321: (0.25, 0.35, 100, 45, 0)}
PEAK_SHIFT_DAYS = {"denmark": 0, "finland": 25, "spain": 0, "sweden": 12}
STEM_KG_M2 = {312: 6.0, 322: 0.6, 221: 0.8, 412: 0.3, 242: 0.2, 243: 0.2}  # woody biomass water (water-cloud V)


def ndvi_table(region: Region, doy: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Noise-free NDVI of each land-cover class on each day: (days, classes)."""
    out = np.empty((len(doy), len(codes)))
    for j, code in enumerate(codes):
        base, amp, peak, width, harvest = PHENOLOGY.get(int(code), PHENOLOGY[243])
        if region.name == "spain" and int(code) in PHENOLOGY_SPAIN:
            base, amp, peak, width, harvest = PHENOLOGY_SPAIN[int(code)]
        else:
            peak += PEAK_SHIFT_DAYS.get(region.name, 0)
            harvest = harvest + PEAK_SHIFT_DAYS.get(region.name, 0) if harvest else 0
        dd = (doy - peak + 182.5) % 365 - 182.5
        g = np.exp(-(dd / width) ** 2)
        if harvest:
            g = np.where(((doy - harvest) % 365) < 120, 0.0, g)   # bare stubble after harvest
        out[:, j] = base + amp * g
    return out


def vwc_kg_m2(ndvi: np.ndarray, stem: np.ndarray) -> np.ndarray:
    """Vegetation water content from NDVI (Jackson et al. 2004) plus woody stems, kg/m2."""
    return np.maximum(1.9134 * ndvi ** 2 - 0.3215 * ndvi, 0.0) + stem


# --- soil water balance -----------------------------------------------------------------------------
WETNESS_INFLOW = 0.25    # run-on into hollows / run-off from ridges per unit of the wetness term
WETNESS_DRAIN = 0.35     # drainage slows in converging hollows (exp(-k w))


def water_balance(w: Weather, site: np.ndarray, frozen: np.ndarray, ndvi: np.ndarray, porosity: np.ndarray,
                  residual: np.ndarray, ks: np.ndarray, b: np.ndarray, forest: np.ndarray, peat: np.ndarray,
                  wetness: np.ndarray, irrigation_mm: np.ndarray, clay: np.ndarray | None = None) -> np.ndarray:
    """Daily volumetric soil moisture of the surface layer per pixel, m3/m3, bounded by [residual, porosity].

    ``site`` (pixels,) indexes the weather columns; ``frozen``, ``ndvi`` and ``irrigation_mm`` are indexable by day,
    giving per-pixel arrays. Inputs: rain + snowmelt minus canopy interception (infiltration cut to 30 % on frozen
    soil), redistributed by terrain (x (1 + 0.25 w), w the topographic wetness term: hollows gain, ridges lose),
    irrigation; losses: evapotranspiration (PET x crop factor from NDVI x moisture stress, none under snow or on
    frozen soil) and gravity drainage K_s (theta/phi)^(2b+3) exp(-0.35 w) (none when frozen); peat exchanges water
    with a shallow water table.
    """
    n_days, n_px = w.ta_mean.shape[0], porosity.size
    out = np.empty((n_days, n_px), dtype=np.float32)
    theta = residual + 0.6 * (porosity - residual)
    icap = np.where(forest, 2.5, 1.0)
    expo = 2 * b + 3
    # Evaporation stays at its potential rate down to a lower water content in sand (loosely held water) than in
    # clay: the stress threshold is 35 % of the available range in sand, ~65 % in clay loam.
    f_stress = 0.7 if clay is None else np.clip(0.3 + 0.012 * clay, 0.3, 0.8)
    stress_top = residual + f_stress * (porosity - residual)
    run_on = np.clip(1 + WETNESS_INFLOW * wetness, 0.4, 1.8)
    k_drain = ks * np.exp(-WETNESS_DRAIN * wetness) / (porosity * LAYER_MM)   # per day, in units of theta/phi
    for d in range(n_days):
        nd = np.clip(ndvi[d], 0.0, 0.9)
        fz = frozen[d]
        rain = w.rain_mm[d][site]
        intercept = np.minimum(rain, icap * nd)
        inflow = (rain - intercept + w.melt_mm[d][site]) * np.where(fz, 0.3, 1.0) * run_on
        kc = np.where(forest, 1.0, 0.25 + 0.85 * nd / 0.9)
        stress = np.clip((theta - residual) / (stress_top - residual), 0.0, 1.0)
        et = w.pet_mm[d][site] * kc * stress * (w.swe_mm[d][site] <= 1.0) * ~fz
        gw = np.where(peat, 0.3 * (PEAT_WATER_TABLE - theta) * LAYER_MM, 0.0)
        theta = np.clip(theta + (inflow - et + gw + irrigation_mm[d]) / LAYER_MM, residual, porosity)
        # Gravity drainage over the day, integrated exactly: d(x)/dt = -k x^c with x = theta/phi, c = 2b + 3, so a
        # wetter layer never ends the day drier than a drier one (an explicit step can overshoot).
        x0 = theta / porosity
        x1 = (x0 ** (1 - expo) + (expo - 1) * k_drain) ** (1 / (1 - expo))
        theta = np.where(fz, theta, np.maximum(x1 * porosity, residual))
        out[d] = theta
    return out


# --- sensors -------------------------------------------------------------------------------------------
def sigma0(theta_liq: np.ndarray, vwc: np.ndarray, inc_deg: np.ndarray, rough_db: np.ndarray,
           wet_snow: bool | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Water-cloud model (Attema & Ulaby 1978) VV and VH backscatter, linear, before speckle.

    ``inc_deg`` is the local incidence angle (orbit geometry and terrain). Soil VV: sigma_soil[dB] = -15 + 20 theta
    - 0.22 (inc - 35) + roughness; soil VH: -23 + 10 theta - 0.25 (inc - 35) + 1.2 roughness (cross-pol: weaker
    moisture, stronger roughness sensitivity). Canopy per polarisation: A V1 cos(inc) (1 - tau2), V1 = V/(V+1), with
    two-way attenuation tau2 = exp(-2 B V / cos(inc)): VV A = 0.2, B = 0.12 m2/kg; VH A = 0.12, B = 0.09 (volume
    scattering dominates cross-pol: the vegetation term weighs more in VH).
    """
    cos = np.cos(np.deg2rad(inc_deg))
    soil_vv = 10 ** ((-15.0 + 20.0 * theta_liq - 0.22 * (inc_deg - 35.0) + rough_db) / 10.0)
    soil_vh = 10 ** ((-23.0 + 10.0 * theta_liq - 0.25 * (inc_deg - 35.0) + 1.2 * rough_db) / 10.0)
    v1 = vwc / (vwc + 1.0)
    tau_vv = np.exp(-2 * 0.12 * vwc / cos)
    tau_vh = np.exp(-2 * 0.09 * vwc / cos)
    veg_vv = 0.2 * v1 * cos * (1 - tau_vv)
    veg_vh = 0.12 * v1 * cos * (1 - tau_vh)
    # liquid water in the snowpack absorbs C band
    damp_soil, damp_veg = np.where(wet_snow, 0.25, 1.0), np.where(wet_snow, 0.6, 1.0)
    vv = veg_vv * damp_veg + tau_vv * soil_vv * damp_soil
    vh = veg_vh * damp_veg + tau_vh * soil_vh * damp_soil
    return vv, vh


def speckle(rng: np.random.Generator, shape: tuple[int, int, int], looks: float, corr_px: float) -> np.ndarray:
    """Multiplicative speckle for a stack of square areas (n, h, w): mean 1, variance 1/``looks`` (the equivalent
    number of looks), spatially correlated over ~``corr_px`` pixels (a Gaussian kernel of that SD; a 7 x 7 Lee
    sigma filter, thesis 3.2.2, averages neighbouring pixels). A correlated Gaussian field mapped onto the gamma
    distribution of ``looks`` looks by the Wilson-Hilferty transform."""
    from scipy.ndimage import gaussian_filter

    n, h, w = shape
    pad = int(np.ceil(4 * corr_px))
    g = rng.standard_normal((n, h + 2 * pad, w + 2 * pad))
    if corr_px > 0:
        g = gaussian_filter(g, sigma=(0, corr_px, corr_px), mode="wrap", truncate=4.0)
        r = np.arange(-pad, pad + 1)
        k = np.exp(-0.5 * (r / corr_px) ** 2)
        k /= k.sum()
        g /= (k ** 2).sum()      # unit variance: the 2-D kernel's sum of squares is (sum k1^2)^2
    g = g[:, pad:pad + h, pad:pad + w]
    c = 1.0 / (9.0 * looks)
    return np.maximum(1 - c + g * np.sqrt(c), 0.05) ** 3


def reflectance(ndvi: np.ndarray, ndwi: np.ndarray, cloud: np.ndarray, snow: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface reflectance (0-1) of B04, B8A, B12 from NDVI/NDWI, blended with clouds and snow by probability."""
    nir = 0.12 + 0.32 * np.clip(ndvi, 0, 1)
    nir = np.where(ndvi < 0, 0.03, nir)
    red = nir * (1 - ndvi) / (1 + ndvi)
    swir = nir * (1 - ndwi) / (1 + ndwi)
    c, s = cloud / 100.0, snow / 100.0 * (1 - cloud / 100.0)
    out = []
    for clear, cl, sn in ((red, 0.45, 0.85), (nir, 0.48, 0.80), (swir, 0.35, 0.08)):
        v = (1 - c - s) * clear + c * cl + s * sn
        out.append(np.clip(v * (1 + rng.normal(0, 0.01, v.shape)), 0.0001, 1.5))
    return out[0], out[1], out[2]
