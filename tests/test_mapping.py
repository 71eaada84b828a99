"""Maps: feature cubes built like the probe series, windowed prediction, products in every format (COG stack,
daily COGs, CF NetCDF, Zarr) with interval, nodata reasons, provenance and STAC, validation vs truth.

One tiny mappable model is trained once (keras engine, 1 epoch, one LOO fold + the final model) on a copy of
the tiny simulated area and registered in MLflow; the map stage then runs for real through the CLI, once per
format. Products are read back with the libraries their users have (rasterio/GDAL, xarray, rio-cogeo, pystac).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_params

START, END = "2017-06-01", "2017-06-08"
REGION = "spain"


@pytest.fixture(scope="module")
def mapped(tiny_area: Path, tmp_path_factory) -> dict:
    """Tiny area -> harmonised tables -> registered mappable model -> `soilmoisture map` (whole tile)."""
    from soilmoisture import config, harmonise
    from soilmoisture.cli import main
    from soilmoisture.protocol.run import run as train

    root = tmp_path_factory.mktemp("maps")
    shutil.copytree(tiny_area / "data", root / "data")
    params = config.load(write_params(root, {
        "variant.name": "mappable", "protocol.engine": "keras", "model.epochs": 1, "protocol.max_probes": 1,
        "map.region": REGION, "map.start": START, "map.end": END, "map.window_px": 8}))
    daily, probes, _ = harmonise.build(params)
    processed = params.path(params.paths.processed)
    processed.mkdir(parents=True)
    daily.to_parquet(processed / "daily.parquet", index=False)   # the quality gate is another stage's test
    probes.to_parquet(processed / "probes.parquet", index=False)
    train(params)
    assert main(["map", "--params", str(root / "params.yaml")]) == 0
    from soilmoisture import mapping

    return {"params": params, "daily": daily, "probes": probes, "cog": mapping.output_path(params), "root": root}


@pytest.fixture(scope="module")
def map_model(mapped):
    from soilmoisture import mapping, tracking

    tracking.configure(mapped["params"])
    return mapping.load_map_model(mapping.model_uri(mapped["params"]))


def _manifest_probes(params, region: str) -> list[dict]:
    """The region's probes inside its mapping tile (the others sit in patches clipped to the network)."""
    man = json.loads((params.path(params.paths.raw) / "manifest.json").read_text())
    return [p for p in man["probes"] if p["region"] == region and p["area"] == "tile"]


def test_feature_cube_at_a_probe_pixel_equals_the_harmonised_probe_series(mapped):
    from rasterio.windows import Window

    from soilmoisture import mapping

    params = mapped["params"]
    feats = params.variants["mappable"].features
    src = mapping.open_sources(params.path(params.paths.raw), REGION)
    try:
        tile = src.grid.width
        cube = mapping.build_cube(src, Window(0, 0, tile, tile), params.data.dates, feats,
                                  stat_range=(params.data.start, params.data.end))
    finally:
        src.close()
    dense = cube.dense(feats)
    daily, probes = mapped["daily"], mapped["probes"].set_index("probe_id")
    for pr in _manifest_probes(params, REGION):
        series = daily[daily["probe_id"] == pr["probe_id"]].sort_values("date")
        for j, f in enumerate(feats):
            ref = series[f].to_numpy(float) if f in series else np.full(len(series), float(probes.loc[pr["probe_id"], f]))
            got = dense[pr["row"] * tile + pr["col"], :, j]
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=f"{pr['probe_id']} {f}")


def test_map_is_a_cog_on_the_region_grid_with_one_band_per_day(mapped):
    import rasterio

    params = mapped["params"]
    with rasterio.open(params.path(params.paths.raw) / "static" / f"{REGION}_clc.tif") as ref, \
            rasterio.open(mapped["cog"]) as ds:
        assert ds.crs == ref.crs and ds.transform == ref.transform and ds.shape == ref.shape
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert list(ds.descriptions) == [f"{d:%Y-%m-%d}" for d in pd.date_range(START, END)]
        assert np.isnan(ds.nodata) and ds.dtypes[0] == "float32"
        data = ds.read()
    assert np.isfinite(data).mean() > 0.9 and np.nanmax(np.abs(data)) < 2.0   # 1 epoch: not yet skilful
    looks = sorted((mapped["cog"].parent / "quicklooks").glob("*.png"))
    assert looks and all(p.stat().st_size > 5000 for p in looks)


