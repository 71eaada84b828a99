"""The ingest stage: raw layout -> daily.parquet / probes.parquet / ingest_report.json (the data contract)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soilmoisture.errors import DataError
from soilmoisture.schema import DAILY_COLUMNS, OPTIONAL_DAILY_COLUMNS, PROBE_COLUMNS
from test_sources_layout import write_tiny_raw

RANGE = {"data.start": "2017-01-01", "data.end": "2017-02-20"}


@pytest.fixture(scope="module")
def tiny_raw_dir(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("harmonise_raw") / "raw"
    write_tiny_raw(raw)
    return raw


@pytest.fixture(scope="module")
def ingested(tiny_raw_dir, tmp_path_factory):
    """One ingest of the tiny raw layout for the whole module."""
    from conftest import write_params
    from soilmoisture import config
    from soilmoisture.harmonise import run

    params = config.load(write_params(tmp_path_factory.mktemp("ingested"),
                                      {**RANGE, "paths.raw": str(tiny_raw_dir)}))
    run(params)
    out = params.path(params.paths.interim)
    daily = pd.read_parquet(out / "daily.parquet")
    probes = pd.read_parquet(out / "probes.parquet")
    report = json.loads((out / "ingest_report.json").read_text())
    return params, daily.set_index(["probe_id", "date"], drop=False), probes.set_index("probe_id", drop=False), report


def test_tables_follow_the_contract_one_row_per_probe_and_day(ingested):
    _, daily, probes, report = ingested
    assert list(daily.columns[: len(DAILY_COLUMNS)]) == list(DAILY_COLUMNS)
    assert set(daily.columns[len(DAILY_COLUMNS):]) <= set(OPTIONAL_DAILY_COLUMNS)
    for col, (dtype, _, _) in DAILY_COLUMNS.items():
        assert str(daily[col].dtype) == dtype, col
    assert list(probes.columns) == list(PROBE_COLUMNS)
    for col, (dtype, _, _) in PROBE_COLUMNS.items():
        assert str(probes[col].dtype) == dtype, col
    days = pd.date_range("2017-01-01", "2017-02-20")
    assert set(probes["probe_id"]) == {"Canizal", "Carretoro", "SE-Nor"}
    assert len(daily) == 3 * len(days) and not daily.index.duplicated().any()
    for pid in probes["probe_id"]:
        assert (daily.loc[pid, "date"].to_numpy() == days.to_numpy()).all()
    assert (daily["date"] == daily["date"].dt.normalize()).all()
    assert report["probes"] == 3 and report["days"] == len(days) and report["rows"] == len(daily)


def test_frozen_days_have_no_ssm(ingested):
    _, daily, _, report = ingested
    can = daily.loc["Canizal"]
    assert can["frozen"].iloc[:3].all() and not can["frozen"].iloc[3:].any()
    assert can["ssm"].iloc[:3].isna().all()
    assert can["ssm"].iloc[3] == pytest.approx(0.23)
    assert report["frozen_days_removed"] == 3


def test_ssm_above_threshold_is_flagged_and_kept(ingested):
    _, daily, _, report = ingested
    car = daily.loc["Carretoro"]
    assert car.loc["2017-01-11", "ssm"] == pytest.approx(0.55)
    assert car.loc["2017-01-11", "ssm_flag_gt50"] and not car.loc["2017-01-10", "ssm_flag_gt50"]
    assert report["ssm_flagged_days"] == 10
    assert not daily["ssm_flag_gt50"][daily["ssm"].isna()].any()


def test_probe_with_no_valid_day_is_reported_and_excluded(ingested):
    _, daily, probes, report = ingested
    assert "Empty" not in probes.index and "Empty" not in daily.index.get_level_values(0)
    (ex,) = report["probes_excluded"]
    assert ex["probe_id"] == "Empty" and "carries a kept quality flag" in ex["reason"]


def test_sigma0_equals_the_raster_value_at_the_probe_pixel(ingested):
    _, daily, _, report = ingested
    assert daily.loc[("Canizal", pd.Timestamp("2017-01-03")), "sigma0_vv"] == pytest.approx(0.12)  # ASC+DSC mean
    assert daily.loc[("Carretoro", pd.Timestamp("2017-01-09")), "sigma0_vv"] == pytest.approx(0.30)
    assert daily.loc["Canizal", "sigma0_vv"].notna().sum() == 2  # overpass days only
    assert daily.loc["SE-Nor", "sigma0_vv"].isna().all()           # no Swedish scenes in this layout
    assert report["sigma0_outliers_removed"] == 0


def test_vegetation_indices_interpolated_within_the_gap(ingested):
    _, daily, _, _ = ingested
    ndvi = daily.loc["Canizal", "ndvi"]
    assert ndvi["2017-01-02"] == pytest.approx(0.5) and ndvi["2017-01-12"] == pytest.approx(0.75)
    assert ndvi["2017-01-07"] == pytest.approx(0.625)
    assert ndvi["2017-02-11"] == pytest.approx(0.75)    # 30 days after the last observation
    assert np.isnan(ndvi["2017-02-12"])                 # 31 days: beyond ingest.vi_max_gap_days
    car = daily.loc["Carretoro", "ndwi"]                # cloudy on 01-12: only the 01-02 observation
    assert car["2017-01-20"] == pytest.approx(0.2) and np.isnan(car["2017-02-02"])


def test_weather_from_nearest_station_with_dry_days(ingested):
    _, daily, _, _ = ingested
    can = daily.loc["Canizal"]
    assert can.loc["2017-01-01", "precip_mm"] == pytest.approx(12.0)
    assert can.loc["2017-01-03", "dry_days"] == 2 and can.loc["2017-01-06", "dry_days"] == 0
    assert (can.loc["2017-01-03", ["ta_min", "ta_mean", "ta_max"]].to_numpy(float) == [0, 11.5, 23]).all()
    assert np.isnan(can.loc["2017-02-01", "precip_mm"])   # after the station's record
    nor = daily.loc["SE-Nor"]                              # Swedish probe: the Swedish station
    assert nor.loc["2017-01-05", "ta_mean"] == -2.0 and nor.loc["2017-01-05", "dry_days"] == 0


def test_static_layers_and_products_reach_the_tables(ingested):
    _, daily, probes, _ = ingested
    assert probes.loc["Canizal", "landcover_code"] == 212
    assert probes.loc["Canizal", "landcover_name"] == "Permanently irrigated land"
    assert probes.loc["Canizal", "slope_pct"] == pytest.approx(10.0)
    assert probes.loc["Canizal", "clay_pct"] == 20.0       # soil raster overrides the ISMN static value
    assert probes.loc["SE-Nor", "landcover_code"] == 312   # from the ICOS site table
    assert probes.loc["Canizal", "region"] == "spain" and probes.loc["SE-Nor", "region"] == "sweden"
    assert daily.loc[("Canizal", pd.Timestamp("2017-01-05")), "ecv_sm"] == pytest.approx(0.21, rel=1e-6)
    assert daily.loc[("Canizal", pd.Timestamp("2017-01-05")), "csm"] == pytest.approx(0.27, rel=1e-6)
    assert daily.loc["Canizal", "ecv_sm"].notna().sum() == 1
    assert daily.loc["SE-Nor", "ecv_sm"].isna().all()       # fill value in the product


def test_bad_raster_fails_and_leaves_previous_outputs_untouched(make_params, tiny_raw_dir, tmp_path):
    import shutil

    from soilmoisture.harmonise import run

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw)
    params = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "proj")
    run(params)
    out = params.path(params.paths.interim)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    victim = sorted((raw / "sentinel1" / "spain").glob("*.tif"))[1]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{victim.name}.*truncated"):
        run(params)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file, nothing replaced


def test_sigma0_outliers_removed_by_zscore_then_ceiling():
    from soilmoisture.harmonise import remove_sigma0_outliers

    s = pd.Series([0.10, 0.11, 0.09, 0.10, 0.12, 0.10, 0.11, 0.09, 0.10, 5.0,      # corner reflector
                   0.30, 0.31, 0.29, 0.30, 0.30, 0.31, 0.29, 0.40, 0.40, np.nan])  # 0.40 > 0.35 ceiling
    pid = pd.Series(["a"] * 10 + ["b"] * 10)
    out = remove_sigma0_outliers(s, pid, 2.0, 0.35)
    assert out.tolist() == [False] * 9 + [True] + [False] * 7 + [True, True, False]


def test_a_probe_frozen_on_every_observed_day_is_excluded_with_its_reason():
    from soilmoisture.harmonise import harmonise_frames

    probes = pd.DataFrame({"probe_id": ["a", "b"], "network": "X", "region": "spain", "lat": 41.3, "lon": -5.4})
    rows = pd.DataFrame({"probe_id": ["a", "a", "b"], "date": pd.to_datetime(["2017-01-02", "2017-01-03", "2017-01-02"]),
                         "ssm": [0.2, 0.3, 0.25], "ts_max": [-1.0, 0.0, 4.0]})
    report: dict = {}
    daily, out = harmonise_frames(probes, pd.date_range("2017-01-01", "2017-01-05"), rows, report=report)
    assert out["probe_id"].tolist() == ["b"] and set(daily["probe_id"]) == {"b"}
    assert report["probes_excluded"] == [{"probe_id": "a", "reason": "no valid SSM day: every observed day is "
                                                                      "frozen (ts_max <= 0 degC)"}]
    assert report["frozen_days_removed"] == 2


def test_prediction_inputs_without_ssm_keep_their_probes():
    from soilmoisture.harmonise import harmonise_frames

    probes = pd.DataFrame({"probe_id": ["px"], "network": "MAP", "region": "spain", "lat": 41.3, "lon": -5.4})
    s1 = pd.DataFrame({"probe_id": ["px"], "date": pd.to_datetime(["2017-01-03"]), "sigma0_vv": [0.1]})
    daily, out = harmonise_frames(probes, pd.date_range("2017-01-01", "2017-01-05"),
                                  pd.DataFrame(columns=["probe_id", "date", "ssm", "ts_max"]), sigma0=s1,
                                  require_ssm=False)
    assert out["probe_id"].tolist() == ["px"] and len(daily) == 5
    assert daily["sigma0_vv"].notna().sum() == 1 and daily["ssm"].isna().all()


def test_duplicate_rows_in_a_source_are_refused():
    from soilmoisture.harmonise import harmonise_frames

    probes = pd.DataFrame({"probe_id": ["a"], "network": ["X"], "region": ["spain"], "lat": [41.3], "lon": [-5.4]})
    rows = pd.DataFrame({"probe_id": ["a", "a"], "date": pd.to_datetime(["2017-01-02", "2017-01-02"]),
                         "ssm": [0.2, 0.3], "ts_max": [5.0, 5.0]})
    with pytest.raises(DataError, match=r"duplicate timestamps in in-situ data: probe a on 2017-01-02"):
        harmonise_frames(probes, pd.date_range("2017-01-01", "2017-01-05"), rows)


def test_remedhus_export_is_harmonised_without_soil_temperature(make_params, shared_data):
    from soilmoisture.harmonise import run

    csv = shared_data / "remedhus" / "SM_Data_REMEDHUS.csv"
    params = make_params({"data.source": "remedhus", "data.remedhus_csv": str(csv),
                          "data.start": "2017-03-01", "data.end": "2017-06-30"})
    run(params)
    out = params.path(params.paths.interim)
    daily = pd.read_parquet(out / "daily.parquet")
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["probes"] == 5 and len(daily) == 5 * 122
    assert daily["ts_max"].isna().all() and not daily["frozen"].any()   # no soil temperature in the export
    assert daily["ecv_sm"].isna().all() and daily["csm"].isna().all()
    assert {"sigma0_vh", "incidence_angle_deg", "lst_day_c"} <= set(daily.columns)
    assert daily.loc[daily["date"] < "2017-03-28", "ssm"].isna().all()  # padded before the export starts
    kept = daily["sigma0_vv"].dropna()
    assert kept.max() <= 0.35 and report["sigma0_outliers_removed"] == daily["sigma0_outlier"].sum()


def test_ismn_source_reads_an_archive(make_params, shared_data):
    from soilmoisture.harmonise import build

    params = make_params({"data.source": "ismn",
                          "data.ismn_archive": str(shared_data / "ismn" / "Data_seperate_files_header_20170810_20180809.zip"),
                          "ingest.ssm_max_depth_m": 0.25, "data.start": "2017-08-01", "data.end": "2017-09-30",
                          "paths.raw": "no_raw_here"})
    daily, probes, report = build(params)
    assert set(probes["probe_id"]) == {"ARM-1", "Barrow-ARM"} and len(daily) == 2 * 61
    assert daily.loc[daily["date"] < "2017-08-10", "ssm"].isna().all()
    assert (probes["region"] == "cosmos").all()


# --- the simulated study area (the simulator's tiny area, session fixture) -------------------------
@pytest.fixture(scope="module")
def simulated(tiny_area, tmp_path_factory):
    """Ingest of the tiny simulated area, once for this module (outputs in a private folder)."""
    from conftest import write_params
    from soilmoisture import config
    from soilmoisture.harmonise import run

    root = tmp_path_factory.mktemp("sim_ingest")
    params = config.load(write_params(root, {"paths.raw": str(tiny_area / "data" / "raw"),
                                             "paths.truth": str(tiny_area / "data" / "truth")}))
    run(params)
    out = params.path(params.paths.interim)
    return (params, pd.read_parquet(out / "daily.parquet"), pd.read_parquet(out / "probes.parquet"),
            json.loads((out / "ingest_report.json").read_text()))


def _pixel_value(path: Path, lat: float, lon: float, band: int) -> float:
    """Independent check: the raster value of the pixel containing (lat, lon)."""
    import rasterio
    from rasterio.warp import transform

    with rasterio.open(path) as src:
        (x,), (y,) = transform("EPSG:4326", src.crs, [lon], [lat])
        r, c = src.index(x, y)
        return float(src.read(band)[r, c])


def test_simulated_area_matches_what_the_simulator_wrote(simulated, tiny_area):
    params, daily, probes, report = simulated
    raw = tiny_area / "data" / "raw"
    truth = pd.read_parquet(tiny_area / "data" / "truth" / "probes_truth.parquet")
    truth["date"] = truth["date"].astype("datetime64[ns]")
    assert report["probes"] + len(report["probes_excluded"]) == len(truth["probe_id"].unique())
    assert len(daily) == report["probes"] * len(params.data.dates)
    d = daily.set_index(["probe_id", "date"])
    # SSM: the probe reads the truth through its installation/calibration (gain, bias) with sensor noise
    m = daily.merge(truth, on=["probe_id", "date"]).dropna(subset=["ssm"])
    assert (m["ssm"] - m["ssm_true"]).abs().median() < 0.1
    assert m.groupby("probe_id").apply(lambda g: g["ssm"].corr(g["ssm_true"])).median() > 0.85
    assert not m["frozen_x"].any() or m.loc[m["frozen_x"], "ssm"].isna().all()
    for region in ("spain", "denmark"):
        p = probes[probes["region"] == region].iloc[0]
        # sigma0: the raster value at the probe pixel on a day with a single scene and no outlier
        scenes = sorted((raw / "sentinel1" / region).glob("S1*.tif"))
        by_day: dict[str, list[Path]] = {}
        for s in scenes:
            by_day.setdefault(s.name.split("_")[4][:8], []).append(s)
        checked = 0
        for day, files in by_day.items():
            row = d.loc[(p["probe_id"], pd.Timestamp(day))]
            if row["sigma0_outlier"]:
                continue
            expected = np.mean([_pixel_value(f, p["lat"], p["lon"], 1) for f in files])
            assert row["sigma0_vv"] == pytest.approx(expected, rel=1e-6)
            checked += 1
            if checked == 5:
                break
        assert checked == 5
        # NDVI on an observation day: (B8A - B04) / (B8A + B04) at the probe pixel, unmasked
        for s in sorted((raw / "sentinel2" / region).glob("S2*.tif")):
            cld, snw = (_pixel_value(s, p["lat"], p["lon"], b) for b in (4, 5))
            if max(cld, snw) >= params.ingest.s2_mask_probability:
                continue
            b4, b8a = (_pixel_value(s, p["lat"], p["lon"], b) for b in (1, 2))
            day = pd.Timestamp(s.name.split("_")[2][:8])
            assert d.loc[(p["probe_id"], day), "ndvi"] == pytest.approx((b8a - b4) / (b8a + b4), rel=1e-6)
            break
    # sigma0 follows the simulator's noise-free truth (speckle only): close on average
    s = daily.merge(truth, on=["probe_id", "date"]).dropna(subset=["sigma0_vv", "sigma0_vv_true"])
    assert 0.8 < (s["sigma0_vv"] / s["sigma0_vv_true"]).median() < 1.2
    assert daily["sigma0_vv"].max() <= params.ingest.sigma0_max
    assert report["sigma0_outliers_removed"] > 0 and report["frozen_days_removed"] > 0


def test_simulated_products_weather_and_static_match_the_simulator(simulated, tiny_area):
    _, daily, probes, _ = simulated
    raw = tiny_area / "data" / "raw"
    truth = pd.read_parquet(tiny_area / "data" / "truth" / "probes_truth.parquet")
    truth["date"] = truth["date"].astype("datetime64[ns]")
    m = daily.merge(truth, on=["probe_id", "date"], suffixes=("", "_truth"))
    for col in ("ecv_sm", "csm"):  # the simulator records the product value at each probe
        both = m[col].notna() & m[f"{col}_truth"].notna()
        assert both.sum() > 100, col
        np.testing.assert_allclose(m.loc[both, col], m.loc[both, f"{col}_truth"], rtol=1e-5, atol=1e-6)
    manifest = json.loads((raw / "manifest.json").read_text())
    lc = {p["probe_id"]: p["landcover_code"] for p in manifest["probes"]}
    assert all(probes.set_index("probe_id")["landcover_code"][pid] == code for pid, code in lc.items()
               if pid in set(probes["probe_id"]))
    assert probes[["elevation_m", "slope_pct", "clay_pct", "base_saturation_pct"]].notna().all().all()
    # every probe has its region's weather on every day of the simulated range
    assert daily[["precip_mm", "ta_mean", "dry_days"]].notna().all().all()


def test_docs_data_md_carries_the_schema_tables():
    from soilmoisture.harmonise import contract_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert contract_markdown() in docs, "regenerate with: python -m soilmoisture.harmonise --contract"


def test_a_scene_covering_part_of_the_probes_is_ingested_and_counted_in_the_report(make_params, tiny_raw_dir,
                                                                                  tmp_path):
    """Issue 24 item 8: such a scene no longer stops ingest; its missing probe-days are counted per probe."""
    import shutil

    import rasterio
    from rasterio.windows import Window

    from soilmoisture.harmonise import run

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw)
    src = sorted((raw / "sentinel1" / "spain").glob("S1*.tif"))[0]
    clip = raw / "sentinel1" / "spain" / "east" / "S1A_IW_GRDH_1SDV_20170115T062000_DSC.tif"
    clip.parent.mkdir()
    with rasterio.open(src) as ds:                 # the tile's right half only: Carretoro (col 12), not Canizal (col 4)
        w = Window(8, 0, 8, 16)
        profile = {**ds.profile, "width": 8, "height": 16, "transform": ds.window_transform(w)}
        data = ds.read(window=w)
        tags = {**ds.tags(), "ACQUISITION_TIME": "2017-01-15T06:20:00"}
    with rasterio.open(clip, "w", **profile) as out:
        out.write(data)
        out.update_tags(**tags)
    params = make_params({**RANGE, "paths.raw": str(raw)}, root=tmp_path / "proj")
    run(params)
    out = params.path(params.paths.interim)
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["scenes_not_covering_probes"]["sentinel1"]["by_probe"] == {"Canizal": 1, "Empty": 1}
    daily = pd.read_parquet(out / "daily.parquet").set_index(["probe_id", "date"])
    assert daily.loc[("Carretoro", pd.Timestamp("2017-01-15")), "sigma0_vv"] == pytest.approx(0.20)
    assert np.isnan(daily.loc[("Canizal", pd.Timestamp("2017-01-15")), "sigma0_vv"])


def test_simulated_soil_texture_comes_through_the_soilgrids_reader(simulated, tiny_area):
    """The simulator's SoilGrids-like files are in the real SoilGrids layout and reach the probe table through
    the same reader a real SoilGrids clip goes through."""
    import rasterio

    from soilmoisture.sources.soilgrids import read_soilgrids

    _, _, probes, _ = simulated
    raw = tiny_area / "data" / "raw"
    for region, grp in probes.groupby("region"):
        files = sorted((raw / "soilgrids" / region).glob("*/sand_0-5cm_mean.tif"))
        assert files, region
        with rasterio.open(files[0]) as ds:
            assert "igh" in ds.crs.to_proj4() and ds.res == (250.0, 250.0)
            assert ds.dtypes[0] == "int16" and ds.nodata == -32768
        sg = read_soilgrids(raw / "soilgrids" / region, grp[["probe_id", "lat", "lon"]]).set_index("probe_id")
        table = grp.set_index("probe_id")
        for col in ("sand_pct", "clay_pct", "silt_pct", "organic_carbon_pct"):
            np.testing.assert_allclose(table[col], sg.loc[table.index, col], err_msg=f"{region} {col}")
