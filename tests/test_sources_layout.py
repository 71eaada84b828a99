"""Readers of the raw layout (docs/raw-layout.md) against tiny files in the real formats.

``write_tiny_raw`` below is the script that makes them (kept beside the tests, as torchgeo does):
one 16 x 16 px tile of 10 m in Spain (EPSG:32630) with three ISMN stations, one ICOS site in
Sweden, Sentinel-1/2 scenes, weather, static layers and both products, all with known values.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soilmoisture.errors import DataError

CRS = "EPSG:32630"
PX = 10.0
N = 16
START = pd.Timestamp("2017-01-01")
DAYS = 20
# probe -> (row, col) of its pixel in the tile
PIXELS = {"Canizal": (4, 4), "Carretoro": (10, 12), "Empty": (13, 2)}
S1_VV = {  # file stem date/orbit -> per-probe VV (linear) written at the probe pixels
    ("20170103T062000", "DSC"): {"Canizal": 0.10, "Carretoro": 0.20},
    ("20170103T181500", "ASC"): {"Canizal": 0.14, "Carretoro": 0.24},
    ("20170109T062000", "DSC"): {"Canizal": 0.08, "Carretoro": 0.30},
}


def tile_transform():
    """Affine transform of the tile: centred near 41.3 N, 5.4 W."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform

    (x,), (y,) = transform("EPSG:4326", CRS, [-5.4], [41.3])
    x0, y0 = np.floor(x / PX) * PX - N / 2 * PX, np.floor(y / PX) * PX + N / 2 * PX
    return from_origin(x0, y0, PX, PX)


def pixel_latlon(row: int, col: int) -> tuple[float, float]:
    """WGS84 lat, lon of a pixel centre."""
    from rasterio.warp import transform

    from rasterio.transform import xy

    x, y = xy(tile_transform(), row, col)  # pixel centre
    (lon,), (lat,) = transform(CRS, "EPSG:4326", [x], [y])
    return lat, lon


def write_tif(path: Path, data: np.ndarray, dtype: str, nodata=None, tags: dict | None = None,
              descriptions: list[str] | None = None, transform=None, crs: str = CRS) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=dtype, crs=crs, transform=transform or tile_transform(), nodata=nodata) as dst:
        dst.write(data.astype(dtype))
        if tags:
            dst.update_tags(**tags)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)


def _stm(path: Path, net: str, station: str, lat: float, lon: float, d0: float, d1: float, sensor: str,
         times: pd.DatetimeIndex, values: np.ndarray, flags: list[str]) -> None:
    lines = [f"{net:<11}{net:<16}{station:<18}{lat:9.5f}{lon:12.5f}{750.0:8.2f}{d0:8.2f}{d1:8.2f} {sensor}"]
    lines += [f"{t:%Y/%m/%d %H:%M} {v:8.4f} {f} M" for t, v, f in zip(times, values, flags)]
    path.write_text("\n".join(lines) + "\n")


STATIC_CSV = """quantity_name;unit;depth_from[m];depth_to[m];value;description;quantity_source_name;quantity_source_description;quantity_source_provider;quantity_source_version;quantity_source_resolution;quantity_source_timerange;quantity_source_url;
saturation;m^3*m^-3;0.00;0.30;0.46;;HWSD;HWSD;IIASA;v1.1;30";;;
clay fraction;% weight;0.00;0.30;23.00;;HWSD;HWSD;IIASA;v1.1;30";;;
organic carbon;% weight;0.00;0.30;1.27;;HWSD;HWSD;IIASA;v1.1;30";;;
sand fraction;% weight;0.00;0.30;36.00;;HWSD;HWSD;IIASA;v1.1;30";;;
silt fraction;% weight;0.00;0.30;41.00;;HWSD;HWSD;IIASA;v1.1;30";;;
land cover classification;;;;10;Cropland, rainfed;CCI_landcover_2000;ESA CCI Land Cover;ESA;2000-v1.6.1;300m;1998-2002;;
land cover classification;;;;10;Cropland, rainfed;CCI_landcover_2005;ESA CCI Land Cover;ESA;2005-v1.6.1;300m;2003-2007;;
land cover classification;;;;10;Cropland, rainfed;CCI_landcover_2010;ESA CCI Land Cover;ESA;2010-v1.6.1;300m;2008-2012;;
climate classification;;;;BSk;Arid, steppe, cold;koeppen_geiger_2007;Koeppen-Geiger;;Peel2007;0.1;;;
"""