def test_pixel_at_a_probe_coordinate_holds_the_model_prediction_of_that_probe_series(mapped):
    """Georeferencing end to end: the COG pixel containing a probe's lon/lat equals `predict` of its daily series."""
    import rasterio
    from rasterio.warp import transform

    from soilmoisture import tracking
    from soilmoisture.mapping import model_uri
    from soilmoisture.model.predictor import load_predictor, predict_table

    params = mapped["params"]
    tracking.configure(params)
    pred = load_predictor(model_uri(params))
    pr = _manifest_probes(params, REGION)[0]
    table = predict_table(pred, mapped["daily"][mapped["daily"]["probe_id"] == pr["probe_id"]], mapped["probes"])
    expected = table.set_index("date")["ssm_pred"].loc[START:END].to_numpy()
    with rasterio.open(mapped["cog"]) as ds:
        xs, ys = transform("EPSG:4326", ds.crs, [pr["lon"]], [pr["lat"]])
        row, col = ds.index(xs[0], ys[0])
        assert (row, col) == (pr["row"], pr["col"])
        got = ds.read()[:, row, col]
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_windowed_and_whole_array_maps_are_identical(mapped, map_model, tmp_path):
    import rasterio

    from soilmoisture import mapping

    params = mapped["params"]
    src = mapping.open_sources(params.path(params.paths.raw), REGION)
    try:
        arrays = []
        for w in (8, 5000):   # 8 px: four windows with seams through the tile; 5000: one window
            out = mapping.make_map(map_model, src, tmp_path / f"w{w}.tif", start=START, end=END,
                                   warmup_start=params.data.start, stat_range=(params.data.start, params.data.end),
                                   window_px=w)
            with rasterio.open(out.path) as ds:
                arrays.append(ds.read())
    finally:
        src.close()
    assert np.array_equal(arrays[0], arrays[1], equal_nan=True)


def test_water_built_up_and_missing_weather_days_are_nodata_never_zero(mapped, map_model, tmp_path):
    import rasterio

    from soilmoisture import mapping

    params = mapped["params"]
    raw = tmp_path / "raw"
    shutil.copytree(params.path(params.paths.raw), raw)
    clc = raw / "static" / f"{REGION}_clc.tif"
    with rasterio.open(clc, "r+") as ds:
        lc = ds.read(1)
        lc[0, 0], lc[5, 7] = 512, 112
        ds.write(lc, 1)
    station = pd.read_csv(raw / "weather" / "stations.csv").query("region == @REGION")["station"].iloc[0]
    wf = raw / "weather" / f"{REGION}_{station}.csv"
    w = pd.read_csv(wf)
    gone = ("2017-06-03", "2017-06-04")
    w[~w["time"].astype(str).str[:10].isin(gone)].to_csv(wf, index=False)
    src = mapping.open_sources(raw, REGION)
    try:
        res = mapping.make_map(map_model, src, tmp_path / "m.tif", start=START, end=END,
                               warmup_start=params.data.start, stat_range=(params.data.start, params.data.end),
                               window_px=8)
    finally:
        src.close()
    with rasterio.open(res.path) as ds:
        data = ds.read()
    with rasterio.open(tmp_path / "m_nodata_reason.tif") as ds:       # the layer saying why (formats.REASONS)
        reason = ds.read()
    days = [f"{d:%Y-%m-%d}" for d in res.dates]
    for d in gone:
        assert np.isnan(data[days.index(d)]).all()
    assert np.isnan(data[:, 0, 0]).all() and np.isnan(data[:, 5, 7]).all()
    assert (reason[:, 0, 0] == 1).all() and (reason[:, 5, 7] == 2).all()            # water, built-up
    no_weather = reason[days.index(gone[0])]
    assert (np.delete(no_weather.ravel(), [0, 5 * no_weather.shape[1] + 7]) == 4).all()   # missing input (weather)
    assert np.array_equal(reason == 0, np.isfinite(data))
    kept = [i for i, d in enumerate(days) if d not in gone]
    assert np.isfinite(data[kept][:, 1:, 1:]).mean() > 0.9
    assert not (data == 0).any()


