"""Maps: feature cubes built like the probe series, windowed prediction, COG output, validation vs truth.

One tiny mappable model is trained once (keras engine, 1 epoch, one LOO fold + the final model) on a copy of
the tiny simulated area and registered in MLflow; the map stage then runs for real through the CLI.
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
    man = json.loads((params.path(params.paths.raw) / "manifest.json").read_text())
    return [p for p in man["probes"] if p["region"] == region]


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
    days = [f"{d:%Y-%m-%d}" for d in res.dates]
    for d in gone:
        assert np.isnan(data[days.index(d)]).all()
    assert np.isnan(data[:, 0, 0]).all() and np.isnan(data[:, 5, 7]).all()
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
    (run,) = client.search_runs([exp])
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