def hourly_ssm(probe: str) -> tuple[pd.DatetimeIndex, np.ndarray, list[str]]:
    """Hourly SSM of a probe: day d holds 0.20 + 0.01 d (Carretoro: 0.55 from day 10, flagged >0.5);
    hour 12 of every day is a bad 'D02' value 0.99 that must be ignored; 'Empty' has only 'C03' flags."""
    t = pd.date_range(START, periods=DAYS * 24, freq="h")
    day = (t - START).days.to_numpy()
    v = 0.20 + 0.01 * day
    if probe == "Carretoro":
        v = np.where(day >= 10, 0.55, v)
    flags = ["D02" if h == 12 else "G" for h in t.hour]
    v = np.where(t.hour == 12, 0.99, v)
    if probe == "Empty":
        flags = ["C03"] * len(t)
    return t, v, flags


def hourly_ts(probe: str) -> tuple[pd.DatetimeIndex, np.ndarray, list[str]]:
    """Hourly soil temperature: Canizal's first 3 days peak at -1 degC (frozen); otherwise 5..9 degC."""
    t = pd.date_range(START, periods=DAYS * 24, freq="h")
    day = (t - START).days.to_numpy()
    v = 5.0 + 4.0 * np.sin(np.pi * t.hour.to_numpy() / 24)
    if probe == "Canizal":
        v = np.where(day < 3, -5.0 + 4.0 * np.sin(np.pi * t.hour.to_numpy() / 24), v)
    return t, v, ["G"] * len(t)