def test_a_raster_on_another_grid_is_refused_naming_the_file(mapped, map_model, tmp_path):
    import rasterio
    from affine import Affine

    from soilmoisture import mapping
    from soilmoisture.errors import DataError

    params = mapped["params"]
    raw = tmp_path / "raw"
    shutil.copytree(params.path(params.paths.raw), raw)
    scene = sorted((raw / "sentinel1" / REGION).glob("S1*.tif"))[3]
    with rasterio.open(scene, "r+") as ds:
        t = ds.transform
        ds.transform = Affine(20.0, 0, t.c, 0, -20.0, t.f)   # 20 m pixels: another grid
    src = mapping.open_sources(raw, REGION)
    try:
        with pytest.raises(DataError, match=rf"{scene.name}.*differs from the region grid.*resample"):
            mapping.make_map(map_model, src, tmp_path / "m.tif", start=START, end=END,
                             warmup_start=params.data.start, stat_range=(params.data.start, params.data.end),
                             window_px=8)
    finally:
        src.close()
    assert not (tmp_path / "m.tif").exists()


def test_a_model_with_an_unmappable_input_is_refused_naming_it(map_model):
    from soilmoisture import mapping
    from soilmoisture.errors import DataError

    feats = ["ts_max"] + map_model.features[1:]
    with pytest.raises(DataError, match="ts_max.*do not exist at every pixel"):
        mapping.MapModel(map_model.weights, feats, map_model.mean, map_model.std, name="soilmoisture-minimum")


def test_map_validation_against_the_truth_is_logged_to_mlflow(mapped):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    params = mapped["params"]
    exp = tracking.ensure_experiment(params, "maps")
    client = MlflowClient(tracking.tracking_uri(params))
    (run,) = client.search_runs([exp], filter_string="params.format = 'cog-stack'")
    m = run.data.metrics
    assert run.data.tags[tracking.TAG_KIND] == "map"
    for k in ("mae", "ubrmse_temporal_mean", "spatial_r_mean", "lc211_mae"):
        assert k in m
    assert 0 < m["mae"] < 1.0
    assert len(client.get_metric_history(run.info.run_id, "day_mae")) == len(pd.date_range(START, END))
    by_lc = pd.read_csv(mapped["cog"].parent / "validation_by_landcover.csv")
    assert {"landcover_code", "mae", "ubrmse_temporal", "spatial_r"} <= set(by_lc.columns)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert "validation/validation_by_day.csv" in arts


def test_validation_metrics_recover_a_known_bias_and_correlation():
    from soilmoisture.mapping import Validation

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 0.4, (5, 400))
    pred = truth + 0.05                       # pure bias: MAE 0.05, ubRMSE 0, spatial r 1
    v = Validation(pd.date_range("2017-01-01", periods=5))
    v.add(pred[:, :200], truth[:, :200], np.full(200, 211))
    v.add(pred[:, 200:], truth[:, 200:], np.full(200, 312))
    s = v.summary()
    assert s["mae"] == pytest.approx(0.05) and s["bias"] == pytest.approx(0.05)
    assert s["ubrmse_temporal_mean"] == pytest.approx(0.0, abs=1e-9)
    assert s["spatial_r_mean"] == pytest.approx(1.0)
    assert set(v.by_landcover()["landcover_code"]) == {211, 312}


def test_interpolation_and_outlier_rules_match_the_probe_readers():
    from soilmoisture import harmonise
    from soilmoisture.mapping import inputs
    from soilmoisture.mapping.inputs import interpolate_limited_grid
    from soilmoisture.quality import rules
    from soilmoisture.sources.sentinel2 import interpolate_limited

    rng = np.random.default_rng(1)
    obs_days = np.sort(rng.choice(np.arange(0, 300), 40, replace=False))
    obs = rng.normal(0.5, 0.2, (40, 6))
    obs[rng.random(obs.shape) < 0.4] = np.nan
    days = np.arange(20, 260)
    grid = interpolate_limited_grid(obs_days, obs, days, 30)
    dates = pd.to_datetime(days, unit="D")
    for n in range(6):
        ref = interpolate_limited(pd.DatetimeIndex(dates), pd.Series(pd.to_datetime(obs_days, unit="D")),
                                  pd.Series(obs[:, n]), 30)
        np.testing.assert_allclose(grid[:, n], ref, rtol=1e-6, equal_nan=True)   # float32 cube
    # One sigma0 rule for probes and pixels: the same function, not a copy.
    assert inputs.sigma0_outliers is rules.sigma0_outliers is harmonise.sigma0_outliers
    s = rng.uniform(0.02, 0.2, (80, 5))
    s[rng.random(s.shape) < 0.3] = np.nan
    s[3, 1], s[10, 2] = 40.0, 0.5
    mask = rules.sigma0_outliers(s, 2.0, 0.35)
    # Against the rule written out with pandas per column (thesis 3.2.2: |z| > 2 with ddof=1, then > 0.35).
    df = pd.DataFrame(s)
    z = (df - df.mean()) / df.std().where(df.std() > 0)
    want = (z.abs() > 2.0).fillna(False)
    want |= (df.where(~want) > 0.35).fillna(False)
    np.testing.assert_array_equal(mask, want.to_numpy())
    # Harmonise's per-probe form on a long table, probes interleaved, gives the same mask.
    order = rng.permutation(s.size)
    long = pd.DataFrame({"s": s.T.ravel(), "pid": np.repeat([f"p{i}" for i in range(5)], 80)}).iloc[order]
    ref = harmonise.remove_sigma0_outliers(long["s"], long["pid"], 2.0, 0.35)
    np.testing.assert_array_equal(ref.sort_index().to_numpy(), mask.T.ravel())
    assert mask[3, 1] and mask[10, 2]


