"""The physics of the simulated area: weather, snow, soil temperature, vegetation phenology, a daily soil
water balance per pixel, and the sensors (water-cloud radar model, optical reflectances).

Vectorised over pixels; only the water balance and soil temperature loop over days. Equations and
parameter values are documented in docs/simulation.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilmoisture.simulate.regions import Region

LAYER_MM = 80.0          # effective depth of the sensed surface layer (0-5 cm readings + coupling below), mm
RAIN_SNOW_C = 0.5        # air temperature below which precipitation falls as snow, degC
MELT_MM_PER_C = 3.0      # degree-day snowmelt factor, mm / degC / day
LIQUID_FROZEN = 0.25     # share of soil water still liquid when frozen (what probes and radar see)
PEAT_WATER_TABLE = 0.44  # m3/m3 the water table pulls peat surfaces towards (peat bogs stay wet)


@dataclass
class Weather:
    """Daily regional weather (arrays over days) and its hourly detail (days x 24)."""

    precip_mm: np.ndarray
    ta_mean: np.ndarray
    ta_min: np.ndarray
    ta_max: np.ndarray
    pet_mm: np.ndarray
    swe_mm: np.ndarray          # snow water equivalent at the end of the day
    melt_mm: np.ndarray
    rain_mm: np.ndarray
    ta_hourly: np.ndarray
    precip_hourly: np.ndarray


def _ra_mm(lat_deg: float, doy: np.ndarray) -> np.ndarray:
    """Extraterrestrial radiation as evaporation equivalent (FAO-56 eq. 21, x 0.408), mm/day."""
    phi = np.deg2rad(lat_deg)
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    dec = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(dec), -1, 1))
    ra = 24 * 60 / np.pi * 0.082 * dr * (ws * np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.sin(ws))
    return 0.408 * np.maximum(ra, 0)


def weather(rng: np.random.Generator, region: Region, doy: np.ndarray) -> Weather:
    """Seasonal temperature with AR(1) anomalies; Markov-chain wet days with gamma amounts; snow by degree days;
    Hargreaves reference evapotranspiration."""
    n = len(doy)
    season = -np.cos(2 * np.pi * (doy - 20) / 365.0)           # -1 on 20 January, +1 in mid-July
    anom = np.empty(n)
    a = 0.0
    eps = rng.standard_normal(n) * region.t_anom_sd_c * np.sqrt(1 - 0.75 ** 2)
    for i in range(n):
        a = 0.75 * a + eps[i]
        anom[i] = a
    ta_mean = region.t_mean_c + region.t_amp_c * season + anom
    dtr = np.clip(region.dtr_c * (1 + 0.25 * season) + rng.normal(0, 1.5, n), 1.0, None)
    # Wet-day probability: seasonal (wet winters where p_wet_seasonal > 0) with persistence 0.3.
    p = np.clip(region.p_wet * (1 - region.p_wet_seasonal / region.p_wet * season), 0.03, 0.95)
    u = rng.random(n)
    wet = np.zeros(n, dtype=bool)
    for i in range(n):
        pi = 0.7 * p[i] + 0.3 * (wet[i - 1] if i else p[i])
        wet[i] = u[i] < pi
    mean_amount = region.p_annual_mm / (365.0 * region.p_wet)
    precip = np.where(wet, rng.gamma(0.75, mean_amount / 0.75, n), 0.0)
    precip = np.round(precip, 1)
    # Snow: accumulation below RAIN_SNOW_C, degree-day melt above 0 degC.
    swe = np.empty(n)
    melt = np.empty(n)
    rain = np.where(ta_mean >= RAIN_SNOW_C, precip, 0.0)
    s = 0.0
    for i in range(n):
        s += precip[i] - rain[i]
        m = min(s, MELT_MM_PER_C * max(ta_mean[i], 0.0))
        s -= m
        swe[i], melt[i] = s, m
    # Hourly detail: a sinusoidal daily cycle (max ~15 UTC) and rain in one shower of 1-8 hours.
    h = np.arange(24)[None, :]
    ta_h = ta_mean[:, None] + dtr[:, None] / 2 * np.sin(2 * np.pi * (h - 9) / 24) + rng.normal(0, 0.3, (n, 24))
    start = rng.integers(0, 24, n)[:, None]
    dur = rng.integers(1, 9, n)[:, None]
    inside = ((h - start) % 24) < dur
    wts = np.where(inside, rng.gamma(2.0, 1.0, (n, 24)), 0.0)
    p_h = precip[:, None] * wts / wts.sum(axis=1, keepdims=True)
    ta_min, ta_max = ta_h.min(axis=1), ta_h.max(axis=1)
    # Hargreaves & Samani (1985) reference evapotranspiration, mm/day.
    pet = 0.0023 * _ra_mm(region.lat, doy) * (ta_mean + 17.8) * np.sqrt(np.maximum(ta_max - ta_min, 0))
    return Weather(precip, ta_mean, ta_min, ta_max, np.maximum(pet, 0.0), swe, melt, rain, ta_h, p_h)


def soil_temperature(w: Weather, forest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Daily mean and maximum soil temperature at 5 cm (degC): a damped, lagged air temperature, insulated
    (held just below 0 degC) under snow. Forest soils follow the air more slowly and with a smaller daily range."""
    k = 0.2 if forest else 0.35
    n = len(w.ta_mean)
    ts = np.empty(n)
    t = w.ta_mean[0]
    for i in range(n):
        snow = w.swe_mm[i] > 5.0
        target = -0.5 if (snow and w.ta_mean[i] < 0.5) else w.ta_mean[i]
        t += (0.08 if snow else k) * (target - t)
        ts[i] = t
    amp = np.where(w.swe_mm > 5.0, 0.3, (0.3 if forest else 0.6) * (w.ta_max - w.ta_min))
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
def water_balance(w: Weather, frozen: np.ndarray, ndvi: np.ndarray, porosity: np.ndarray, residual: np.ndarray,
                  ks: np.ndarray, b: np.ndarray, forest: np.ndarray, peat: np.ndarray, irrigated: np.ndarray
                  ) -> np.ndarray:
    """Daily volumetric soil moisture of the surface layer per pixel, m3/m3, bounded by [residual, porosity].

    ``frozen`` and ``ndvi`` are indexable by day, giving per-pixel arrays (bool; NDVI). Inputs: rain + snowmelt minus canopy
    interception (infiltration cut to 30 % on frozen soil); losses: evapotranspiration (PET x crop factor from
    NDVI x moisture stress, none under snow or on frozen soil) and gravity drainage K_s (theta/phi)^(2b+3)
    (none when frozen); peat exchanges water with a shallow water table; irrigated land is watered in dry spells.
    """
    n_days, n_px = len(w.ta_mean), porosity.size
    out = np.empty((n_days, n_px), dtype=np.float32)
    theta = residual + 0.6 * (porosity - residual)
    icap = np.where(forest, 2.5, 1.0)
    expo = 2 * b + 3
    stress_top = residual + 0.7 * (porosity - residual)
    irrig_trigger = residual + 0.3 * (porosity - residual)
    for d in range(n_days):
        nd = np.clip(ndvi[d], 0.0, 0.9)
        fz = frozen[d]
        rain = w.rain_mm[d]
        intercept = np.minimum(rain, icap * nd)
        inflow = (rain - intercept + w.melt_mm[d]) * np.where(fz, 0.3, 1.0)
        kc = np.where(forest, 1.0, 0.25 + 0.85 * nd / 0.9)
        stress = np.clip((theta - residual) / (stress_top - residual), 0.0, 1.0)
        et = w.pet_mm[d] * kc * stress * (0.0 if w.swe_mm[d] > 1.0 else 1.0) * ~fz
        drain = np.where(fz, 0.0, np.minimum(ks * (theta / porosity) ** expo, 0.5 * (theta - residual) * LAYER_MM))
        gw = np.where(peat, 0.3 * (PEAT_WATER_TABLE - theta) * LAYER_MM, 0.0)
        irr = np.where(irrigated & (theta < irrig_trigger) & (w.ta_mean[d] > 12.0), 12.0, 0.0)
        theta = theta + (inflow - et - drain + gw + irr) / LAYER_MM
        theta = np.clip(theta, residual, porosity)
        out[d] = theta
    return out