def write_tiny_raw(raw: Path) -> dict:
    """Write the tiny raw layout under ``raw``; returns the known values used by the tests."""
    raw.mkdir(parents=True, exist_ok=True)
    # --- ISMN header+values folder ---------------------------------------------------------------
    for probe, (r, c) in PIXELS.items():
        lat, lon = pixel_latlon(r, c)
        d = raw / "ismn" / "REMEDHUS" / probe
        d.mkdir(parents=True, exist_ok=True)
        stamp = f"{START:%Y%m%d}_{START + pd.Timedelta(days=DAYS - 1):%Y%m%d}"
        _stm(d / f"REMEDHUS_REMEDHUS_{probe}_sm_0.000000_0.050000_Stevens-Hydra-Probe_{stamp}.stm",
             "REMEDHUS", probe, lat, lon, 0.0, 0.05, "Stevens-Hydra-Probe", *hourly_ssm(probe))
        _stm(d / f"REMEDHUS_REMEDHUS_{probe}_ts_0.050000_0.050000_Stevens-Hydra-Probe_{stamp}.stm",
             "REMEDHUS", probe, lat, lon, 0.05, 0.05, "Stevens-Hydra-Probe", *hourly_ts(probe))
        # a deeper sensor that must be ignored (0.05 m rule)
        _stm(d / f"REMEDHUS_REMEDHUS_{probe}_sm_0.250000_0.250000_Stevens-Hydra-Probe_{stamp}.stm",
             "REMEDHUS", probe, lat, lon, 0.25, 0.25, "Stevens-Hydra-Probe",
             pd.date_range(START, periods=24, freq="h"), np.full(24, 0.40), ["G"] * 24)
        (d / f"REMEDHUS_REMEDHUS_{probe}_static_variables.csv").write_text(STATIC_CSV)
    # --- ICOS (Sweden) ---------------------------------------------------------------------------
    icos = raw / "icos"
    icos.mkdir(parents=True, exist_ok=True)
    (icos / "sites.csv").write_text("site,lat,lon,landcover_code,clay_pct,silt_pct,sand_pct,organic_carbon_pct,"
                                    "base_saturation_pct,climate_class\nSE-Nor,60.086,17.479,312,10,30,60,2.0,40,Dfb\n")
    t = pd.date_range(START, periods=DAYS * 48, freq="30min")
    swc1 = np.full(len(t), 30.0)
    swc2 = np.full(len(t), 20.0)
    swc2[:48] = -9999.0  # day 1: only sub-probe 1 -> 0.30
    pd.DataFrame({"TIMESTAMP_START": t.strftime("%Y%m%d%H%M"),
                  "TIMESTAMP_END": (t + pd.Timedelta("30min")).strftime("%Y%m%d%H%M"),
                  "SWC_1": swc1, "SWC_2": swc2, "TS_1": 3.0 + t.hour.to_numpy() / 10, "TS_2": 3.0}).to_csv(
        icos / "SE-Nor.csv", index=False)
    # --- Sentinel-1 ------------------------------------------------------------------------------
    for (stamp, orbit), vv in S1_VV.items():
        data = np.full((3, N, N), 0.05, dtype="float32")
        data[1] = 0.01
        data[2] = 38.0
        for probe, v in vv.items():
            r, c = PIXELS[probe]
            data[0, r, c] = v
        sat = "S1A" if orbit == "DSC" else "S1B"
        write_tif(raw / "sentinel1" / "spain" / f"{sat}_IW_GRDH_1SDV_{stamp}_{orbit}.tif", data, "float32",
                  nodata=float("nan"), tags={"ACQUISITION_TIME": dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S").isoformat(),
                                             "ORBIT_DIRECTION": orbit, "UNITS": "linear"},
                  descriptions=["sigma0_vv", "sigma0_vh", "incidence_angle_deg"])
    # --- Sentinel-2: B04, B8A, B12, CLD, SNW ------------------------------------------------------
    for stamp, cloud_at in (("20170102T110000", None), ("20170112T110000", "Carretoro")):
        data = np.zeros((5, N, N), dtype="uint16")
        data[0], data[1], data[2] = 1000, 3000, 2000       # NDVI 0.5, NDWI 0.2
        if stamp.startswith("20170112"):
            data[0], data[1], data[2] = 500, 3500, 1500    # NDVI 0.75, NDWI 0.4
        if cloud_at:
            r, c = PIXELS[cloud_at]
            data[3, r, c] = 95
        write_tif(raw / "sentinel2" / "spain" / f"S2A_MSIL2A_{stamp}_T30TUL.tif", data, "uint16", nodata=0,
                  tags={"ACQUISITION_TIME": dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S").isoformat()},
                  descriptions=["B04", "B8A", "B12", "CLD", "SNW"])
    # --- weather -----------------------------------------------------------------------------------
    w = raw / "weather"
    w.mkdir(parents=True, exist_ok=True)
    (w / "stations.csv").write_text("station,region,lat,lon,resolution\nVA01,spain,41.35,-5.40,hourly\n"
                                    "FAR,spain,43.0,-3.0,daily\nUPP,sweden,59.9,17.6,daily\n")
    th = pd.date_range(START, periods=DAYS * 24, freq="h")
    precip = np.where((th - START).days.to_numpy() % 5 == 0, 0.5, 0.0)  # 12 mm every 5th day
    pd.DataFrame({"time": th.strftime("%Y-%m-%dT%H:%M:%SZ"), "precip_mm": precip,
                  "ta_c": th.hour.to_numpy().astype(float)}).to_csv(w / "spain_VA01.csv", index=False)
    td = pd.date_range(START, periods=DAYS, freq="D")
    for st in ("spain_FAR", "sweden_UPP"):
        pd.DataFrame({"time": td.strftime("%Y-%m-%d"), "precip_mm": 1.0, "ta_c": -2.0}).to_csv(w / f"{st}.csv", index=False)
    # --- static: DTM plane falling to the west 0.1 m/m, CLC 211 (Canizal 212), soil -------------------
    cols = np.arange(N)[None, :].repeat(N, 0)
    write_tif(raw / "static" / "spain_dtm.tif", (700.0 + 0.1 * PX * cols).astype("float32"), "float32")
    clc = np.full((N, N), 211, dtype="uint16")
    clc[PIXELS["Canizal"]] = 212
    write_tif(raw / "static" / "spain_clc.tif", clc, "uint16")
    soil = np.stack([np.full((N, N), v, dtype="float32") for v in (20, 30, 50, 1.5, 60)])
    write_tif(raw / "static" / "spain_soil.tif", soil, "float32",
              descriptions=["clay_pct", "silt_pct", "sand_pct", "organic_carbon_pct", "base_saturation_pct"])
    # --- products ---------------------------------------------------------------------------------
    from rasterio.transform import from_origin

    t0 = tile_transform()
    write_tif(raw / "products" / "csm" / "spain" / "CSM_SSM1km_20170105.tif", np.full((1, 1), 0.27, "float32"),
              "float32", nodata=float("nan"), transform=from_origin(t0.c - 400, t0.f + 400, 1000, 1000))
    write_ecv(raw / "products" / "ecv_sm", "20170105", sm=0.21)
    return {"vv": S1_VV}


def write_ecv(folder: Path, day: str, sm: float, flag_value: int = 0) -> Path:
    """A cropped ESA CCI SM v05.2-style daily file (lat descending, 0.25 deg centres) over Spain and Sweden."""
    import xarray as xr

    folder.mkdir(parents=True, exist_ok=True)
    lat = np.arange(61.875, 40.0, -0.25)
    lon = np.arange(-6.875, 18.0, 0.25)
    smv = np.full((1, lat.size, lon.size), sm, dtype="float32")
    flag = np.full((1, lat.size, lon.size), flag_value, dtype="int8")
    smv[0, lat > 50] = -9999.0  # Sweden: fill
    ds = xr.Dataset({"sm": (("time", "lat", "lon"), smv), "flag": (("time", "lat", "lon"), flag)},
                    coords={"time": [pd.Timestamp(day)], "lat": lat, "lon": lon})
    ds["sm"].attrs["_FillValue"] = np.float32(-9999.0)
    path = folder / f"ESACCI-SOILMOISTURE-L3S-SSMV-COMBINED-{day}000000-fv05.2.nc"
    ds.to_netcdf(path)
    return path


def probe_frame() -> pd.DataFrame:
    rows = []
    for probe, (r, c) in PIXELS.items():
        lat, lon = pixel_latlon(r, c)
        rows.append({"probe_id": probe, "lat": lat, "lon": lon, "region": "spain"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("tiny_raw") / "raw"
    write_tiny_raw(raw)
    return raw


# ------------------------------------------------------------------------------------------------
def test_ismn_folder_gives_daily_mean_of_good_flags_at_top_depth(tiny_raw, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    daily, probes = read_ismn(tiny_raw / "ismn", tmp_path / "work", 0.05, ["G"])
    assert set(probes["probe_id"]) == {"Canizal", "Carretoro", "Empty"}
    assert daily.loc[daily["probe_id"] == "Empty", "ssm"].isna().all()  # only 'C03' flags: no good value
    can = daily[daily["probe_id"] == "Canizal"].set_index("date")
    # day d: 0.20 + 0.01 d; the 'D02' hour (0.99) and the 0.25 m sensor (0.40) are ignored
    np.testing.assert_allclose(can["ssm"].to_numpy(), 0.20 + 0.01 * np.arange(DAYS), atol=1e-9)
    assert can.loc["2017-01-01", "ts_max"] == pytest.approx(-1.0, abs=0.02)
    assert can.loc["2017-01-05", "ts_max"] == pytest.approx(9.0, abs=0.02)
    row = probes.set_index("probe_id").loc["Canizal"]
    assert row["network"] == "REMEDHUS"
    assert row["clay_pct"] == 23.0 and row["climate_class"] == "BSk"
    assert row["landcover_code"] == 211  # ESA CCI 10 (rainfed cropland) -> CORINE 211
    assert not any((tiny_raw / "ismn").rglob("python_metadata")), "must never write into the input"


def test_malformed_file_inside_an_ismn_folder_is_named(tiny_raw, tmp_path):
    import shutil

    from soilmoisture.sources.ismn import read_ismn

    folder = tmp_path / "ismn"
    shutil.copytree(tiny_raw / "ismn", folder)
    bad = folder / "REMEDHUS" / "Canizal" / "REMEDHUS_REMEDHUS_Canizal_sm_0.100000_0.100000_X_20170101_20170120.stm"
    bad.write_text("no good data here")
    with pytest.raises(DataError, match=rf"{bad.name}: malformed ISMN data file"):
        read_ismn(folder, tmp_path / "work")


def test_folder_without_ismn_files_is_refused(tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no ISMN data file \(\*\.stm\)"):
        read_ismn(tmp_path / "empty", tmp_path / "work")


def test_icos_averages_sub_probes_and_converts_percent(tiny_raw):
    from soilmoisture.sources.icos import read_icos

    daily, probes = read_icos(tiny_raw / "icos")
    d = daily.set_index("date")
    assert d.loc["2017-01-01", "ssm"] == pytest.approx(0.30)   # only SWC_1 valid that day
    assert d.loc["2017-01-02", "ssm"] == pytest.approx(0.25)   # mean of 30 % and 20 %
    assert d.loc["2017-01-02", "ts_max"] == pytest.approx((3.0 + 2.3 + 3.0) / 2)  # hour 23: TS_1 5.3
    assert probes.iloc[0]["probe_id"] == "SE-Nor" and probes.iloc[0]["network"] == "ICOS"


def test_icos_duplicate_timestamps_name_the_file(tiny_raw, tmp_path):
    from soilmoisture.sources.icos import read_icos_site

    df = pd.read_csv(tiny_raw / "icos" / "SE-Nor.csv", dtype=str)
    bad = tmp_path / "SE-Nor.csv"
    pd.concat([df, df.iloc[[5]]]).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"SE-Nor\.csv.*duplicate timestamps"):
        read_icos_site(bad)


def test_sentinel1_samples_probe_pixel_and_averages_both_orbits(tiny_raw):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    s1 = read_sentinel1(tiny_raw / "sentinel1" / "spain", probe_frame(), "linear").set_index(["probe_id", "date"])
    assert s1.loc[("Canizal", pd.Timestamp("2017-01-03")), "sigma0_vv"] == pytest.approx(0.12)  # (0.10+0.14)/2
    assert s1.loc[("Carretoro", pd.Timestamp("2017-01-09")), "sigma0_vv"] == pytest.approx(0.30)
    assert s1.loc[("Empty", pd.Timestamp("2017-01-09")), "sigma0_vv"] == pytest.approx(0.05)
    assert s1["incidence_angle_deg"].eq(38.0).all()


def test_sentinel1_in_db_where_linear_is_declared_is_refused(tmp_path):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    data = np.full((3, N, N), -12.0, dtype="float32")  # dB values, no UNITS tag
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", data, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00"})
    with pytest.raises(DataError, match=r"S1A_IW_GRDH_1SDV_20170103T062000_DSC\.tif \[sigma0_vv\].*look like dB"):
        read_sentinel1(tmp_path, probe_frame(), "linear")


def test_sentinel1_linear_where_db_is_declared_is_refused(tiny_raw):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    with pytest.raises(DataError, match=r"S1.*\.tif \[sigma0_vv\]: tag UNITS=linear but ingest.sigma0_units is 'db'"):
        read_sentinel1(tiny_raw / "sentinel1" / "spain", probe_frame(), "db")


def test_sentinel1_untagged_linear_values_where_db_is_declared_are_refused(tmp_path):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    data = np.full((3, N, N), 0.08, dtype="float32")
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", data, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00"})
    with pytest.raises(DataError, match=r"\[sigma0_vv\]: values look linear"):
        read_sentinel1(tmp_path, probe_frame(), "db")