# ----------------------------------------------------------------------------------------------
# products: formats, interval, nodata reasons, provenance, STAC (docs/maps.md "Formats")
# ----------------------------------------------------------------------------------------------
FORMATS = ("cog-stack", "cog-daily", "netcdf", "zarr")


@pytest.fixture(scope="module")
def products(mapped) -> dict:
    """`soilmoisture map --format F` for the other formats (the stack was written by `mapped`)."""
    from soilmoisture import config, mapping
    from soilmoisture.cli import main

    out = {"cog-stack": mapped["cog"]}
    for fmt in FORMATS[1:]:
        assert main(["map", "--params", str(mapped["root"] / "params.yaml"), "--format", fmt]) == 0
        out[fmt] = mapping.output_path(config.load(mapped["root"] / "params.yaml", {"map.format": fmt}))
        assert out[fmt].exists()
    return out


def _stack(path, layer: str = "ssm") -> np.ndarray:
    import rasterio

    from soilmoisture.mapping.formats import layer_file

    with rasterio.open(layer_file(path, layer)) as ds:
        return ds.read()


def _layers(products) -> list[str]:
    import xarray as xr

    with xr.open_dataset(products["netcdf"]) as ds:
        return [v for v in ("ssm", "ssm_p05", "ssm_p95", "nodata_reason") if v in ds.data_vars]


def test_every_format_holds_the_same_numbers_as_the_stack(products):
    import rasterio
    import xarray as xr

    from soilmoisture.mapping.formats import daily_file

    layers = _layers(products)
    assert layers == ["ssm", "ssm_p05", "ssm_p95", "nodata_reason"]
    days = pd.date_range(START, END)
    nc = xr.open_dataset(products["netcdf"], decode_coords="all")
    zr = xr.open_zarr(products["zarr"], decode_coords="all")
    try:
        for layer in layers:
            ref = _stack(products["cog-stack"], layer)
            daily = []
            for d in days:
                with rasterio.open(daily_file(products["cog-daily"], layer, d)) as ds:
                    daily.append(ds.read(1))
            assert np.array_equal(np.stack(daily), ref, equal_nan=True), layer
            for ds in (nc, zr):
                got = ds[layer].to_numpy()
                assert got.dtype == ref.dtype and np.array_equal(got, ref, equal_nan=True), layer
        assert list(pd.DatetimeIndex(nc["time"].to_numpy())) == list(days)
    finally:
        nc.close()
        zr.close()


