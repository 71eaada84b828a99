"""The simulated study area: physically plausible, in the real file formats, reproducible, atomic."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from soilmoisture import config
from soilmoisture.errors import ConfigError
from soilmoisture.simulate import generate, landscape, physics
from soilmoisture.simulate.regions import REGION_SPECS


def _manifest(root: Path) -> dict:
    return json.loads((root / "data" / "raw" / "manifest.json").read_text())


def _truth(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "data" / "truth" / "probes_truth.parquet")


def _s1_files(root: Path, region: str) -> list[Path]:
    return sorted((root / "data" / "raw" / "sentinel1" / region).glob("S1*.tif"))


def test_ssm_truth_stays_between_residual_and_porosity(tiny_area: Path) -> None:
    import rasterio

    raw, truth = tiny_area / "data" / "raw", tiny_area / "data" / "truth"
    for region in _manifest(tiny_area)["regions"]:
        with rasterio.open(truth / f"{region}_soil.tif") as s, \
                rasterio.open(raw / "static" / f"{region}_clc.tif") as c:
            clay, _silt, sand, oc, _bs, _wet = s.read().astype(np.float64)
            clc = c.read(1)
        phi, theta_r, _ks, _b = landscape.hydraulics(sand, clay, oc, clc)
        with rasterio.open(truth / f"{region}_ssm.tif") as t:
            ssm = t.read()
        assert ssm.shape[0] == 365
        assert (ssm >= theta_r[None] - 1e-4).all() and (ssm <= phi[None] + 1e-4).all()
        assert ssm.std(axis=0).mean() > 0.01        # it moves: rain wets, drainage and ET dry


def test_sigma0_rises_with_ssm_over_low_vegetation_and_much_less_under_forest() -> None:
    theta = np.linspace(0.05, 0.45, 9)
    inc = np.full_like(theta, 38.0)
    zero = np.zeros_like(theta)
    arable, _ = physics.sigma0(theta, physics.vwc_kg_m2(np.full_like(theta, 0.3), zero), inc, zero, False)
    forest, _ = physics.sigma0(theta, physics.vwc_kg_m2(np.full_like(theta, 0.8), zero + 6.0), inc, zero, False)
    slope_arable = np.polyfit(theta, 10 * np.log10(arable), 1)[0]
    slope_forest = np.polyfit(theta, 10 * np.log10(forest), 1)[0]
    assert slope_arable > 15.0                       # dB per m3/m3
    assert 0 < slope_forest < slope_arable / 4


def test_sigma0_rasters_follow_ssm_on_open_land_not_in_forest(tiny_area: Path) -> None:
    """At the probe pixels of the written scenes (tile or network clip): VV in dB rises with the true SSM over open
    land, much less under forest."""
    import rasterio

    raw = tiny_area / "data" / "raw"
    truth = _truth(tiny_area).set_index(["probe_id", "date"])
    xs, ys = {"open": [], "forest": []}, {"open": [], "forest": []}
    for p in _manifest(tiny_area)["probes"]:
        group = "forest" if p["landcover_code"] == 312 else "open" if p["landcover_code"] in (211, 212, 242, 243, 321,
                                                                                            322, 331) else None
        if group is None:
            continue
        folder = raw / "sentinel1" / p["region"] / ("" if p["area"] == "tile" else p["area"])
        for path in sorted(folder.glob("S1*.tif")):
            t = truth.loc[(p["probe_id"], pd.Timestamp(path.name.split("_")[4][:8]))]
            if t["frozen"]:
                continue
            with rasterio.open(path) as ds:
                vv = float(ds.read(1, window=((p["row"], p["row"] + 1), (p["col"], p["col"] + 1)))[0, 0])
            if vv < 1.0:                             # leave out corner-reflector outliers
                xs[group].append(t["ssm_true"])
                ys[group].append(10 * np.log10(vv))
    slope = {g: np.polyfit(xs[g], ys[g], 1)[0] for g in xs}
    assert slope["open"] > 10.0
    assert slope["forest"] < slope["open"] / 3


def test_sentinel_revisits_are_as_configured(tiny_area: Path) -> None:
    man = _manifest(tiny_area)
    for region, entry in man["regions"].items():
        files = _s1_files(tiny_area, region)
        days = sorted({pd.Timestamp(f.name.split("_")[4][:8]) for f in files})
        mean_gap = np.mean(np.diff(days).astype("timedelta64[D]").astype(int))
        assert mean_gap == pytest.approx(REGION_SPECS[region].s1_revisit_days, rel=0.15)
        assert {f.stem.rsplit("_", 1)[1] for f in files} == {"ASC", "DSC"}
        s2 = sorted((tiny_area / "data" / "raw" / "sentinel2" / region).glob("S2*.tif"))
        s2_days = sorted(pd.Timestamp(f.name.split("_")[2][:8]) for f in s2)
        assert np.median(np.diff(s2_days).astype("timedelta64[D]").astype(int)) == 5
        assert entry["s1_scenes"] == len(files) and entry["s2_scenes"] == len(s2)


def test_frozen_days_exist_only_in_cold_regions(tiny_area: Path) -> None:
    frozen = _truth(tiny_area).groupby("region")["frozen"].mean()
    assert frozen["spain"] == 0.0
    assert frozen["finland"] > 0.2 and frozen["sweden"] > 0.05
    assert frozen["denmark"] < frozen["sweden"]


def test_raster_files_open_with_rasterio(tiny_area: Path) -> None:
    import rasterio

    raw = tiny_area / "data" / "raw"
    region = "spain"
    s1 = _s1_files(tiny_area, region)
    with rasterio.open(s1[0]) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "float32" and ds.crs.to_epsg() == 32630
        assert ds.descriptions == ("sigma0_vv", "sigma0_vh", "incidence_angle_deg")
        tags = ds.tags()
        assert tags["UNITS"] == "linear" and tags["ACQUISITION_TIME"][:10].replace("-", "") in s1[0].name
        assert 25 < np.nanmean(ds.read(3)) < 50
    s2 = sorted((raw / "sentinel2" / region).glob("S2*.tif"))
    with rasterio.open(s2[0]) as ds:
        assert ds.count == 5 and ds.dtypes[0] == "uint16" and ds.nodata == 0
        assert ds.descriptions == ("B04", "B8A", "B12", "CLD", "SNW")
    for name in ("dtm", "clc"):
        with rasterio.open(raw / "static" / f"{region}_{name}.tif") as ds:
            assert ds.count == 1
        with rasterio.open(raw / "static" / region / f"network_{name}.tif") as ds:   # clipped to the network
            assert ds.count == 1 and ds.block_shapes[0] == (64, 64)
    # Every acquisition also exists clipped to the network's bounding box (patches around the other probes).
    assert {f.name for f in (raw / "sentinel1" / region / "network").glob("S1*.tif")} == {f.name for f in s1}
    csm = sorted((raw / "products" / "csm" / region).glob("*/CSM_SSM1km_*.tif"))
    assert len(csm) == len({f.name.split("_")[4][:8] for f in s1})
    with rasterio.open(csm[0]) as ds:
        assert ds.res == (1000.0, 1000.0)
    # Corner reflectors: a few sigma0 values far above 1 somewhere in the archive.
    assert any(np.nanmax(rasterio.open(f).read(1)) > 1.0 for f in s1[:20])


def test_ecv_files_open_with_xarray_like_the_real_product(tiny_area: Path) -> None:
    import xarray as xr

    files = sorted((tiny_area / "data" / "raw" / "products" / "ecv_sm").glob("*.nc"))
    assert len(files) == 365
    assert files[0].name == "ESACCI-SOILMOISTURE-L3S-SSMV-COMBINED-20170101000000-fv05.2.nc"
    with xr.open_dataset(files[180], mask_and_scale=False) as ds:
        assert ds["sm"].dims == ("time", "lat", "lon") and ds.sizes["time"] == 1
        assert {"sm", "flag", "sm_uncertainty", "sensor", "t0"} <= set(ds.data_vars)
        lat = ds["lat"].to_numpy()
        assert (np.diff(lat) < 0).all() and np.allclose(np.diff(lat), -0.25)
        assert np.allclose((lat - 0.125) % 0.25, 0, atol=1e-4)
        sm = ds["sm"].to_numpy()
        valid = sm[sm != -9999.0]
        assert valid.size > 0 and valid.max() <= 0.35
        assert (ds["flag"].to_numpy()[sm != -9999.0] == 0).all()


def test_probe_archive_opens_with_ismn_interface(tiny_area: Path, tmp_path: Path) -> None:
    from ismn.interface import ISMN_Interface

    man = _manifest(tiny_area)
    expected = {(p["network"], p["probe_id"]) for p in man["probes"] if p["source"] == "ismn"}
    ds = ISMN_Interface(str(tiny_area / "data" / "raw" / "ismn"), meta_path=str(tmp_path))
    found = set()
    for net in ds.collection.iter_networks():
        for st in net.iter_stations():
            found.add((net.name, st.name))
            sensors = {s.variable: s for s in st.iter_sensors()}
            assert set(sensors) == {"soil_moisture", "soil_temperature"}
            sm = sensors["soil_moisture"]
            assert (sm.depth.start, sm.depth.end) == (0.0, 0.05)
            assert (sensors["soil_temperature"].depth.start, sensors["soil_temperature"].depth.end) == (0.05, 0.05)
    assert found == expected
    assert {n for n, _ in found} == {"HOBE", "FMI", "REMEDHUS"}
    # One station's readings: hourly, mostly 'G', some other flags, gaps, noisy truth.
    st = ds["HOBE"]["1.06"] if "1.06" in ds["HOBE"].stations else next(ds["HOBE"].iter_stations())
    sensor = next(s for s in st.iter_sensors() if s.variable == "soil_moisture")
    data = sensor.read_data()
    flags = data["soil_moisture_flag"]
    assert 0.8 < (flags == "G").mean() < 1.0
    assert len(data) < 365 * 24
    good = data.loc[flags == "G", "soil_moisture"]
    daily = good.groupby(good.index.normalize()).mean()
    truth = _truth(tiny_area).query("probe_id == @st.name").set_index("date")["ssm_true"]
    err = (daily - truth.reindex(daily.index)).abs().mean()
    assert 0.003 < err < 0.1


def test_icos_sites_have_half_hourly_sub_probes(tiny_area: Path) -> None:
    man = _manifest(tiny_area)
    icos = [p for p in man["probes"] if p["source"] == "icos"]
    assert [p["probe_id"] for p in icos] == ["Degero", "Hyltemossa"]
    sites = pd.read_csv(tiny_area / "data" / "raw" / "icos" / "sites.csv")
    assert list(sites["site"]) == ["Degero", "Hyltemossa"]
    df = pd.read_csv(tiny_area / "data" / "raw" / "icos" / "Degero.csv", dtype={"TIMESTAMP_START": str})
    swc = [c for c in df if c.startswith("SWC_")]
    assert 2 <= len(swc) <= 4 and len(df) == 365 * 48
    assert df["TIMESTAMP_START"].iloc[1] == "201701010030"
    assert (df[swc] == -9999).any().any()
    v = df[swc].where(df[swc] != -9999)
    assert 0 < v.stack().median() < 100


def test_probe_pixels_carry_the_probe_land_cover(tiny_area: Path) -> None:
    import rasterio

    man = _manifest(tiny_area)
    static = tiny_area / "data" / "raw" / "static"
    assert {p["area"] for p in man["probes"]} >= {"tile", "network"}
    for p in man["probes"]:
        path = static / (f"{p['region']}_clc.tif" if p["area"] == "tile" else f"{p['region']}/{p['area']}_clc.tif")
        with rasterio.open(path) as ds:
            code = int(ds.read(1, window=((p["row"], p["row"] + 1), (p["col"], p["col"] + 1)))[0, 0])
            row, col = ds.index(*_to_crs(ds.crs, p["lon"], p["lat"]))
        assert code == p["landcover_code"] and (row, col) == (p["row"], p["col"])
        assert code not in (512, 112)
    # ISMN metadata says the same (the 'insitu' CORINE classification).
    static = next((tiny_area / "data" / "raw" / "ismn" / "HOBE" / "1.04").glob("*static_variables.csv"))
    meta = pd.read_csv(static, sep=";", index_col=False)
    insitu = meta[(meta["quantity_name"] == "land cover classification") & (meta["quantity_source_name"] == "insitu")]
    assert int(insitu["value"].iloc[0]) == 312


def _to_crs(crs: object, lon: float, lat: float) -> tuple[float, float]:
    from rasterio.warp import transform

    xs, ys = transform("EPSG:4326", crs, [lon], [lat])
    return xs[0], ys[0]


def test_products_are_worse_than_truth_and_csm_worse_than_ecv(tiny_area: Path) -> None:
    t = _truth(tiny_area)
    ecv = t.dropna(subset=["ecv_sm"])
    csm = t.dropna(subset=["csm"])
    mae_ecv = (ecv["ecv_sm"] - ecv["ssm_true"]).abs().mean()
    mae_csm = (csm["csm"] - csm["ssm_true"]).abs().mean()
    assert 0.03 < mae_ecv < mae_csm / 1.5
    assert ecv["ecv_sm"].max() <= 0.35


def test_same_seed_gives_byte_identical_files_serial_or_parallel(make_params, tmp_path: Path) -> None:
    small = {"simulate.probes_per_region": {"denmark": 1, "finland": 0, "spain": 1, "sweden": 1},
             "simulate.tile_px": {"default": 8, "bench": 500}, "simulate.start": "2017-01-01",
             "simulate.end": "2017-02-15"}
    hashes = []
    for name, seed, workers in (("a", 7, 1), ("b", 7, 2), ("c", 8, 1)):
        params = make_params({**small, "simulate.seed": seed}, root=tmp_path / name)
        s = params.simulate
        generate(params.path(params.paths.raw), params.path(params.paths.truth), seed=s.seed, size=s.size,
                 start=s.start, end=s.end, probes_per_region=s.probes_per_region, tile_px=s.tile,
                 pixel_m=s.pixel_m, workers=workers)
        root = tmp_path / name / "data"
        hashes.append({str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                       for f in sorted(root.rglob("*")) if f.is_file()})
    assert hashes[0] == hashes[1]
    assert len(hashes[0]) > 50
    assert hashes[0] != hashes[2]
    assert not any(p.name.startswith(".") for p in (tmp_path / "a" / "data").iterdir())   # temp folders renamed away


@pytest.mark.parametrize("key, value, message", [
    ("simulate.tile_px", {"default": 4, "bench": 500}, "simulate.tile_px.default"),
    ("simulate.probes_per_region", {"denmark": 2, "atlantis": 1}, "simulate.probes_per_region.atlantis"),
    ("simulate.pixel_m", 0.1, "simulate.pixel_m"),
    ("simulate.size", "huge", "simulate.size"),
    ("simulate.end", "2016-01-01", "simulate.end"),
    ("simulate.patch_px", 24, "simulate.patch_px"),
])
def test_bad_simulate_parameter_fails_before_any_work(tmp_path: Path, key: str, value: object, message: str) -> None:
    from conftest import write_params

    path = write_params(tmp_path, {key: value})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config.load(path)
    assert not (tmp_path / "data").exists()


def test_unknown_simulate_key_is_rejected_by_name(tmp_path: Path) -> None:
    from conftest import write_params

    path = write_params(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["simulate"]["speckle"] = 3
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"simulate\.speckle"):
        config.load(path)


def test_figures_are_small_pngs(tiny_area: Path, tmp_path: Path) -> None:
    from soilmoisture.simulate.figures import make_figures

    paths = make_figures(tiny_area / "data" / "raw", tiny_area / "data" / "truth", tmp_path / "fig")
    assert [p.name for p in paths] == ["sim_sigma0_vs_ssm.png", "sim_ssm_series.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 200_000


def test_ecv_grid_has_a_cell_with_data_over_every_probe(tiny_area: Path) -> None:
    import xarray as xr

    probes = pd.DataFrame(_manifest(tiny_area)["probes"])
    files = sorted((tiny_area / "data" / "raw" / "products" / "ecv_sm").glob("*.nc"))
    with xr.open_mfdataset(files[150:200], combine="by_coords") as ds:
        sm = ds["sm"].load()
        for _, p in probes.iterrows():
            cell = sm.sel(lat=p["lat"], lon=p["lon"], method="nearest")
            assert abs(float(cell.lat) - p["lat"]) <= 0.125 and abs(float(cell.lon) - p["lon"]) <= 0.125
            assert cell.notnull().any(), p["probe_id"]


def test_terrain_slopes_are_gentle_except_in_spain(tiny_area: Path) -> None:
    import rasterio

    slopes = {}
    for region in _manifest(tiny_area)["regions"]:
        with rasterio.open(tiny_area / "data" / "raw" / "static" / f"{region}_dtm.tif") as ds:
            gy, gx = np.gradient(ds.read(1).astype(float), *ds.res)
        slopes[region] = float(np.hypot(gx, gy).mean() * 100)
    assert all(0.3 < s < 8 for r, s in slopes.items() if r != "spain"), slopes
    assert 3 < slopes["spain"] < 20, slopes


def test_failed_run_leaves_the_previous_area_untouched(make_params, tmp_path: Path, monkeypatch) -> None:
    from soilmoisture.simulate import writers

    params = make_params({"simulate.probes_per_region": {"denmark": 1, "finland": 0, "spain": 1, "sweden": 0},
                          "simulate.tile_px": {"default": 8, "bench": 500}, "simulate.start": "2017-01-01",
                          "simulate.end": "2017-01-20"})
    s = params.simulate
    kw = dict(seed=s.seed, size=s.size, start=s.start, end=s.end, probes_per_region=s.probes_per_region,
              tile_px=s.tile, pixel_m=s.pixel_m, workers=1)
    raw, truth = params.path(params.paths.raw), params.path(params.paths.truth)
    generate(raw, truth, **kw)
    before = {str(f): f.read_bytes() for f in sorted(raw.rglob("*")) if f.is_file()}

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writers, "write_ecv", boom)
    with pytest.raises(OSError, match="disk full"):
        generate(raw, truth, **{**kw, "seed": s.seed + 1})
    assert {str(f): f.read_bytes() for f in sorted(raw.rglob("*")) if f.is_file()} == before
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw", "truth"]


def test_probes_spread_over_the_network_extent_with_one_tile_and_patches(tiny_area: Path) -> None:
    from soilmoisture.evaluate.realism import local_km

    man = _manifest(tiny_area)
    probes = pd.DataFrame(man["probes"])
    for region, grp in probes.groupby("region"):
        x, y = local_km(grp["lat"].to_numpy(), grp["lon"].to_numpy())
        spread = max(np.ptp(x), np.ptp(y))
        extent = REGION_SPECS[region].extent_km
        assert spread > 0.1 * extent, (region, spread)         # kilometres apart, not one 640 m tile
        assert grp["area"].iloc[0] == "tile"                    # the mapping tile is centred on the first probe
    sweden = probes[probes["region"] == "sweden"]
    x, y = local_km(sweden["lat"].to_numpy(), sweden["lon"].to_numpy())
    assert np.hypot(np.ptp(x), np.ptp(y)) > 500                  # ICOS: Degero to Hyltemossa, real coordinates
    stations = pd.read_csv(tiny_area / "data" / "raw" / "weather" / "stations.csv")
    assert stations.groupby("region").size()["spain"] >= 3     # several stations per network


def test_rain_30_km_apart_is_less_correlated_than_300_m_apart() -> None:
    region = REGION_SPECS["spain"]
    doy = (np.arange(730) % 365) + 1
    xy = np.array([[0.0, 0.0], [0.3, 0.0], [30.0, 0.0]])
    w = physics.weather(np.random.default_rng(3), region, doy, xy, np.full(3, region.elev_m), np.full(3, region.lat),
                        np.full(3, region.t_mean_c), np.full(3, region.p_annual_mm))
    r = np.corrcoef(w.precip_mm.T)
    assert r[0, 1] > 0.9
    assert r[0, 2] < r[0, 1] - 0.2
    assert 0.15 < r[0, 2]                        # still one climate: synoptic rain is shared
    assert (w.precip_mm[:, 0] != w.precip_mm[:, 2]).mean() > 0.1
    annual = w.precip_mm.sum(axis=0) / 2
    assert np.all((0.6 * region.p_annual_mm < annual) & (annual < 1.5 * region.p_annual_mm))
    # temperature falls with elevation (lapse rate)
    w2 = physics.weather(np.random.default_rng(3), region, doy, xy[:2], np.array([700.0, 900.0]),
                         np.full(2, region.lat), np.full(2, region.t_mean_c), np.full(2, region.p_annual_mm))
    assert (w2.ta_mean[:, 0] - w2.ta_mean[:, 1]).mean() == pytest.approx(1.3, abs=0.1)


def test_hollows_are_wetter_than_ridges_on_the_same_day() -> None:
    region = REGION_SPECS["spain"]
    doy = (np.arange(365) % 365) + 1
    w = physics.weather(np.random.default_rng(5), region, doy, np.zeros((1, 2)), np.full(1, region.elev_m),
                        np.full(1, region.lat), np.full(1, region.t_mean_c), np.full(1, region.p_annual_mm))
    n = 3
    wet = np.array([2.0, 0.0, -2.0])            # hollow, flat, ridge; same soil, same weather
    sand, clay, oc = np.full(n, 60.0), np.full(n, 15.0), np.full(n, 1.0)
    phi, res, ks, b = landscape.hydraulics(sand, clay, oc, np.full(n, 211))
    theta = physics.water_balance(w, np.zeros(n, int), np.zeros((365, n), bool), np.full((365, n), 0.3), phi, res,
                                  ks, b, np.zeros(n, bool), np.zeros(n, bool), wet, np.zeros((365, n)))
    # (equal only when both have dried to the air-dry water content of the soil)
    assert (theta[:, 0] >= theta[:, 1] - 1e-4).mean() > 0.95 and (theta[:, 1] >= theta[:, 2] - 1e-4).mean() > 0.95
    assert (theta[:, 0] - theta[:, 2]).mean() > 0.02
    # The terrain's wetness term is positive in hollows: below the surrounding mean elevation.
    ter = landscape.terrain(np.random.default_rng(0), region)
    x, y = np.meshgrid(np.arange(0, 4000, 20.0), np.arange(0, 4000, 20.0))
    tpi = sum(sd * f.highpass(x, y, landscape.TPI_RADIUS_M) for sd, f in ter.parts)   # above the local mean
    assert np.corrcoef(tpi, ter.wetness(x, y))[0, 1] < -0.7


def test_speckle_is_spatially_correlated_at_the_stated_looks() -> None:
    from soilmoisture.simulate.generate import SPECKLE_CORR_PX, SPECKLE_LOOKS

    s = physics.speckle(np.random.default_rng(1), (200, 32, 32), SPECKLE_LOOKS, SPECKLE_CORR_PX)
    assert s.mean() == pytest.approx(1.0, abs=0.01)
    assert s.mean() ** 2 / s.var() == pytest.approx(SPECKLE_LOOKS, rel=0.1)      # equivalent number of looks
    lag = {k: np.corrcoef(s[:, :, :-k].ravel(), s[:, :, k:].ravel())[0, 1] for k in (1, 3, 10)}
    assert lag[1] > 0.5 and lag[3] > 0.1 and abs(lag[10]) < 0.05
    # averaging a 7 x 7 window gains fewer looks than 49 independent pixels would
    m = s[:, :28, :28].reshape(200, 4, 7, 4, 7).mean(axis=(2, 4))
    assert 2 * SPECKLE_LOOKS < m.mean() ** 2 / m.var() < 49 * SPECKLE_LOOKS / 2


def test_scene_files_are_clipped_to_the_network_and_read_back_at_every_probe(tiny_area: Path) -> None:
    """A clipped scene stores only the patch blocks; every probe's pixel reads back from the tile or its clip."""
    import rasterio

    man = _manifest(tiny_area)
    raw = tiny_area / "data" / "raw"
    for p in man["probes"]:
        region = p["region"]
        folder = raw / "sentinel1" / region
        path = sorted(folder.glob("S1*.tif") if p["area"] == "tile" else (folder / p["area"]).glob("S1*.tif"))[0]
        with rasterio.open(path) as ds:
            v = ds.read(window=((p["row"] - 2, p["row"] + 3), (p["col"] - 2, p["col"] + 3)))
            assert np.isfinite(v).all() and (v[2] > 20).all()    # a 5 x 5 window of data around the probe
            if p["area"] != "tile" and region in ("spain", "denmark"):   # two patches kilometres apart
                assert ds.width * ds.height > 50 * 64 * 64     # the network's bounding box ...
                assert path.stat().st_size < ds.width * ds.height  # ... stored sparsely