def test_sentinel1_declared_db_is_converted(tmp_path):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    data = np.full((3, N, N), -10.0, dtype="float32")
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", data, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00", "UNITS": "dB"})
    s1 = read_sentinel1(tmp_path, probe_frame(), "db")
    np.testing.assert_allclose(s1["sigma0_vv"], 0.1)


def test_truncated_geotiff_is_named(tiny_raw, tmp_path):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    src = next((tiny_raw / "sentinel1" / "spain").glob("*.tif"))
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[:300])
    with pytest.raises(DataError, match=rf"{bad.name}.*truncated"):
        read_sentinel1(tmp_path, probe_frame(), "linear")


def test_raster_not_containing_a_probe_is_named(tiny_raw):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    far = pd.DataFrame({"probe_id": ["Faraway"], "lat": [42.5], "lon": [-4.0], "region": ["spain"]})
    with pytest.raises(DataError, match=r"S1.*\.tif.*does not contain probe\(s\) Faraway"):
        read_sentinel1(tiny_raw / "sentinel1" / "spain", far, "linear")


def test_sentinel2_indices_with_cloud_mask(tiny_raw):
    from soilmoisture.sources.sentinel2 import read_sentinel2

    s2 = read_sentinel2(tiny_raw / "sentinel2" / "spain", probe_frame(), 90).set_index(["probe_id", "date"])
    assert s2.loc[("Canizal", pd.Timestamp("2017-01-02")), "ndvi"] == pytest.approx(0.5)
    assert s2.loc[("Canizal", pd.Timestamp("2017-01-02")), "ndwi"] == pytest.approx(0.2)
    assert s2.loc[("Canizal", pd.Timestamp("2017-01-12")), "ndvi"] == pytest.approx(0.75)
    assert ("Carretoro", pd.Timestamp("2017-01-12")) not in s2.index  # cloud 95 % >= 90 %
    # at a looser threshold the cloudy pixel is kept
    s2b = read_sentinel2(tiny_raw / "sentinel2" / "spain", probe_frame(), 99).set_index(["probe_id", "date"])
    assert s2b.loc[("Carretoro", pd.Timestamp("2017-01-12")), "ndwi"] == pytest.approx(0.4)