def test_netcdf_follows_cf_and_opens_with_its_crs_in_xarray_and_gdal(products):
    import cf_xarray  # noqa: F401  (registers .cf)
    import rasterio
    import xarray as xr
    from rasterio.warp import transform

    from soilmoisture.mapping.formats import FILL_VALUE, SSM_STANDARD_NAME

    with rasterio.open(products["cog-stack"]) as ref:
        crs, tr, shape, ref_ssm = ref.crs, ref.transform, ref.shape, ref.read()
    with xr.open_dataset(products["netcdf"], decode_coords="all") as ds:
        assert ds.attrs["Conventions"] == "CF-1.8"
        ssm = ds["ssm"]
        assert ssm.attrs["standard_name"] == SSM_STANDARD_NAME and ssm.attrs["units"] == "m3 m-3"
        assert ssm.attrs["long_name"] and ssm.encoding["_FillValue"] == FILL_VALUE
        assert ssm.encoding["chunksizes"] == (1, *shape) and ssm.encoding["zlib"]
        assert ds.rio.crs == crs and ssm.rio.crs == crs          # grid_mapping variable decoded to the CRS
        assert "crs" in ds.coords and ds["crs"].attrs["grid_mapping_name"] == "transverse_mercator"
        # cf_xarray finds the CF roles from the attributes alone
        assert ds.cf.grid_mapping_names == {"transverse_mercator": ["crs"]}
        assert SSM_STANDARD_NAME in ds.cf.standard_names
        assert ds.cf["latitude"].dims == ("y", "x") and ds.cf["longitude"].dims == ("y", "x")
        assert ds.cf["T"].name == "time" and ds.cf["X"].name == "x" and ds.cf["Y"].name == "y"
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
        flags = ds["nodata_reason"]
        assert flags.attrs["flag_meanings"].split() == ["valid", "water", "built_up", "unknown_land_cover",
                                                          "missing_input"]
        assert list(flags.attrs["flag_values"]) == [0, 1, 2, 3, 4]
        assert float(ds["depth"]) == 0.025 and list(ds["depth_bnds"].to_numpy()) == [0.0, 0.05]
        # lat/lon of a pixel centre = that centre transformed to WGS84
        r, c = 5, 9
        xs, ys = tr * (c + 0.5, r + 0.5)
        lon, lat = transform(crs, "EPSG:4326", [xs], [ys])
        assert abs(float(ds["lon"][r, c]) - lon[0]) < 1e-9 and abs(float(ds["lat"][r, c]) - lat[0]) < 1e-9
        assert float(ds["x"][c]) == pytest.approx(xs) and float(ds["y"][r]) == pytest.approx(ys)
    with rasterio.open(f"netcdf:{products['netcdf']}:ssm") as g:      # GDAL's NetCDF driver (QGIS reads it so)
        assert g.crs == crs and g.transform.almost_equals(tr) and g.count == len(pd.date_range(START, END))
        assert np.array_equal(g.read(), ref_ssm, equal_nan=True)


