"""The four simulated regions: where they are, their climate, networks and probes (thesis 3.1, Table 1, Table B1).

Everything here is a declaration (numbers with units); the physics lives in :mod:`.physics`.
Climate numbers follow thesis 3.1.1 (annual precipitation, mean annual temperature, Koeppen class);
land-cover mixes follow thesis 3.1.3 / Fig. 3; probe names and land covers follow Table B1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# CORINE class names as the thesis' Table B1 writes them -> CLC 2018 code.
_CLC = {"Moors and heathland": 322, "Coniferous forest": 312, "Non-irrigated arable land": 211,
        "Complex cultivation pattern": 242, "Land principally occupied by agriculture": 243,
        "Beaches, dunes, sands": 331, "Permanently irrigated field": 212, "Vineyards": 221,
        "Natural grasslands": 321, "Peat bogs": 412}

# Thesis Table B1 (Appendix B), in its order. ISMN station names cannot contain "_" (the ismn package splits
# file names on "_"), so REMEDHUS names use "-" (e.g. "Casa-Periles"); "1.1"/"2.1" of the table are the
# spreadsheet-truncated station names "1.10"/"2.10".
_B1: dict[str, list[tuple[str, str]]] = {
    "denmark": [(n, lc) for n, lc in [
        ("1.01", "Moors and heathland"), ("1.03", "Moors and heathland"), ("1.04", "Coniferous forest"),
        ("1.05", "Coniferous forest"), ("1.06", "Non-irrigated arable land"), ("1.07", "Complex cultivation pattern"),
        ("1.08", "Non-irrigated arable land"), ("1.09", "Non-irrigated arable land"), ("1.10", "Non-irrigated arable land"),
        ("2.01", "Coniferous forest"), ("2.03", "Non-irrigated arable land"), ("2.04", "Non-irrigated arable land"),
        ("2.05", "Non-irrigated arable land"), ("2.06", "Land principally occupied by agriculture"),
        ("2.07", "Non-irrigated arable land"), ("2.08", "Non-irrigated arable land"), ("2.09", "Non-irrigated arable land"),
        ("2.10", "Beaches, dunes, sands"), ("2.11", "Moors and heathland"), ("3.01", "Non-irrigated arable land"),
        ("3.02", "Non-irrigated arable land"), ("3.03", "Non-irrigated arable land"), ("3.04", "Non-irrigated arable land"),
        ("3.05", "Land principally occupied by agriculture"), ("3.06", "Coniferous forest"),
        ("3.07", "Non-irrigated arable land"), ("3.08", "Non-irrigated arable land"),
        ("3.09", "Land principally occupied by agriculture")]],
    "spain": [
        ("Canizal", "Permanently irrigated field"), ("Carretoro", "Non-irrigated arable land"),
        ("Casa-Periles", "Non-irrigated arable land"), ("Concejo-del-Monte", "Non-irrigated arable land"),
        ("El-Coto", "Non-irrigated arable land"), ("El-Tomillar", "Vineyards"),
        ("Granja-g", "Permanently irrigated field"), ("Guarrati", "Natural grasslands"),
        ("La-Atalaya", "Non-irrigated arable land"), ("La-Cruz-de-Elias", "Non-irrigated arable land"),
        ("Las-Arenas", "Non-irrigated arable land"), ("Las-Bodegas", "Non-irrigated arable land"),
        ("Las-Brozas", "Vineyards"), ("Las-Eritas", "Non-irrigated arable land"),
        ("Las-Tres-Rayas", "Non-irrigated arable land"), ("Las-Vacas", "Permanently irrigated field"),
        ("Las-Victorias", "Non-irrigated arable land"), ("Llanos-de-la-Boveda", "Non-irrigated arable land"),
        ("Paredinas", "Vineyards"), ("Zamarron", "Non-irrigated arable land")],
    "finland": [
        ("SOD011", "Coniferous forest"), ("SOD021", "Peat bogs"), ("SOD071", "Coniferous forest"),
        ("SOD081", "Coniferous forest"), ("SOD091", "Coniferous forest"), ("SOD101", "Coniferous forest"),
        ("SOD130", "Coniferous forest"), ("SOD140", "Beaches, dunes, sands")],
    "sweden": [
        ("Degero", "Peat bogs"), ("Hyltemossa", "Coniferous forest"), ("Lanna", "Non-irrigated arable land"),
        ("Norunda", "Coniferous forest")],
}


@dataclass(frozen=True)
class Region:
    """One simulated region: location, climate, observing systems. Units in the field names or comments."""

    name: str
    network: str
    epsg: int                     # UTM zone of the tile
    lat: float                    # tile centre, WGS84 degrees (thesis 3.1.1 site coordinates)
    lon: float
    climate: str                  # Koeppen-Geiger class
    t_mean_c: float               # mean annual air temperature
    t_amp_c: float                # half the difference between warmest and coldest month means
    t_anom_sd_c: float            # day-to-day anomaly (AR(1), lag-1 correlation 0.75)
    dtr_c: float                  # mean diurnal temperature range
    p_annual_mm: float            # annual precipitation
    p_wet: float                  # mean probability of a wet day
    p_wet_seasonal: float         # amplitude of the wet-day probability (> 0: wetter winters)
    elev_m: float                 # mean elevation of the tile
    relief_m: float               # standard deviation of elevation over the tile
    sand_pct: float               # regional mean texture (HWSD-like)
    clay_pct: float
    oc_pct: float
    base_sat_pct: float
    landcover: dict[int, float]   # CORINE code -> share of the tile
    s1_tracks: int                # Sentinel-1 relative orbits covering the tile (each: S1A + S1B, 12-day repeat)
    s1_asc_utc: str               # ascending overpass time (HHMMSS, UTC)
    s1_dsc_utc: str               # descending overpass time
    s2_tile: str                  # MGRS tile id
    s2_utc: str                   # Sentinel-2 overpass time
    s2_offset_days: int           # first Sentinel-2 acquisition after the start date
    cloudy_scene_p: float         # probability that a Sentinel-2 scene is mostly cloudy
    polar_night: tuple[int, int] | None  # day-of-year window without Sentinel-2 acquisitions (sun too low)
    weather_station: str
    weather_hourly: bool
    probe_sensor: str
    icos: bool = False            # probes written as ICOS half-hourly CSV instead of ISMN
    probes: list[tuple[str, int]] = field(default_factory=list)
    # --- network geometry and spatial variability (issue 18: network scale) ---------------------------
    extent_km: float = 30.0       # probes are scattered over a square of this edge around (lat, lon)
    min_sep_km: float = 1.0       # smallest distance between two probes
    stations: tuple[tuple[str, float, float], ...] = ()   # extra weather stations: (name, east km, north km)
    rain_l_summer_km: float = 10.0   # correlation length of the daily rain field, convective season
    rain_l_winter_km: float = 35.0   # ... frontal season
    sand_sd_pct: float = 12.0     # field-to-field SD of sand content (regional field + parcel offsets)
    clay_sd_pct: float = 6.0
    # fixed probe sites (ICOS: real, far-apart coordinates, each with its own climate):
    # name -> (lat, lon, mean annual air temperature degC, annual precipitation mm)
    sites: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def s1_revisit_days(self) -> float:
        """Mean Sentinel-1 revisit: two satellites x ``s1_tracks`` orbits per 12-day repeat cycle."""
        return 12.0 / (2 * self.s1_tracks)


REGION_SPECS: dict[str, Region] = {
    # Warm-summer humid continental, 750 mm, 7.7 degC (thesis 3.1.1); sandy Jutland soils.
    "denmark": Region("denmark", "HOBE", 32632, 55.96, 9.09, "Dfb", 7.7, 7.5, 3.0, 7.0, 750.0, 0.52, 0.05,
                      60.0, 12.0, 78.0, 6.0, 1.8, 35.0,
                      {211: 0.42, 242: 0.07, 243: 0.07, 312: 0.17, 322: 0.08, 331: 0.03, 321: 0.04, 412: 0.02,
                       512: 0.04, 112: 0.06}, 3, "170900", "053600", "32VNH", "104021", 2, 0.62, None,
                      "Voulund", True, "Decagon-5TE", probes=[(n, _CLC[lc]) for n, lc in _B1["denmark"]],
                      # HOBE: the Skjern catchment, ~50 km across (2,500 km2), flat sandy outwash and moraine
                      extent_km=50.0, min_sep_km=2.0, stations=(("Borris", -14.0, -8.0), ("Gludsted", 12.0, 9.0),
                                                                ("Skjern", -20.0, 6.0)),
                      rain_l_summer_km=12.0, rain_l_winter_km=45.0, sand_sd_pct=9.0, clay_sd_pct=2.5),
    # Subarctic, < 600 mm, -0.6 degC; forest on sandy till and peat bogs.
    "finland": Region("finland", "FMI", 32635, 67.37, 26.63, "Dfc", -0.6, 13.5, 3.5, 8.0, 540.0, 0.48, -0.05,
                      185.0, 6.0, 72.0, 5.0, 4.0, 20.0,
                      {312: 0.56, 412: 0.20, 322: 0.06, 331: 0.04, 321: 0.04, 512: 0.05, 112: 0.05},
                      4, "160500", "043500", "35WMQ", "100031", 0, 0.68, (326, 20),
                      "Sodankyla", False, "Decagon-5TE", probes=[(n, _CLC[lc]) for n, lc in _B1["finland"]],
                      # FMI Sodankyla: probes a few hundred metres to ~12 km apart around the observatory
                      extent_km=12.0, min_sep_km=0.4, stations=(("Kersilo", 5.0, -4.0),),
                      rain_l_summer_km=10.0, rain_l_winter_km=40.0, sand_sd_pct=10.0, clay_sd_pct=2.0),
    # Cold semi-arid, < 400 mm, 10-12.5 degC; wet winters, dry summers; 650-900 m a.s.l.
    "spain": Region("spain", "REMEDHUS", 32630, 41.31, -5.41, "BSk", 11.5, 8.5, 2.0, 13.0, 385.0, 0.22, 0.10,
                    770.0, 28.0, 68.0, 14.0, 0.8, 60.0,
                    {211: 0.48, 212: 0.12, 221: 0.10, 242: 0.05, 243: 0.05, 321: 0.09, 312: 0.04, 512: 0.02,
                     112: 0.05}, 2, "181800", "062700", "30TTL", "110421", 1, 0.30, None,
                    "Villamor", False, "Stevens-Hydra-Probe", probes=[(n, _CLC[lc]) for n, lc in _B1["spain"]],
                    # REMEDHUS: 20 stations over ~35 x 35 km (1,300 km2) of the Duero basin; soils from sand to
                    # clay loam (Sanchez et al. 2012), so probe levels differ by ~0.2 m3/m3
                    extent_km=35.0, min_sep_km=2.5, stations=(("Toro", 12.0, 10.0), ("Fuentesauco", -8.0, -12.0)),
                    rain_l_summer_km=8.0, rain_l_winter_km=30.0, sand_sd_pct=20.0, clay_sd_pct=10.0),
    # Humid continental to subarctic (ICOS sites south to north), 500-900 mm.
    "sweden": Region("sweden", "ICOS", 32633, 60.09, 17.48, "Dfb", 5.5, 10.0, 3.0, 7.5, 620.0, 0.47, 0.03,
                     40.0, 7.0, 45.0, 18.0, 3.0, 45.0,
                     {312: 0.46, 412: 0.15, 211: 0.20, 322: 0.04, 321: 0.04, 512: 0.05, 112: 0.06},
                     3, "163400", "050300", "33VXG", "102021", 3, 0.58, None,
                     "Uppsala", True, "ThetaProbe-ML2", icos=True, probes=[(n, _CLC[lc]) for n, lc in _B1["sweden"]],
                     # ICOS Sweden: ecosystem stations hundreds of km apart, each with its own weather (SMHI normals)
                     extent_km=900.0, min_sep_km=5.0, sand_sd_pct=12.0, clay_sd_pct=5.0,
                     sites={"Degero": (64.182, 19.557, 1.2, 523.0), "Hyltemossa": (56.098, 13.419, 7.4, 707.0),
                            "Lanna": (58.341, 13.102, 6.6, 570.0), "Norunda": (60.086, 17.479, 5.5, 527.0),
                            "Site-01": (64.256, 19.775, 1.8, 614.0)}),
}


def generated_name(region: str, k: int) -> str:
    """Name of the k-th generated probe (0-based) beyond Table B1; no '_' (ISMN file naming)."""
    return {"denmark": f"9.{k + 1:02d}", "finland": f"SOD9{k + 1:02d}", "spain": f"Sim-{k + 1:02d}",
            "sweden": f"Site-{k + 1:02d}"}[region]


def probe_list(region: Region, n: int, rng) -> list[tuple[str, int]]:  # noqa: ANN001 - numpy Generator
    """The first ``n`` probes of ``region``: Table B1 names first, then generated names.

    Generated probes take a land cover drawn from the region's mix (never water 512 or built-up 112).
    """
    out = list(region.probes[:n])
    codes = [c for c in region.landcover if c not in (512, 112)]
    w = [region.landcover[c] for c in codes]
    total = sum(w)
    for k in range(n - len(out)):
        code = int(rng.choice(codes, p=[x / total for x in w]))
        out.append((generated_name(region.name, k), code))
    return out
