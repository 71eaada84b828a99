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
        with rasterio.open(raw / "static" / f"{region}_soil.tif") as s, \
                rasterio.open(raw / "static" / f"{region}_clc.tif") as c:
            clay, _silt, sand, oc, _bs = s.read().astype(np.float64)
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
    import rasterio

    raw = tiny_area / "data" / "raw"
    with rasterio.open(raw / "static" / "denmark_clc.tif") as c:
        clc = c.read(1).ravel()
    with rasterio.open(tiny_area / "data" / "truth" / "denmark_ssm.tif") as t:
        ssm = t.read().reshape(365, -1)
    frozen = _truth(tiny_area).query("region == 'denmark'").groupby("date")["frozen"].any().to_numpy()
    xs, ys = {"open": [], "forest": []}, {"open": [], "forest": []}
    for path in _s1_files(tiny_area, "denmark"):
        day = (pd.Timestamp(path.name.split("_")[4][:8]) - pd.Timestamp("2017-01-01")).days
        if frozen[day]:
            continue
        with rasterio.open(path) as s:
            vv = s.read(1).ravel()
        for group, mask in (("open", np.isin(clc, [211, 212, 242, 243, 321, 322, 331])), ("forest", clc == 312)):
            keep = mask & (vv < 1.0)                 # leave out corner-reflector outliers
            xs[group].append(ssm[day][keep])
            ys[group].append(10 * np.log10(vv[keep]))
    slope = {g: np.polyfit(np.concatenate(xs[g]), np.concatenate(ys[g]), 1)[0] for g in xs}
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
    for name, count in (("dtm", 1), ("clc", 1), ("soil", 5)):
        with rasterio.open(raw / "static" / f"{region}_{name}.tif") as ds:
            assert ds.count == count
    csm = sorted((raw / "products" / "csm" / region).glob("CSM_SSM1km_*.tif"))
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
    for p in man["probes"]:
        with rasterio.open(tiny_area / "data" / "raw" / "static" / f"{p['region']}_clc.tif") as ds:
            code = int(ds.read(1)[p["row"], p["col"]])
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


def test_more_probes_than_the_tile_holds_fails_before_any_work(make_params, tmp_path: Path) -> None:
    params = make_params({"simulate.probes_per_region": {"denmark": 40, "finland": 1, "spain": 1, "sweden": 1},
                          "simulate.tile_px": {"default": 12, "bench": 500}})
    with pytest.raises(ConfigError, match=r"simulate\.probes_per_region\.denmark"):
        from soilmoisture.simulate import run

        run(params)
    assert not (tmp_path / "data").exists()