def test_daily_cogs_validate_and_carry_nodata_units_and_provenance(products, mapped):
    import rasterio
    from mlflow.tracking import MlflowClient
    from rio_cogeo.cogeo import cog_validate

    from soilmoisture import tracking

    params = mapped["params"]
    files = sorted(products["cog-daily"].glob("*.tif"))
    assert len(files) == 4 * len(pd.date_range(START, END))
    assert (products["cog-daily"] / "ssm_20170601.tif").is_file()
    tracking.configure(params)
    mv = MlflowClient().get_model_version_by_alias("soilmoisture-mappable", "champion")
    for f in files[:: max(1, len(files) // 6)]:
        ok, errors, _ = cog_validate(str(f), quiet=True)
        assert ok, (f, errors)
    for p in (products["cog-daily"] / "ssm_20170603.tif", products["cog-stack"]):
        with rasterio.open(p) as ds:
            tags = ds.tags()
            assert np.isnan(ds.nodata) and ds.dtypes[0] == "float32" and ds.is_tiled
            assert tags["UNITS"] == "m3/m3" and tags["LAYER"] == "ssm"
            assert tags["MODEL_NAME"] == "soilmoisture-mappable" and tags["MODEL_ALIAS"] == "champion"
            assert tags["MODEL_VERSION"] == str(mv.version) and tags["MODEL_RUN_ID"] == mv.run_id
            assert tags["CODE_VERSION"] == tracking.git_commit(params.root)
            assert (tags["INPUT_START"], tags["INPUT_END"]) == (params.data.start, END)
            assert "split-conformal" in tags["INTERVAL_METHOD"]
    with rasterio.open(products["cog-daily"] / "ssm_20170603.tif") as ds:
        assert ds.tags()["DATE"] == "2017-06-03" and ds.descriptions == ("ssm",)
    with rasterio.open(products["cog-daily"] / "nodata_reason_20170603.tif") as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata is None and "1=water" in ds.tags()["CODES"]


def test_a_large_daily_cog_is_tiled_with_overviews(tmp_path):
    """The writer on a 600 x 600 px staged map (the tiny area is one tile): internal tiles and overviews."""
    import rasterio
    from affine import Affine
    from rio_cogeo.cogeo import cog_validate

    from soilmoisture.mapping.formats import Provenance, Staged, write_product

    days = pd.date_range("2018-01-01", periods=2)
    rng = np.random.default_rng(0)
    layers = {}
    for name, dtype in (("ssm", "float32"), ("nodata_reason", "uint8")):
        p = tmp_path / f"{name}.tif"
        arr = rng.uniform(0, 0.5, (2, 600, 600)).astype(dtype) if dtype == "float32" else np.zeros((2, 600, 600), dtype)
        with rasterio.open(p, "w", driver="GTiff", width=600, height=600, count=2, dtype=dtype, crs="EPSG:25830",
                           transform=Affine(10, 0, 300000, 0, -10, 4600000), tiled=True) as ds:
            ds.write(arr)
        layers[name] = p
    st = Staged(layers, days, rasterio.crs.CRS.from_epsg(25830), Affine(10, 0, 300000, 0, -10, 4600000), 600, 600)
    prov = Provenance("m", "1", "champion", "r", "models:/m@champion", "abc", "2017-01-01", "2018-01-02", "spain")
    (out,) = write_product(st, "cog-daily", tmp_path / "ssm_daily", prov)
    with rasterio.open(out / "ssm_20180102.tif") as ds:
        assert ds.overviews(1) == [2, 4] and ds.block_shapes[0] == (256, 256)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert cog_validate(str(out / "ssm_20180102.tif"), quiet=True)[0]
    assert cog_validate(str(out / "nodata_reason_20180101.tif"), quiet=True)[0]


def test_interval_layers_are_the_conformal_bounds_of_the_protocol_runs_held_out_residuals(products, mapped):
    import mlflow
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking
    from soilmoisture.protocol.ensemble import residual_bounds

    params = mapped["params"]
    tracking.configure(params)
    ssm, lo, hi = (_stack(products["cog-stack"], k).astype(np.float64) for k in ("ssm", "ssm_p05", "ssm_p95"))
    ok = np.isfinite(ssm)
    assert ok.any() and np.array_equal(ok, np.isfinite(lo)) and np.array_equal(ok, np.isfinite(hi))
    # (a 1-epoch model may predict below 0; the lower bound never is)
    assert (lo[ok] <= np.maximum(ssm[ok], 0)).all() and (ssm[ok] <= hi[ok]).all() and (lo[ok] >= 0).all()
    # expected offsets from the protocol run that trained the model, computed here from its artifact
    mv = MlflowClient().get_model_version_by_alias("soilmoisture-mappable", "champion")
    rid = mlflow.models.get_model_info(f"models:/soilmoisture-mappable/{mv.version}").metadata["protocol_run_id"]
    pr = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=tracking.ART_PREDICTIONS))
    q_lo, q_hi = residual_bounds((pr["ssm"] - pr["ssm_pred"]).to_numpy(), 0.9)
    assert q_lo < 0 < q_hi
    np.testing.assert_allclose(hi[ok] - ssm[ok], q_hi, atol=1e-6)
    np.testing.assert_allclose(lo[ok], np.maximum(ssm[ok] + q_lo, 0), atol=1e-6)
    # and the map run reports the interval's coverage of the truth (simulated area)
    exp = tracking.ensure_experiment(params, "maps")
    (run,) = MlflowClient(tracking.tracking_uri(params)).search_runs([exp], filter_string="params.format = 'cog-stack'")
    assert 0.0 < run.data.metrics["interval_coverage"] <= 1.0
    assert run.data.metrics["interval_q_hi"] == pytest.approx(q_hi)


def test_nodata_reason_is_set_exactly_where_there_is_no_value(products, mapped):
    """(water and built-up codes: test_water_built_up_and_missing_weather_days_are_nodata_never_zero)"""
    ssm, reason = _stack(products["cog-stack"]), _stack(products["cog-stack"], "nodata_reason")
    assert np.array_equal(reason == 0, np.isfinite(ssm))
    assert set(np.unique(reason)) <= {0, 4}          # the tiny tile is all land: missing input only


def test_provenance_is_in_netcdf_zarr_and_stac(products, mapped):
    import xarray as xr

    params = mapped["params"]
    with rasterio_tags(products["cog-stack"]) as tags:
        want = {k.lower(): v for k, v in tags.items() if k in ("MODEL_NAME", "MODEL_VERSION", "MODEL_ALIAS",
                                                            "MODEL_RUN_ID", "CODE_VERSION", "INPUT_START", "INPUT_END")}
    assert len(want) == 7 and all(want.values())
    for ds in (xr.open_dataset(products["netcdf"]), xr.open_zarr(products["zarr"])):
        with ds:
            assert {k: ds.attrs[k] for k in want} == want
            assert ds.attrs["time_coverage_start"] == START and ds.attrs["time_coverage_end"] == END
    import pystac

    coll = pystac.Collection.from_file(str(params.path(params.paths.maps) / REGION / "collection.json"))
    for item in coll.get_items():
        assert {k: item.properties[f"soilmoisture:{k}"] for k in want} == want