def test_vi_interpolation_stops_beyond_max_gap():
    from soilmoisture.sources.sentinel2 import interpolate_limited

    dates = pd.date_range("2017-01-01", periods=101, freq="D")
    obs = pd.Series(pd.to_datetime(["2017-01-01", "2017-04-11"]))
    v = interpolate_limited(dates, obs, pd.Series([0.0, 1.0]), 30)
    assert v[0] == 0.0 and v[100] == 1.0
    assert v[30] == pytest.approx(0.30) and v[70] == pytest.approx(0.70)
    assert np.isnan(v[31:70]).all()


def test_weather_daily_sums_and_nearest_station(tiny_raw):
    from soilmoisture.sources.weather import dry_days, nearest_station, read_weather

    daily, stations = read_weather(tiny_raw / "weather")
    va = daily[daily["station"] == "VA01"].set_index("date")
    assert va.loc["2017-01-01", "precip_mm"] == pytest.approx(12.0)
    assert va.loc["2017-01-02", "precip_mm"] == 0.0
    assert (va.loc["2017-01-03", ["ta_min", "ta_mean", "ta_max"]].to_numpy() == [0.0, 11.5, 23.0]).all()
    near = nearest_station(probe_frame(), stations)
    assert set(near) == {"VA01"}
    np.testing.assert_array_equal(dry_days(np.array([5.0, 0.0, 0.05, 0.2, 0.0, np.nan, 0.0]), 0.1),
                                  [0, 1, 2, 0, 1, np.nan, 1])