# --- sensors -------------------------------------------------------------------------------------------
def sigma0(theta_liq: np.ndarray, vwc: np.ndarray, inc_deg: np.ndarray, rough_db: np.ndarray,
           wet_snow: bool) -> tuple[np.ndarray, np.ndarray]:
    """Water-cloud model (Attema & Ulaby 1978) VV and VH backscatter, linear, before speckle.

    Soil: sigma_soil[dB] = -19.5 + 26 theta - 0.22 (inc - 35) + roughness; canopy: A V1 cos(inc) (1 - tau2)
    with V1 = V/(V+1), A = 0.2; two-way attenuation tau2 = exp(-2 B V / cos(inc)), B = 0.12 m2/kg.
    """
    cos = np.cos(np.deg2rad(inc_deg))
    soil = 10 ** ((-19.5 + 26.0 * theta_liq - 0.22 * (inc_deg - 35.0) + rough_db) / 10.0)
    tau2 = np.exp(-2 * 0.12 * vwc / cos)
    veg = 0.2 * vwc / (vwc + 1.0) * cos * (1 - tau2)
    if wet_snow:   # liquid water in the snowpack absorbs C band
        soil, veg = soil * 0.25, veg * 0.6
    vv = veg + tau2 * soil
    vh = 0.22 * veg + 0.06 * tau2 * soil
    return vv, vh


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