def rasterio_tags(path):
    import contextlib

    import rasterio

    @contextlib.contextmanager
    def cm():
        with rasterio.open(path) as ds:
            yield ds.tags()
    return cm()


def test_stac_items_round_trip_with_projection_fields_and_a_collection(products, mapped):
    import json

    import pystac
    import rasterio
    from rasterio.warp import transform_bounds

    from soilmoisture.mapping.stac import validate_offline

    params = mapped["params"]
    folder = params.path(params.paths.maps) / REGION
    coll_path = folder / "collection.json"
    validate_offline(json.loads(coll_path.read_text()))       # core schemas shipped with pystac, offline
    coll = pystac.Collection.from_file(str(coll_path))
    items = {it.id: it for it in coll.get_items()}
    days = pd.date_range(START, END)
    s, e = START.replace("-", ""), END.replace("-", "")
    assert {f"ssm-{REGION}-{s}-{e}-{f}" for f in ("cog-stack", "netcdf", "zarr")} <= set(items)
    assert sum(i.endswith("-cog-daily") for i in items) == len(days)
    with rasterio.open(products["cog-stack"]) as ds:
        bbox = list(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21))
        epsg, shape, tr = ds.crs.to_epsg(), list(ds.shape), list(ds.transform)[:6]
    for it in items.values():
        d = json.loads(Path(it.get_self_href()).read_text())
        validate_offline(d)
        assert pystac.Item.from_dict(d).to_dict(include_self_link=False) == d     # round trip
        assert any("projection" in x for x in d["stac_extensions"])
        p = d["properties"]
        assert p["proj:code"] == f"EPSG:{epsg}" and p["proj:shape"] == shape and p["proj:transform"] == tr
        np.testing.assert_allclose(d["bbox"], bbox)
        for a in it.assets.values():
            assert Path(a.get_absolute_href()).exists() and not a.href.startswith("/")
    stack = items[f"ssm-{REGION}-{s}-{e}-cog-stack"]
    assert stack.common_metadata.start_datetime.strftime("%Y-%m-%d") == START
    assert stack.common_metadata.end_datetime.strftime("%Y-%m-%d") == END
    assert {"ssm", "ssm_p05", "ssm_p95", "nodata_reason"} <= set(stack.assets)
    assert stack.assets["ssm"].media_type == pystac.MediaType.COG
    assert items[f"ssm-{REGION}-{s}-{e}-zarr"].assets["data"].media_type == "application/vnd+zarr"
    day = items[f"ssm-{REGION}-20170602-cog-daily"]
    assert Path(day.assets["ssm"].get_absolute_href()).name == "ssm_20170602.tif"
    t0, t1 = coll.extent.temporal.intervals[0]
    assert (f"{t0:%Y-%m-%d}", f"{t1:%Y-%m-%d}") == (START, END)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_write_leaves_the_previous_product_and_no_partial_output(fmt, mapped, map_model, tmp_path,
                                                                          monkeypatch):
    import dask.array as da

    from soilmoisture import mapping
    from soilmoisture.mapping import formats

    params = mapped["params"]
    kw = dict(start=START, end=END, warmup_start=params.data.start, stat_range=(params.data.start, params.data.end),
              window_px=32, fmt=fmt)
    out = formats.product_path(tmp_path, START, END, fmt)
    src = mapping.open_sources(params.path(params.paths.raw), REGION)
    try:
        mapping.make_map(map_model, src, out, **kw)
        before = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())

        class Boom(RuntimeError):
            pass

        # Fail half way through the real writer (after some output exists on disk).
        if fmt == "cog-daily":
            real, calls = formats._cog_from_array, []

            def failing(*a, **k):
                calls.append(1)
                if len(calls) == 5:
                    raise Boom("disk full")
                return real(*a, **k)
            monkeypatch.setattr(formats, "_cog_from_array", failing)
        elif fmt == "cog-stack":
            real_copy, calls = formats.write_cog_stack, []
            import rasterio.shutil as rsh

            real = rsh.copy

            def failing(*a, **k):
                calls.append(1)
                if len(calls) == 2:
                    raise Boom("disk full")
                return real(*a, **k)
            monkeypatch.setattr(rsh, "copy", failing)
        else:
            real = formats.dataset

            def failing(st, prov):
                ds = real(st, prov)
                arr = ds["ssm"].data

                def last_fails(block, block_info=None):
                    if block_info[0]["chunk-location"][0] == arr.numblocks[0] - 1:
                        raise Boom("disk full")
                    return block
                ds["ssm"] = ds["ssm"].copy(data=da.map_blocks(last_fails, arr, dtype=arr.dtype))
                return ds
            monkeypatch.setattr(formats, "dataset", failing)
        with pytest.raises(Boom):
            mapping.make_map(map_model, src, out, **kw)
    finally:
        src.close()
    after = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before                                   # old product intact, nothing temporary left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_map_of_a_user_bbox_as_netcdf_from_the_command_line(mapped, tmp_path):
    import xarray as xr

    from soilmoisture import config, mapping
    from soilmoisture.cli import main

    params = mapped["params"]
    pr = _manifest_probes(params, REGION)[0]
    bbox = [pr["lon"] - 0.0003, pr["lat"] - 0.0002, pr["lon"] + 0.0003, pr["lat"] + 0.0002]
    args = ["map", "--params", str(mapped["root"] / "params.yaml"), "--format", "netcdf",
            "--bbox", *map(str, bbox), "--set", f"paths.maps={tmp_path}", "--set", "map.end=2017-06-03"]
    assert main(args) == 0
    out = mapping.output_path(config.load(mapped["root"] / "params.yaml", {"paths.maps": str(tmp_path),
                                                                          "map.end": "2017-06-03",
                                                                          "map.format": "netcdf"}))
    with xr.open_dataset(out, decode_coords="all") as ds:
        assert ds.sizes["time"] == 3 and 2 <= ds.sizes["x"] <= 8 and 2 <= ds.sizes["y"] <= 8
        px = 1e-4   # ~ one 10 m pixel in degrees: the bbox is rounded outwards to whole pixels
        assert ds["lon"].min() >= bbox[0] - px and ds["lon"].max() <= bbox[2] + px
        assert ds["lat"].min() >= bbox[1] - px and ds["lat"].max() <= bbox[3] + px
        # one day at one point, as docs/maps.md shows it
        v = ds["ssm"].sel(time="2017-06-02").sel(x=ds["x"][1], y=ds["y"][1])
        assert np.isfinite(float(v))
    assert (tmp_path / REGION / "collection.json").is_file()