def test_static_terrain_landcover_and_soil(tiny_raw):
    from soilmoisture.sources.static import read_static

    st = read_static(tiny_raw / "static", "spain", probe_frame()).set_index("probe_id")
    assert st.loc["Canizal", "elevation_m"] == pytest.approx(704.0)
    assert st.loc["Canizal", "slope_pct"] == pytest.approx(10.0)
    # the plane rises to the east, so it faces west: aspect 270 deg -> (cos, sin) = (0, -1)
    assert st.loc["Canizal", "aspect_x"] == pytest.approx(0.0, abs=1e-9)
    assert st.loc["Canizal", "aspect_y"] == pytest.approx(-1.0)
    assert st.loc["Canizal", "landcover_code"] == 212 and st.loc["Carretoro", "landcover_code"] == 211
    assert st.loc["Carretoro", "landcover_name"] == "Non-irrigated arable land"
    assert st.loc["Carretoro", "base_saturation_pct"] == 60.0


def test_products_take_the_cell_containing_the_probe(tiny_raw):
    from soilmoisture.sources.products import read_csm, read_ecv_sm

    csm = read_csm(tiny_raw / "products" / "csm" / "spain", probe_frame())
    np.testing.assert_allclose(csm["csm"], 0.27)
    ecv = read_ecv_sm(tiny_raw / "products" / "ecv_sm", probe_frame())
    np.testing.assert_allclose(ecv["ecv_sm"], 0.21, rtol=1e-6)
    assert (ecv["date"] == pd.Timestamp("2017-01-05")).all()


