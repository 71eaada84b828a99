"""Network-informed estimation (protocol/network.py): screening, GP interpolation, the combination, no leakage
of the left-out probe, and the protocol run with ``protocol.method: network``."""
from __future__ import annotations

import numpy as np
import pytest

from soilmoisture.protocol import network as nw
from soilmoisture.protocol.folds import FoldPlan


def _field(rng, n_days: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Two clusters of probes 40 km apart, each following its own daily signal (and a common seasonal one)."""
    xy = np.array([[0, 0], [0.5, 0], [0, 0.7], [40, 0], [40.6, 0], [40, 0.5]], dtype=float)
    season = np.sin(np.arange(n_days) / 60)
    west, east = rng.standard_normal(n_days), rng.standard_normal(n_days)
    y = np.empty((6, n_days))
    for i, (x, _) in enumerate(xy):
        local = west if x < 20 else east
        level = 0.1 + 0.03 * i
        y[i] = level + level * 0.3 * (0.5 * season + local + 0.1 * rng.standard_normal(n_days))
    return xy, y


def test_flatline_and_jump_are_screened_out_and_normal_readings_kept():
    rng = np.random.default_rng(0)
    common = rng.standard_normal(300)
    y = np.array([0.2 + 0.03 * (common + 0.2 * rng.standard_normal(300)) for _ in range(5)])
    y[1, 100:130] = 0.25           # flatline: a stuck sensor
    y[2, 200] += 0.3               # one jump far from what the network does
    res = nw.screen(y, np.arange(5))
    assert np.isnan(res.y[1, 100:130]).all() and res.flatline == 30
    assert np.isnan(res.y[2, 200]) and res.jump >= 1
    kept = np.isfinite(res.y).sum() / y.size
    assert kept > 0.97                                   # the rest stays
    assert np.array_equal(y[0], res.y[0][np.isfinite(res.y[0])]) or np.isfinite(res.y[0]).mean() > 0.99


def test_gp_follows_the_nearby_cluster_and_fades_far_from_every_probe():
    rng = np.random.default_rng(1)
    xy, y = _field(rng)
    z, level, sd = nw.anomalies(y, np.arange(6))
    pool_idx = np.array([0, 1, 3, 4])          # probes 2 (west) and 5 (east) are left out
    kernel = nw.fit_kernel(xy[pool_idx], z[pool_idx])
    targets = np.array([xy[2], xy[5], [20.0, 500.0]])
    mean, sdv = nw.interpolate(xy[pool_idx], z[pool_idx], targets, kernel)
    r_west = np.corrcoef(mean[0], z[2])[0, 1]
    r_cross = np.corrcoef(mean[0], z[5])[0, 1]
    assert r_west > 0.9 and r_cross < 0.5        # the west target follows the west probes, not the east ones
    assert np.corrcoef(mean[1], z[5])[0, 1] > 0.9
    assert np.abs(mean[2]).mean() < 0.2 * np.abs(mean[0]).mean()   # 500 km away: back to the prior mean 0
    assert sdv[2].mean() > 2 * sdv[0].mean()                       # and much less certain


def test_days_without_readings_get_the_prior_and_missing_days_are_handled():
    rng = np.random.default_rng(2)
    xy, y = _field(rng, 200)
    z, _, _ = nw.anomalies(y, np.arange(6))
    z[:, 10] = np.nan                # nobody observed day 10
    z[0, 20:40] = np.nan             # one probe missing for a while
    mean, sd = nw.interpolate(xy, z, xy[:1] + 0.1)
    assert mean[0, 10] == 0.0 and sd[0, 10] > sd[0, 11]
    assert np.isfinite(mean).all() and np.isfinite(sd).all()


def test_combination_weights_mean_what_the_docs_say():
    rng = np.random.default_rng(3)
    xy, y = _field(rng, 300)
    pool = nw.make_pool(y, np.array([0, 1, 3, 4]), xy)
    sat = y[2][None] + 0.05                      # a satellite series with a level error
    c = nw.components(pool, sat, xy[2][None])
    sat_only, _ = nw.combine(c, pool, w=0.0, lam=1.0)
    assert np.allclose(sat_only, sat)                    # w=0, lam=1: the satellite model unchanged
    net_only, band = nw.combine(c, pool, w=1.0, lam=0.0)
    assert np.allclose(net_only.mean(), pool.mean_level, atol=0.02)   # lam=0: the pool's level
    assert (band > 0).all()
    w, lam, mae = nw.choose([c], [y[2]], pool)
    assert mae <= np.nanmean(np.abs(sat_only - y[2])) + 1e-12      # the grid contains the satellite-only choice
    w1, lam1, _ = nw.choose([c], [y[2]], pool, w_grid=(0.5,))
    assert w1 == 0.5 and lam1 in nw.GRID
    assert nw.choose([], [], pool) == (nw.DEFAULT_W, nw.DEFAULT_LAM, pytest.approx(np.nan, nan_ok=True))


def _params(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(network_w=kw.get("w", "auto"), network_lam=kw.get("lam", "auto"), network_flat_days=7,
                           network_jump_k=6.0)


def test_the_left_out_probe_never_informs_its_own_estimate():
    """Replacing every reading of the test probe changes nothing; replacing a pool probe's readings does."""
    from soilmoisture.protocol.run import network_informed

    rng = np.random.default_rng(4)
    xy, y = _field(rng, 300)
    nets = ["N"] * 6
    plan = FoldPlan("fold", 0, 1, train_idx=np.array([0, 1, 3, 4]), val_idx=np.array([5]), test_idx=np.array([2]),
                    test_probe="P2")
    noise = rng.normal(0, 0.03, (2, y.shape[1]))    # a satellite model with level errors and noisy dynamics
    sat_test, sat_val = y[[2]] + 0.04 + noise[:1], y[[5]] - 0.03 + noise[1:]
    a, va, info = network_informed(y, nets, plan, sat_test, sat_val, xy, _params())
    y2 = y.copy()
    y2[2] = rng.uniform(0, 0.5, y.shape[1])
    b, vb, _ = network_informed(y2, nets, plan, sat_test, sat_val, xy, _params())
    assert np.array_equal(a, b) and np.array_equal(va, vb)
    y3 = y.copy()
    y3[0] += rng.normal(0, 0.05, y.shape[1])
    c, _, _ = network_informed(y3, nets, plan, sat_test, sat_val, xy, _params())
    assert not np.allclose(a, c)
    assert set(info[2]) >= {"network_w", "network_lam", "network_pool"} and info[2]["network_pool"] == 4
    # a fixed share is used as given
    _, _, info_fixed = network_informed(y, nets, plan, sat_test, sat_val, xy, _params(w=0.25, lam=1.0))
    assert info_fixed[2]["network_w"] == 0.25 and info_fixed[2]["network_lam"] == 1.0


def test_a_network_without_training_probes_falls_back_to_the_satellite_model():
    from soilmoisture.protocol.run import network_informed

    rng = np.random.default_rng(5)
    xy, y = _field(rng, 200)
    nets = ["A", "A", "A", "A", "B", "A"]
    plan = FoldPlan("fold", 0, 1, train_idx=np.array([0, 1, 3]), val_idx=np.array([], dtype=np.int64),
                    test_idx=np.array([4]), test_probe="P4")
    out, vout, info = network_informed(y, nets, plan, y[[4]] + 0.01, None, xy, _params())
    assert np.array_equal(out, y[[4]] + 0.01) and vout is None and info[4]["network_pool"] == 0


def test_protocol_method_network_scores_the_satellite_model_beside_it(make_params):
    from test_protocol import BASE, _client, tiny_tables, write_processed

    from soilmoisture.protocol.run import run

    params = make_params({**BASE, "protocol.mode": "unseen_site", "protocol.method": "network", "model.epochs": 1,
                          "protocol.val_fraction": 0.3})
    daily, probes = tiny_tables(n_probes=6)
    write_processed(params, daily, probes)
    rid = run(params, register=False)
    m = _client(params).get_run(rid).data.metrics
    for k in ("mean_mae", "mean_baseline_satellite_model_mae", "mean_baseline_network_day_mae"):
        assert np.isfinite(m[k]), k
    assert m["mean_mae"] != m["mean_baseline_satellite_model_mae"]


def test_network_method_is_refused_for_known_site(make_params):
    from soilmoisture.errors import ConfigError

    with pytest.raises(ConfigError, match="protocol.method"):
        make_params({"protocol.method": "network", "protocol.mode": "known_site"})
    with pytest.raises(ConfigError, match="network_w"):
        make_params({"protocol.network_w": 1.5})