def test_the_documented_snippet_reads_one_day_at_one_point_from_every_format(products, mapped, capsys):
    """docs/maps.md "Opening the maps", run as written (paths, day and point moved to this test's map)."""
    import re

    import rasterio

    text = (Path(__file__).resolve().parents[1] / "docs" / "maps.md").read_text()
    code = re.search(r"\*\*Python: one day at one point\*\*.*?```python\n(.*?)```", text, re.S).group(1)
    pr = _manifest_probes(mapped["params"], REGION)[0]
    folder = mapped["cog"].parent
    code = (code.replace("data/maps/spain/", f"{folder}/").replace("20180601_20180630", "20170601_20170608")
            .replace("ssm_20180615", "ssm_20170603").replace('"2018-06-15"', '"2017-06-03"')
            .replace('xr.open_zarr("….zarr")', "xr.open_zarr"))
    code = re.sub(r"lon, lat, day = [-\d.]+, [-\d.]+,", f"lon, lat, day = {pr['lon']}, {pr['lat']},", code)
    code += (f'\nds = xr.open_zarr("{products["zarr"]}", decode_coords="all")\n'
             'v = ds.sel(time=day).sel(x=x, y=y, method="nearest")\n'
             'print(float(v.ssm), float(v.ssm_p05), float(v.ssm_p95), int(v.nodata_reason))\n')
    exec(compile("import rioxarray\n" + code, "docs/maps.md", "exec"), {})
    lines = capsys.readouterr().out.split("\n")
    cog_daily, cog_stack = np.float32(lines[0]), np.float32(lines[1])
    nc, zr = lines[2].split(), lines[3].split()
    want = _stack(products["cog-stack"])[2, pr["row"], pr["col"]]
    assert np.isfinite(want) and cog_daily == cog_stack == np.float32(nc[0]) == np.float32(zr[0]) == want
    assert nc == zr and nc[3] == "0" and float(nc[1]) <= max(float(nc[0]), 0) <= float(nc[2])
    with rasterio.open(f'ZARR:"{products["zarr"]}":/ssm') as g:          # GDAL reads the Zarr store too
        assert g.crs == rasterio.open(products["cog-stack"]).crs and g.count == len(pd.date_range(START, END))
