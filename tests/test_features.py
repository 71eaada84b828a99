"""Derived inputs (src/soilmoisture/features.py): units, references from fit days only, no leakage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from soilmoisture import features as feat
from tests.test_protocol import tiny_tables


def _s1(n: int = 3, t: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """sigma0 (linear) on every 3rd day, two orbits 10 degrees apart, a known slope of -0.2 dB/deg."""
    rng = np.random.default_rng(seed)
    days = np.arange(t)
    angle = np.where(days % 2 == 0, 35.0, 45.0)[None, :].repeat(n, axis=0)
    wet = np.sin(days / 15.0)[None, :] + rng.normal(0, 0.1, (n, t))
    db = -12.0 + 2.0 * wet - 0.2 * (angle - 40.0) + np.arange(n)[:, None]
    db[:, days % 3 != 0] = np.nan
    return {"sigma0_vv": 10 ** (db / 10), "sigma0_vh": 10 ** ((db - 7.0) / 10), "incidence_angle_deg": angle}


def test_db_and_cross_ratio_are_in_decibels():
    d = feat.derive(["sigma0_vv_db", "sigma0_vh_db", "vh_vv_db"], _s1(), {})
    ok = np.isfinite(d["sigma0_vv_db"])
    assert np.allclose(d["vh_vv_db"][ok], -7.0)
    assert np.allclose(feat.to_db(np.array([1.0, 0.1, 0.0, np.nan])), [0.0, -10.0, np.nan, np.nan], equal_nan=True)


def test_angle_normalisation_recovers_the_slope_and_removes_the_orbit_offset():
    s = _s1()
    db = feat.to_db(s["sigma0_vv"])
    slope = feat.angle_slope(db, s["incidence_angle_deg"], None, -0.12)
    assert np.allclose(slope, -0.2, atol=0.03)
    ref = feat.derive(["sigma0_vv_db_ref"], s, {})["sigma0_vv_db_ref"]
    even, odd = ref[:, ::2], ref[:, 1::2]   # the two orbits
    raw_gap = np.nanmean(db[:, 1::2]) - np.nanmean(db[:, ::2])
    assert abs(raw_gap) > 1.5 and abs(np.nanmean(odd) - np.nanmean(even)) < 0.3
    # without an angle column the dB values pass unchanged
    no_angle = {k: v for k, v in s.items() if k != "incidence_angle_deg"}
    assert np.allclose(feat.derive(["sigma0_vv_db_ref"], no_angle, {})["sigma0_vv_db_ref"], db, equal_nan=True)


def test_change_detection_references_come_only_from_the_fit_days():
    s = _s1(t=300)
    fit = np.arange(300) < 200
    a = feat.derive(["cdi_vv", "sigma0_vv_db_mean"], s, {}, fit_days=fit)
    # change every sigma0 after the fit period (the predicted period): the references must not move
    s2 = {k: v.copy() for k, v in s.items()}
    s2["sigma0_vv"][:, 200:] *= 10.0
    b = feat.derive(["cdi_vv", "sigma0_vv_db_mean"], s2, {}, fit_days=fit)
    assert np.allclose(a["cdi_vv"][:, :200], b["cdi_vv"][:, :200], equal_nan=True)
    assert np.allclose(a["sigma0_vv_db_mean"], b["sigma0_vv_db_mean"])
    # on the fit days the index spans roughly [0, 1] (5th..95th percentile references)
    v = a["cdi_vv"][:, :200][np.isfinite(a["cdi_vv"][:, :200])]
    assert -0.3 < v.min() < 0.05 and 0.95 < v.max() < 1.3
    # with every day as fit days the references do move (the test above would catch a leak)
    c = feat.derive(["cdi_vv"], s2, {}, fit_days=None)
    assert not np.allclose(a["cdi_vv"][:, :200], c["cdi_vv"][:, :200], equal_nan=True)


def test_a_series_features_depend_on_its_own_inputs_only():
    s = _s1(n=4)
    a = feat.derive(["cdi_vv", "sigma0_vv_db_ref", "sigma0_vv_db_mean"], s, {})
    s2 = {k: v.copy() for k, v in s.items()}
    s2["sigma0_vv"][3] *= 5.0   # another probe (say the test probe) changes
    b = feat.derive(["cdi_vv", "sigma0_vv_db_ref", "sigma0_vv_db_mean"], s2, {})
    for k in a:
        assert np.allclose(a[k][:3], b[k][:3], equal_nan=True), k


def test_tensors_never_read_ssm_for_derived_features():
    from soilmoisture.tensors import build_tensors

    daily, probes = tiny_tables(n_probes=3)
    names = ["sigma0_vv_db_ref", "cdi_vv", "s1_mask", "s1_age_days", "sigma0_vv_db_mean", "landcover_onehot",
             "irrigated"]
    a = build_tensors(daily, probes, names, fit_end="2017-03-01")
    d2 = daily.assign(ssm=daily["ssm"] * 0.5 + 0.1)
    b = build_tensors(d2, probes, names, fit_end="2017-03-01")
    assert np.allclose(a.x, b.x, equal_nan=True)
    assert a.features[:5] == names[:5] and "lc_212" in a.features and a.features[-1] == "irrigated"


def test_land_cover_is_one_hot_with_an_irrigated_flag():
    lc = np.array([211.0, 212.0, np.nan])
    d = feat.derive(["lc_211", "lc_212", "irrigated"], {}, {"landcover_code": lc})
    assert np.allclose(d["lc_211"], [1, 0, np.nan], equal_nan=True)
    assert np.allclose(d["lc_212"], [0, 1, np.nan], equal_nan=True)
    assert np.allclose(d["irrigated"], [0, 1, np.nan], equal_nan=True)
    assert feat.expand(["ndvi", "landcover_onehot"])[:2] == ["ndvi", "lc_111"]


def test_overpass_mask_and_age():
    v = np.array([[np.nan, 0.1, np.nan, np.nan, 0.2, np.nan]])
    d = feat.derive(["s1_mask", "s1_age_days"], {"sigma0_vv": v}, {}, opt=feat.FeatureOptions(s1_age_cap_days=2))
    assert d["s1_mask"].tolist() == [[0, 1, 0, 0, 1, 0]]
    assert d["s1_age_days"].tolist() == [[2, 0, 1, 2, 0, 1]]


def test_config_names_an_unknown_derived_feature():
    from soilmoisture.config import VariantSpec
    from soilmoisture.errors import ConfigError

    VariantSpec(["cdi_vv", "landcover_onehot", "irrigated"], None)._check("variants.x")
    with pytest.raises(ConfigError, match="unknown feature 'cdi_hh'"):
        VariantSpec(["cdi_hh"], None)._check("variants.x")
    with pytest.raises(ConfigError, match="twice"):
        VariantSpec(["landcover_onehot", "lc_211"], None)._check("variants.x")


def test_a_missing_input_of_a_derived_feature_is_named():
    from soilmoisture.errors import DataError
    from soilmoisture.tensors import build_tensors

    daily, probes = tiny_tables(n_probes=2)
    with pytest.raises(DataError, match=r"\[sigma0_vv\]: input of a derived feature"):
        build_tensors(daily.drop(columns="sigma0_vv"), probes, ["cdi_vv"])
    # optional columns some sources lack (VH, LST) stay empty instead
    t = build_tensors(daily, probes, ["lst_day_c", "lst_mask"])
    assert np.isnan(t.x[..., 0]).all() and (t.x[..., 1] == 0).all()


def test_schema_documents_every_derived_feature_in_docs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for name in feat.DERIVED:
        if not name.startswith("lc_"):
            assert f"`{name}`" in text, name
    assert "`lc_<code>`" in text and "`landcover_onehot`" in text
    assert pd.Series(list(feat.DERIVED)).is_unique
