"""The native (C kernel) engine trains each model with the per-model semantics of the JAX and Keras engines.

Small case throughout (6 probes x 120 days x 3 features, from test_jax_engine). References: the JAX
engine (same initialisation, order and dropout masks, so the same models to float32 precision) and
the plain Keras loop (same start and order without dropout). Tolerances: 1e-5 on one step and on
gradients (float32 summation order), 1e-4 on loss curves over several epochs as for the JAX engine.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest

from soilmoisture.errors import ConfigError, NativeBuildError
from soilmoisture.model import jax_engine, native_build, native_engine
from soilmoisture.model.interface import normalise
from test_jax_engine import F, P, T, _data, _hp, _keras_init, _request, base_hp  # noqa: F401 - fixture


def _max_diff(wa: list[list[np.ndarray]], wb: list[list[np.ndarray]]) -> float:
    return max(float(np.abs(a - b).max()) for ma, mb in zip(wa, wb) for a, b in zip(ma, mb))


def _jax_loss_grad(hp, x, y, mean, std, weights, idx, sw):
    """Reference: jax.grad of the masked MAE of the batch (no dropout) + l2 * sum(R^2), JAX engine's forward."""
    import jax
    import jax.numpy as jnp

    core = jax_engine._core(jax_engine._Static.from_hp(hp))
    xn = jnp.asarray(normalise(x, mean, std)[None])

    def loss(params):
        pred = core["predict"](params, xn)[0][idx]                      # (B, T)
        yy = jnp.asarray(y[idx])
        obs = jnp.isfinite(yy)
        yf = jnp.where(obs, yy, 0.0)
        w = jnp.ones_like(yf) if hp.target_fill == "zero" else obs.astype(jnp.float32)
        per = (jnp.abs(pred - yf) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        dl = (per * sw).sum() / jnp.maximum(sw.sum(), 1.0)
        l2 = sum(jnp.sum(r[0] ** 2) for _, r, _ in params["lstm"]) * hp.recurrent_l2
        return dl + l2, dl

    (_, dl), grads = jax.value_and_grad(loss, has_aux=True)(jax_engine._stack([weights], hp.layers))
    return float(dl), jax_engine._unstack(grads, 1)[0]


@pytest.mark.parametrize("layers,units,fill", [(2, 16, "mask"), (1, 8, "zero"), (3, 12, "mask"), (2, 32, "zero")])
def test_gradients_equal_jax_autodiff(base_hp, layers, units, fill):
    hp = _hp(base_hp, dropout=0.0, target_fill=fill, layers=layers, units=units, recurrent_l2=1e-3)
    x, y = _data()
    req = _request(hp, 1, epochs=1)
    w = jax_engine.init_weights(5, F, hp)
    for idx, sw in ((np.array([2]), np.array([1.0])), (np.array([1, 4, 0]), np.array([1.0, 1.0, 0.0]))):
        loss, grad = native_engine.loss_grad(x, y, req.mean[0], req.std[0], w, hp, idx, sw)
        ref_loss, ref_grad = _jax_loss_grad(hp, x, y, req.mean[0], req.std[0], w, idx, sw.astype(np.float32))
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert max(np.abs(g).max() for g in grad) > 1e-3                  # a real gradient
        for g, r in zip(grad, ref_grad):
            np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)


def test_dropout_masks_change_the_gradient_and_depend_on_seed_and_step(base_hp):
    hp = _hp(base_hp, dropout=0.3)
    x, y = _data()
    req = _request(hp, 1, epochs=1)
    w = jax_engine.init_weights(5, F, hp)
    args = (x, y, req.mean[0], req.std[0], w, hp, np.array([2]), np.array([1.0]))
    base = native_engine.loss_grad(*args, seed=1, count=0)
    again = native_engine.loss_grad(*args, seed=1, count=0)
    assert base[0] == again[0]
    assert _max_diff([base[1]], [again[1]]) == 0.0                       # same seed and step: same masks
    for other in (native_engine.loss_grad(*args, seed=2, count=0), native_engine.loss_grad(*args, seed=1, count=1)):
        assert _max_diff([base[1]], [other[1]]) > 1e-4
    no_drop = native_engine.loss_grad(x, y, req.mean[0], req.std[0], w, _hp(hp, dropout=0.0), np.array([2]),
                                      np.array([1.0]))
    assert abs(no_drop[0] - base[0]) > 1e-6


