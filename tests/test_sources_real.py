"""Readers against the real files in ../shared/data (read-only; found through the shared_data fixture)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from soilmoisture.errors import DataError


def test_ismn_header_values_archive_reads_stations_and_metadata(shared_data, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    zip_ = shared_data / "ismn" / "Data_seperate_files_header_20170810_20180809.zip"
    # COSMOS cosmic-ray probes measure 0-0.19/0.21 m: not surface sensors (STACK-NOTES depth ranges).
    daily, probes = read_ismn(zip_, tmp_path / "work", 0.05, ["G"])
    assert daily.empty and probes.empty
    daily, probes = read_ismn(zip_, tmp_path / "work", 0.25, ["G"])
    assert set(probes["probe_id"]) == {"ARM-1", "Barrow-ARM"}
    arm = probes.set_index("probe_id").loc["ARM-1"]
    assert (arm["lat"], arm["lon"], arm["network"]) == (36.6054, -97.4878, "COSMOS")
    assert (arm["clay_pct"], arm["sand_pct"], arm["climate_class"]) == (23.0, 36.0, "Cfa")
    first = daily[(daily["probe_id"] == "ARM-1")].sort_values("date").iloc[0]
    assert first["date"] == pd.Timestamp("2017-08-10")
    assert 0.0 < first["ssm"] < 0.6


def test_ismn_ceop_archive_gives_the_same_daily_values(shared_data, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    a, _ = read_ismn(shared_data / "ismn" / "Data_seperate_files_header_20170810_20180809.zip", tmp_path / "w", 0.25)
    b, _ = read_ismn(shared_data / "ismn" / "Data_seperate_files_20170810_20180809.zip", tmp_path / "w", 0.25)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_ismn_extra_top_folder_keeps_the_real_network_name(shared_data, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    daily, probes = read_ismn(shared_data / "ismn" / "Data_SMOSMANIA.zip", tmp_path / "w", 0.05, ["U"])
    assert probes["network"].tolist() == ["SMOSMANIA"]  # not 'format_header_values'
    assert len(daily) == 31 and daily["ssm"].notna().all()
    # its flags are 'U'/'D05', never 'G': with the default flags no value survives
    daily_g, _ = read_ismn(shared_data / "ismn" / "Data_SMOSMANIA.zip", tmp_path / "w", 0.05, ["G"])
    assert daily_g["ssm"].isna().all()


def test_ismn_reader_never_writes_into_the_input_folder(shared_data, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    src = tmp_path / "in"
    shutil.copy(shared_data / "ismn" / "Data_SMOSMANIA.zip", src.mkdir() or src)
    before = sorted(p.name for p in src.iterdir())
    read_ismn(src / "Data_SMOSMANIA.zip", tmp_path / "work", 0.05)
    assert sorted(p.name for p in src.iterdir()) == before


def test_malformed_ismn_file_is_named_in_the_error(shared_data, tmp_path):
    from soilmoisture.sources.ismn import read_ismn

    bad = shared_data / "ismn" / "mal_formed_file.txt"
    with pytest.raises(DataError, match=r"ismn/mal_formed_file\.txt: is not an ISMN archive") as e:
        read_ismn(bad, tmp_path / "work")
    assert e.value.path == str(bad)


def test_remedhus_export_converts_db_to_linear_and_m_to_mm(shared_data):
    from soilmoisture.sources.remedhus import read_remedhus

    daily, probes = read_remedhus(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv")
    d = daily.set_index(["probe_id", "date"])
    row = d.loc[("Canizal", pd.Timestamp("2017-03-28"))]
    # file: VV -13.72368395 dB, VH -21.38132827 dB, 17.19 degC LST, 0.230875 m3/m3
    assert row["sigma0_vv"] == pytest.approx(10 ** (-1.372368395), rel=1e-12)
    assert row["sigma0_vv"] == pytest.approx(0.042426, rel=1e-4)
    assert row["sigma0_vh"] == pytest.approx(10 ** (-2.138132827), rel=1e-12)
    assert row["lst_day_c"] == 17.19 and row["ssm"] == pytest.approx(0.230875)
    assert row["incidence_angle_deg"] == pytest.approx(41.24496841)
    # file: total_precipitation 0.000517996 m on 30/03/2017
    assert d.loc[("Canizal", pd.Timestamp("2017-03-30")), "precip_mm"] == pytest.approx(0.517996)
    assert np.isnan(d.loc[("Canizal", pd.Timestamp("2017-03-30")), "sigma0_vv"])  # no overpass
    assert daily["date"].dtype == "datetime64[ns]"
    p = probes.set_index("probe_id")
    assert len(p) == 5 and p.loc["Canizal", "landcover_code"] == 212
    assert (p.drop("Canizal")["landcover_code"] == 211).all()
    assert (p["region"] == "spain").all() and (p["network"] == "REMEDHUS").all()


def test_ecv_sm_real_file_check_value(shared_data):
    from soilmoisture.sources.products import read_ecv_sm

    probes = pd.DataFrame({"probe_id": ["cell", "inside_same_cell"], "lat": [41.375, 41.30], "lon": [-5.375, -5.45]})
    ecv = read_ecv_sm(shared_data / "ecv_sm", probes)
    assert (ecv["date"] == pd.Timestamp("2016-06-07")).all()
    np.testing.assert_allclose(ecv["ecv_sm"], 0.15344, rtol=1e-5)


def test_ecv_sm_fill_cells_are_nan(shared_data):
    import xarray as xr

    from soilmoisture.sources.products import read_ecv_file

    f = next((shared_data / "ecv_sm").glob("*.nc"))
    with xr.open_dataset(f, mask_and_scale=False) as ds:
        sm = ds["sm"].isel(time=0)
        fill_iy, fill_ix = [int(i[0]) for i in np.nonzero((sm == -9999).to_numpy())]
        lat, lon = ds["lat"].to_numpy(), ds["lon"].to_numpy()
    probes = pd.DataFrame({"probe_id": ["fill"], "lat": [lat[fill_iy]], "lon": [lon[fill_ix]]})
    assert read_ecv_file(f, probes)["ecv_sm"].isna().all()


def test_remedhus_packing_noise_below_zero_precipitation_reads_as_no_rain(shared_data):
    from soilmoisture.sources.remedhus import read_remedhus

    raw = pd.read_csv(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv")
    assert (raw["total_precipitation"] < 0).any()  # the real export has ERA5 packing noise
    daily, _ = read_remedhus(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv")
    assert (daily["precip_mm"].dropna() >= 0).all()


def test_clearly_negative_precipitation_is_an_error_naming_the_column(shared_data, tmp_path):
    from soilmoisture.errors import DataError
    from soilmoisture.sources.remedhus import read_remedhus

    raw = pd.read_csv(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv", dtype=str)
    raw.loc[3, "total_precipitation"] = "-0.002"
    bad = tmp_path / "SM_Data_REMEDHUS.csv"
    raw.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"total_precipitation.*negative precipitation -0.002 m"):
        read_remedhus(bad)