def test_ecv_sm_flagged_cells_are_dropped(tmp_path):
    from soilmoisture.sources.products import read_ecv_sm

    write_ecv(tmp_path, "20170106", sm=0.21, flag_value=1)
    assert read_ecv_sm(tmp_path, probe_frame())["ecv_sm"].isna().all()


def test_large_rasters_are_sampled_per_probe_window(tmp_path):
    """Tiles above 256 x 256 px are read one probe pixel at a time: same values as a full read."""
    from soilmoisture.sources.sentinel1 import read_sentinel1

    rng = np.random.default_rng(1)
    data = rng.uniform(0.01, 0.3, (3, 300, 300)).astype("float32")
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", data, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00", "UNITS": "linear"})
    s1 = read_sentinel1(tmp_path, probe_frame(), "linear").set_index("probe_id")
    for probe, (r, c) in PIXELS.items():
        assert s1.loc[probe, "sigma0_vv"] == pytest.approx(float(data[0, r, c]))
        assert s1.loc[probe, "incidence_angle_deg"] == pytest.approx(float(data[2, r, c]))


def _window_transform(probe: str, half: int = 2):
    """Transform of a (2 half + 1)-px window of the tile grid centred on ``probe``'s pixel."""
    from rasterio.transform import from_origin

    r, c = PIXELS[probe]
    t = tile_transform()
    return from_origin(t.c + (c - half) * PX, t.f - (r - half) * PX, PX, PX)


def test_a_scene_covering_only_some_probes_gives_the_others_nan_counted(tmp_path):
    """Issue 24 item 8: a scene clipped around one probe does not stop ingest; the others get NaN that day."""
    from soilmoisture.sources.sentinel1 import read_sentinel1

    full = np.stack([np.full((N, N), 0.05, "float32"), np.full((N, N), 0.01, "float32"), np.full((N, N), 38.0, "float32")])
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", full, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00", "UNITS": "linear"})
    part = np.stack([np.full((5, 5), 0.12, "float32"), np.full((5, 5), 0.02, "float32"), np.full((5, 5), 36.0, "float32")])
    (tmp_path / "network").mkdir()
    write_tif(tmp_path / "network" / "S1B_IW_GRDH_1SDV_20170109T062000_DSC.tif", part, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-09T06:20:00", "UNITS": "linear"}, transform=_window_transform("Canizal"))
    s1 = read_sentinel1(tmp_path, probe_frame(), "linear")
    v = s1.set_index(["probe_id", "date"])["sigma0_vv"]
    assert v[("Canizal", pd.Timestamp("2017-01-09"))] == pytest.approx(0.12)
    assert np.isnan(v[("Carretoro", pd.Timestamp("2017-01-09"))]) and np.isnan(v[("Empty", pd.Timestamp("2017-01-09"))])
    assert v[("Carretoro", pd.Timestamp("2017-01-03"))] == pytest.approx(0.05)
    assert s1.attrs["not_covered"] == {"Carretoro": 1, "Empty": 1}


def test_a_scene_whose_covered_pixels_are_all_nodata_covers_no_probe_and_is_refused(tmp_path):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    data = np.full((3, N, N), np.nan, dtype="float32")           # a sparse clip without a patch at any probe
    data[:, 0, 0] = 0.1
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", data, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00", "UNITS": "linear"})
    with pytest.raises(DataError, match=r"S1A_IW_GRDH_1SDV_20170103T062000_DSC\.tif.*covers none of the probes"):
        read_sentinel1(tmp_path, probe_frame(), "linear")