@pytest.mark.parametrize("dropout,fill,batch", [(0.1, "zero", 1), (0.2, "mask", 2)])
def test_same_models_as_the_jax_engine(base_hp, dropout, fill, batch):
    # Own initialisation, shuffling and dropout masks (the JAX engine's hash), varied split sizes.
    hp = _hp(base_hp, dropout=dropout, target_fill=fill, batch_size=batch, clr_base_lr=1e-3, clr_max_lr=1e-2,
             clr_step_size=4)
    req = _request(hp, 4, epochs=3, varied_splits=True)
    ref = jax_engine.fit_many(req, processes=1)
    got = native_engine.fit_many(req, threads=2)
    np.testing.assert_allclose(got.train_loss, ref.train_loss, atol=1e-5)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, atol=1e-5)
    np.testing.assert_allclose(got.info["train_l2"], ref.info["train_l2"], rtol=1e-4, atol=1e-9)
    assert _max_diff(got.weights, ref.weights) < 1e-5
    assert np.all(ref.train_loss[:, -1] < ref.train_loss[:, 0])


def test_one_step_equals_a_keras_train_step(base_hp):
    from soilmoisture.model import keras_engine

    hp = _hp(base_hp, dropout=0.0, clr_base_lr=1e-2, clr_max_lr=2e-2, clr_step_size=4)
    req = _request(hp, 1, epochs=1)
    req.train_idx = [req.train_idx[0][:1]]
    init = _keras_init(hp, req.seeds)
    ref = keras_engine.fit_many(req)
    got = native_engine.fit_many(req, init=init)
    assert max(np.abs(a - b).max() for a, b in zip(ref.weights[0], init[0])) > 1e-3
    for a, b in zip(got.weights[0], ref.weights[0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(got.train_loss, ref.train_loss, atol=1e-5)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, atol=1e-5)


@pytest.mark.slow
def test_same_start_gives_the_keras_engines_loss_curves(base_hp):
    from soilmoisture.model import keras_engine

    hp = _hp(base_hp, dropout=0.0, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 4, epochs=4)
    init = _keras_init(hp, req.seeds)
    ref = keras_engine.fit_many(req)
    got = native_engine.fit_many(req, init=init)
    assert np.all(ref.train_loss[:, -1] < ref.train_loss[:, 0])
    np.testing.assert_allclose(got.train_loss, ref.train_loss, atol=1e-4)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, atol=1e-4)
    assert _max_diff(got.weights, ref.weights) < 1e-3


def test_masked_loss_ignores_missing_days_and_zero_fill_counts_them(base_hp):
    x, y = _data()
    y_train = y.copy()
    y_train[:, T // 2:] = np.nan
    for fill in ("mask", "zero"):
        hp = _hp(base_hp, dropout=0.0, clr_base_lr=1e-12, clr_max_lr=1e-12, target_fill=fill)
        req = _request(hp, 4, epochs=1, y_train=y_train)
        res = native_engine.fit_many(req)
        init = [jax_engine.init_weights(s, F, hp) for s in req.seeds]
        pred = native_engine.predict_many(req.x, req.mean, req.std, init, hp)
        for m in range(4):
            tr, va = req.train_idx[m], req.val_idx[m]
            obs = np.isfinite(y_train[tr])
            err = np.abs(pred[m][tr] - np.nan_to_num(y_train[tr]))
            want = (err * obs).sum(1) / obs.sum(1) if fill == "mask" else err.mean(1)
            assert res.train_loss[m, 0] == pytest.approx(want.mean(), rel=1e-4)
            vobs = np.isfinite(y[va])
            verr = np.abs(pred[m][va] - np.nan_to_num(y[va]))
            assert res.val_loss[m, 0] == pytest.approx(((verr * vobs).sum(1) / vobs.sum(1)).mean(), rel=1e-4)


def test_thread_count_and_grouping_do_not_change_any_model(base_hp):
    hp = _hp(base_hp, dropout=0.1, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 5, epochs=2, varied_splits=True)
    one = native_engine.fit_many(req, threads=1)
    two = native_engine.fit_many(req, threads=2)
    again = native_engine.fit_many(req, threads=3)
    assert two.info["threads"] == 2
    for other in (two, again):                       # same seed -> the same weights, bit for bit
        np.testing.assert_array_equal(other.train_loss, one.train_loss)
        assert _max_diff(other.weights, one.weights) == 0.0
    m = 3
    alone = native_engine.fit_many(dataclasses.replace(req, mean=req.mean[m:m + 1], std=req.std[m:m + 1],
                                                       train_idx=[req.train_idx[m]], val_idx=[req.val_idx[m]],
                                                       seeds=req.seeds[m:m + 1]))
    assert _max_diff(alone.weights, [one.weights[m]]) == 0.0
    assert not np.allclose(one.train_loss[0], one.train_loss[1])


def test_predictions_equal_keras_predict_with_the_same_weights(base_hp):
    from soilmoisture.model.keras_model import build_model, predict_normalised

    req = _request(base_hp, 3, epochs=1)
    weights = _keras_init(base_hp, req.seeds)
    pred = native_engine.predict_many(req.x, req.mean, req.std, weights, base_hp)
    assert pred.shape == (3, P, T)
    model = build_model(base_hp, F)
    for m in range(3):
        model.set_weights(weights[m])
        np.testing.assert_allclose(pred[m], predict_normalised(model, normalise(req.x, req.mean[m], req.std[m])),
                                   atol=1e-5)
    sel = native_engine.predict_many(req.x, req.mean, req.std, weights, base_hp,
                                     probe_idx=[np.array([0]), np.array([1, 2]), np.array([], int)])
    assert sel[0].shape == (1, T) and sel[2].shape == (0, T)
    np.testing.assert_array_equal(sel[1], pred[1][[1, 2]])


def test_bad_requests_are_refused_with_the_field_named(base_hp):
    with pytest.raises(ConfigError, match="model.cell"):
        native_engine.fit_many(_request(_hp(base_hp, cell="gru"), 1, epochs=1))
    req = _request(base_hp, 2, epochs=1)
    with pytest.raises(Exception, match="weight shapes"):
        native_engine.fit_many(req, init=[jax_engine.init_weights(0, F + 1, base_hp)] * 2)


@pytest.fixture()
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded in this process (restored afterwards)."""
    monkeypatch.setattr(native_build, "_LOADED", {})
    monkeypatch.setenv(native_build.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_kernel_builds_into_the_cache_from_the_package_source(fresh_build):
    lib = native_build.load(7)
    assert lib.sm_units() == 7
    built = list(fresh_build.glob("lstm_h7_*.so"))
    assert len(built) == 1 and not list(fresh_build.glob("*.tmp.so"))
    native_build._LOADED.clear()
    native_build.load(7)                                  # second load: from the cache, no rebuild
    assert list(fresh_build.glob("lstm_h7_*.so")) == built


def test_missing_or_failing_compiler_gives_a_clear_error_and_the_protocol_falls_back(fresh_build, monkeypatch,
                                                                                        caplog):
    from soilmoisture.protocol.run import get_engine

    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(NativeBuildError, match="no-such-compiler-xyz.*not found"):
        native_build.load(16)
    monkeypatch.setenv("CC", "false")                     # a "compiler" that exits 1
    with pytest.raises(NativeBuildError, match=r"building the native kernel failed \(exit 1\)"):
        native_build.load(16)
    assert not list(fresh_build.glob("*.so"))             # nothing half-written left in the cache
    with caplog.at_level(logging.WARNING):
        engine, name = get_engine("native", "lstm")
    assert name == "jax" and engine is jax_engine
    assert "cannot be built" in caplog.text


def test_default_threads_follow_the_affinity_mask(monkeypatch):
    monkeypatch.delenv(native_engine.ENV_THREADS, raising=False)
    assert native_engine.default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(native_engine.ENV_THREADS, "3")
    assert native_engine.default_threads() == 3
    monkeypatch.setenv(native_engine.ENV_THREADS, "zero")
    with pytest.raises(ConfigError, match=native_engine.ENV_THREADS):
        native_engine.default_threads()


def test_training_epoch_by_epoch_equals_training_in_one_go(base_hp):
    # Per-epoch control (e.g. pruning a tuning trial): optimizer state, step count and order carry over.
    hp = _hp(base_hp, dropout=0.1, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 3, epochs=3, varied_splits=True)
    whole = native_engine.fit_many(req)
    training = native_engine.Training(req)
    curves = []
    for e in range(3):
        training.advance(1)
        part = training.result()
        assert part.train_loss.shape == (3, e + 1)
        curves.append(part.val_loss[:, -1])
    np.testing.assert_array_equal(np.stack(curves, 1), whole.val_loss)
    np.testing.assert_array_equal(part.train_loss, whole.train_loss)
    assert _max_diff(part.weights, whole.weights) == 0.0
    assert training.advance(1).result().train_loss.shape == (3, 3)      # no epoch beyond the request's