def test_one_corner_reflector_in_a_scene_clipped_around_one_probe_is_not_taken_for_db(tmp_path):
    from soilmoisture.sources.sentinel1 import read_sentinel1

    part = np.stack([np.full((7, 7), 0.1, "float32"), np.full((7, 7), 0.02, "float32"), np.full((7, 7), 36.0, "float32")])
    part[0, 3, 3] = 25.0                                          # bright target exactly at the probe pixel
    write_tif(tmp_path / "S1A_IW_GRDH_1SDV_20170103T062000_DSC.tif", part, "float32", nodata=float("nan"),
              tags={"ACQUISITION_TIME": "2017-01-03T06:20:00", "UNITS": "linear"},
              transform=_window_transform("Canizal", 3))
    s1 = read_sentinel1(tmp_path, probe_frame(), "linear").set_index("probe_id")
    assert s1.loc["Canizal", "sigma0_vv"] == pytest.approx(25.0)   # kept for the outlier rule in harmonise


# SoilGrids 2.0 as ISRIC serves it: Interrupted Goode Homolosine, 250 m, int16 mapped units (g/kg, dg/kg).
IGH = "+proj=igh +lat_0=0 +lon_0=0 +datum=WGS84 +units=m +no_defs"


def write_soilgrids_clip(folder: Path, values: dict[str, int], crs: str = IGH) -> None:
    """Files named and encoded like a gdal_translate clip of the SoilGrids WebDAV VRTs around the tiny tile."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform

    (x,), (y,) = transform("EPSG:4326", crs, [-5.4], [41.3])
    res = 250.0 if crs == IGH else 0.002
    t = from_origin(x - 4 * res, y + 4 * res, res, res)
    for prop, v in values.items():
        write_tif(folder / f"{prop}_0-5cm_mean.tif", np.full((8, 8), v, "int16"), "int16", nodata=-32768,
                  transform=t, crs=crs)


def test_soilgrids_rasters_in_mapped_units_give_percent_at_the_probes(tmp_path):
    from soilmoisture.sources.soilgrids import read_soilgrids

    write_soilgrids_clip(tmp_path, {"sand": 652, "silt": 218, "clay": 130, "soc": 95})
    sg = read_soilgrids(tmp_path, probe_frame()).set_index("probe_id")
    assert sg.loc["Canizal", "sand_pct"] == pytest.approx(65.2) and sg.loc["Carretoro", "clay_pct"] == pytest.approx(13.0)
    assert sg.loc["Empty", "silt_pct"] == pytest.approx(21.8)
    assert sg.loc["Canizal", "organic_carbon_pct"] == pytest.approx(0.95)      # 95 dg/kg = 9.5 g/kg = 0.95 %
    # any CRS: the same values clipped in geographic coordinates
    geo = tmp_path / "geo"
    geo.mkdir()
    write_soilgrids_clip(geo, {"sand": 652}, crs="EPSG:4326")
    assert read_soilgrids(geo, probe_frame())["sand_pct"].tolist() == pytest.approx([65.2] * 3)


def test_soilgrids_values_in_percent_instead_of_mapped_units_are_refused(tmp_path):
    from soilmoisture.sources.soilgrids import read_soilgrids

    write_soilgrids_clip(tmp_path, {"sand": 6520})
    with pytest.raises(DataError, match=r"sand_0-5cm_mean\.tif \[sand\]: sand 6520 g/kg is outside 0-100 %"):
        read_soilgrids(tmp_path, probe_frame())
