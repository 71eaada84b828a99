"""The JAX engine trains many models at once with the per-model semantics of the plain Keras loop.

Small case throughout: 6 probes x 120 days x 3 features. The reference is ``keras_engine.fit_many``
(the plain per-model Keras ``fit`` loop); both engines draw the series order from the same seed stream,
so from the same initial weights and without dropout their curves must agree to float32 precision.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from soilmoisture import config
from soilmoisture.errors import ConfigError, ProtocolError
from soilmoisture.model import jax_engine
from soilmoisture.model.interface import FitRequest, clr, normalise

ROOT = Path(__file__).resolve().parents[1]
P, T, F = 6, 120, 3


@pytest.fixture(scope="module")
def base_hp() -> config.Model:
    return config.load(ROOT / "params.yaml").model


def _hp(base: config.Model, **over) -> config.Model:
    return dataclasses.replace(base, **over)


def _data(seed: int = 0, missing: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Features with a learnable, lagged link to the target; ~40 % of target days missing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(P, T, F)).astype(np.float32)
    x[..., 1] = x[..., 1] * 3 + 10                     # an unnormalised feature
    x[rng.random((P, T, F)) < 0.05] = np.nan           # missing inputs
    drive = np.nan_to_num(x[..., 0])
    state = np.zeros((P, T), np.float32)
    for t in range(1, T):
        state[:, t] = 0.8 * state[:, t - 1] + 0.2 * drive[:, t]
    y = (0.25 + 0.1 * np.tanh(state) + 0.01 * rng.normal(size=(P, T))).astype(np.float32)
    y[rng.random((P, T)) < missing] = np.nan
    return x, y


def _request(hp: config.Model, n_models: int, epochs: int, seed0: int = 11, y_train=None, data_seed: int = 0,
             varied_splits: bool = False) -> FitRequest:
    """LOO-like requests: model m tests probe m % P, trains/validates on the rest."""
    x, y = _data(data_seed)
    train_idx, val_idx, means, stds = [], [], [], []
    for m in range(n_models):
        rest = np.array([p for p in range(P) if p != m % P])
        rng = np.random.default_rng(seed0 + m)
        rest = rng.permutation(rest)
        n_val = 1 + (m % 2 if varied_splits else 0)
        train_idx.append(np.sort(rest[n_val:]))
        val_idx.append(np.sort(rest[:n_val]))
        xt = x[train_idx[-1]].reshape(-1, F)
        means.append(np.nanmean(xt, 0))
        stds.append(np.nanstd(xt, 0))
    return FitRequest(x=x, y=y, mean=np.array(means, np.float32), std=np.array(stds, np.float32),
                      train_idx=train_idx, val_idx=val_idx, seeds=np.arange(seed0, seed0 + n_models), hp=hp,
                      epochs=epochs, y_train=y_train)


def _keras_init(hp: config.Model, seeds) -> list[list[np.ndarray]]:
    """The initial weights keras_engine gives each seed (Keras' own initialisers and random stream)."""
    import keras

    from soilmoisture.model.keras_model import build_model

    out = []
    for s in seeds:
        keras.utils.set_random_seed(int(s))
        out.append([np.asarray(w) for w in build_model(hp, F).get_weights()])
    return out


def test_learning_rate_follows_interface_clr(base_hp):
    steps = np.arange(0, 3001)
    got = np.asarray(jax_engine.clr_jax(steps, base_hp.clr_base_lr, base_hp.clr_max_lr, base_hp.clr_step_size))
    want = clr(steps, base_hp.clr_base_lr, base_hp.clr_max_lr, base_hp.clr_step_size)
    # float32 like Keras' own schedule: equal to 1e-6 of the peak rate
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * base_hp.clr_max_lr)
    assert got[250] == pytest.approx(base_hp.clr_max_lr, rel=1e-6)   # peak after one half cycle


def test_series_order_is_the_keras_engines(base_hp):
    from soilmoisture.model import keras_engine

    for seed in (0, 7, 123):
        for a, b in zip(jax_engine.epoch_orders(seed, 47, 5), keras_engine.epoch_orders(seed, 47, 5)):
            np.testing.assert_array_equal(a, b)


def test_initial_weights_have_keras_layout_and_initialisers(base_hp):
    from soilmoisture.model.keras_model import build_model

    hp = base_hp
    w = jax_engine.init_weights(3, 10, hp)
    model = build_model(hp, 10)
    assert [a.shape for a in w] == [np.shape(a) for a in model.get_weights()]
    model.set_weights(w)                                             # loadable as is
    h = hp.units
    for layer in range(hp.layers):
        kernel, rec, bias = w[3 * layer: 3 * layer + 3]
        np.testing.assert_allclose(rec @ rec.T, np.eye(h), atol=1e-5)   # orthogonal rows
        assert np.all(bias[h:2 * h] == 1) and np.all(bias[:h] == 0) and np.all(bias[2 * h:] == 0)
        fan_in = 10 if layer == 0 else h
        assert np.abs(kernel).max() <= np.sqrt(6 / (fan_in + 4 * h))     # glorot_uniform bound
    assert not np.allclose(w[0], jax_engine.init_weights(4, 10, hp)[0])  # the seed matters


def test_hand_written_backprop_equals_autodiff():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    h = 5
    zx = jnp.asarray(rng.normal(size=(40, 3, 2, 4 * h)).astype(np.float32))
    r = jnp.asarray(rng.normal(size=(3, h, 4 * h)).astype(np.float32) * 0.5)
    cot = jnp.asarray(rng.normal(size=(40, 3, 2, h)).astype(np.float32))
    grads = []
    for hand in (True, False):
        rec = jax_engine._lstm_recurrence(h, hand_vjp=hand)
        grads.append(jax.grad(lambda a, b, rec=rec: jnp.sum(rec(a, b) * cot), argnums=(0, 1))(zx, r))
    for got, want in zip(*grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_fused_time_loop_equals_one_loop_per_layer(base_hp):
    import jax
    import jax.numpy as jnp

    # The engine advances both layers in one loop; per-layer loops (jax.grad and hand-written backward)
    # must give the same epoch: same losses, same updated weights.
    hp = _hp(base_hp, dropout=0.1, clr_base_lr=1e-2, clr_max_lr=2e-2)
    g, s = 3, 4
    rng = np.random.default_rng(1)
    xn = jnp.asarray(rng.normal(size=(g, P, T, F)).astype(np.float32))
    _, y = _data()
    params = jax_engine._stack([jax_engine.init_weights(k, F, hp) for k in range(g)], hp.layers)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = (params, zeros, zeros, jnp.zeros(g, jnp.int32))
    keys = jnp.asarray(np.stack([jax_engine._dropout_key(k) for k in range(g)]))
    order = jnp.asarray(rng.integers(0, P, (s, g, 1)).astype(np.int32))
    args = (state, xn, jnp.asarray(y), order, jnp.ones((s, g, 1)), keys, jnp.asarray(jax_engine._hyper(hp)))
    outs = []
    for fused, hand in ((True, False), (False, False), (False, True)):
        st = dataclasses.replace(jax_engine._Static.from_hp(hp), fused=fused, hand_vjp=hand)
        outs.append(jax_engine._core(st)["epoch"](*args))
    for other in outs[1:]:
        np.testing.assert_allclose(np.asarray(other[1]), np.asarray(outs[0][1]), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(other[0][0]), jax.tree_util.tree_leaves(outs[0][0][0])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_one_step_equals_a_keras_train_step(base_hp):
    from soilmoisture.model import keras_engine

    # One model, one training probe, one epoch: exactly one optimizer step, at a learning rate that moves.
    hp = _hp(base_hp, dropout=0.0, clr_base_lr=1e-2, clr_max_lr=2e-2, clr_step_size=4)
    req = _request(hp, 1, epochs=1)
    req.train_idx = [req.train_idx[0][:1]]
    init = _keras_init(hp, req.seeds)
    ref = keras_engine.fit_many(req)
    got = jax_engine.fit_many(req, processes=1, init=init)
    moved = max(np.abs(a - b).max() for a, b in zip(ref.weights[0], init[0]))
    assert moved > 1e-3                                              # the step did something
    for a, b in zip(got.weights[0], ref.weights[0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(got.train_loss, ref.train_loss, atol=1e-5)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, atol=1e-5)


def test_same_start_gives_the_keras_engines_loss_curves(base_hp):
    from soilmoisture.model import keras_engine

    # 4 models x 4 epochs x 4 steps without dropout: same start, same order -> same curves and weights.
    hp = _hp(base_hp, dropout=0.0, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 4, epochs=4)
    init = _keras_init(hp, req.seeds)
    ref = keras_engine.fit_many(req)
    got = jax_engine.fit_many(req, processes=1, init=init)
    assert np.all(ref.train_loss[:, -1] < ref.train_loss[:, 0])       # it learns
    np.testing.assert_allclose(got.train_loss, ref.train_loss, atol=1e-4)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, atol=1e-4)
    for wg, wr in zip(got.weights, ref.weights):
        for a, b in zip(wg, wr):
            np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.slow
def test_own_initialisation_and_dropout_match_the_keras_engine_statistically(base_hp):
    from soilmoisture.model import keras_engine

    # Different random streams (init, dropout), so compare the distributions over 8 models: per epoch,
    # the mean curves must agree within 3 standard errors of their difference (+ 0.005 m3/m3), the
    # final means within 25 %, and the per-model final validation MAE ranges must overlap.
    hp = _hp(base_hp, dropout=0.1, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 8, epochs=4)
    ref = keras_engine.fit_many(req)
    got = jax_engine.fit_many(req, processes=1, group_size=4)
    for name in ("train_loss", "val_loss"):
        k, j = getattr(ref, name), getattr(got, name)
        se = np.sqrt(k.var(0, ddof=1) / len(k) + j.var(0, ddof=1) / len(j))
        assert np.all(np.abs(j.mean(0) - k.mean(0)) <= 3 * se + 0.005), (name, j.mean(0), k.mean(0), se)
        assert j[:, -1].mean() == pytest.approx(k[:, -1].mean(), rel=0.25), name
    vk, vj = ref.val_loss[:, -1], got.val_loss[:, -1]
    assert vj.min() < vk.max() and vk.min() < vj.max()


def test_masked_loss_ignores_missing_days_and_zero_fill_counts_them(base_hp):
    # A learning rate of ~0 leaves the weights at their start: the epoch's training loss is then the
    # loss of the initial model, which predict_many gives independently.
    x, y = _data()
    y_train = y.copy()
    y_train[:, T // 2:] = np.nan                                     # known_site-like: train on the first half
    for fill in ("mask", "zero"):
        hp = _hp(base_hp, dropout=0.0, clr_base_lr=1e-12, clr_max_lr=1e-12, target_fill=fill)
        req = _request(hp, 4, epochs=1, y_train=y_train)
        res = jax_engine.fit_many(req, processes=1)
        init = [jax_engine.init_weights(s, F, hp) for s in req.seeds]
        pred = jax_engine.predict_many(req.x, req.mean, req.std, init, hp)
        for m in range(4):
            tr, va = req.train_idx[m], req.val_idx[m]
            obs = np.isfinite(y_train[tr])
            err = np.abs(pred[m][tr] - np.nan_to_num(y_train[tr]))
            want = (err * obs).sum(1) / obs.sum(1) if fill == "mask" else err.mean(1)
            assert res.train_loss[m, 0] == pytest.approx(want.mean(), rel=1e-4)
            # validation: on req.y (not y_train), observed days only, in both modes
            vobs = np.isfinite(y[va])
            verr = np.abs(pred[m][va] - np.nan_to_num(y[va]))
            assert res.val_loss[m, 0] == pytest.approx(((verr * vobs).sum(1) / vobs.sum(1)).mean(), rel=1e-4)


def test_models_in_a_group_equal_the_same_model_alone(base_hp):
    # Different seeds and split sizes (padding of the shorter models), dropout on.
    hp = _hp(base_hp, dropout=0.1, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 4, epochs=3, varied_splits=True)
    group = jax_engine.fit_many(req, processes=1)
    for m in (1, 2):
        alone_req = dataclasses.replace(req, mean=req.mean[m:m + 1], std=req.std[m:m + 1],
                                        train_idx=[req.train_idx[m]], val_idx=[req.val_idx[m]],
                                        seeds=req.seeds[m:m + 1])
        alone = jax_engine.fit_many(alone_req, processes=1)
        np.testing.assert_allclose(alone.train_loss[0], group.train_loss[m], rtol=1e-5)
        np.testing.assert_allclose(alone.val_loss[0], group.val_loss[m], rtol=1e-5)
        for a, b in zip(alone.weights[0], group.weights[m]):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(group.train_loss[0], group.train_loss[1])


@pytest.mark.slow
def test_two_processes_give_the_same_models_as_one(base_hp):
    hp = _hp(base_hp, dropout=0.1, clr_base_lr=1e-3, clr_max_lr=1e-2, clr_step_size=4)
    req = _request(hp, 3, epochs=2)
    one = jax_engine.fit_many(req, processes=1, group_size=2)
    two = jax_engine.fit_many(req, processes=2, group_size=2)
    assert two.info["processes"] == 2 and two.info["groups"] == 2
    np.testing.assert_allclose(two.train_loss, one.train_loss, rtol=1e-5)
    for wa, wb in zip(one.weights, two.weights):
        for a, b in zip(wa, wb):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_predictions_equal_keras_predict_with_the_same_weights(base_hp):
    from soilmoisture.model.keras_model import build_model, predict_normalised

    req = _request(base_hp, 4, epochs=1)
    weights = _keras_init(base_hp, req.seeds)                        # Keras' own weights, loaded into JAX
    pred = jax_engine.predict_many(req.x, req.mean, req.std, weights, base_hp)
    assert pred.shape == (4, P, T)
    model = build_model(base_hp, F)
    for m in range(4):
        model.set_weights(weights[m])
        want = predict_normalised(model, normalise(req.x, req.mean[m], req.std[m]))
        np.testing.assert_allclose(pred[m], want, atol=1e-5)
    sel = jax_engine.predict_many(req.x, req.mean, req.std, weights, base_hp,
                                  probe_idx=[np.array([0]), np.array([1, 2]), np.array([3]), np.array([4])])
    assert sel[0].shape == (1, T) and sel[1].shape == (2, T)
    np.testing.assert_array_equal(sel[1], pred[1][[1, 2]])


def test_bad_requests_are_refused_with_the_field_named(base_hp):
    with pytest.raises(ConfigError, match="model.cell"):
        jax_engine.fit_many(_request(_hp(base_hp, cell="conv1d"), 1, epochs=1), processes=1)
    req = _request(base_hp, 2, epochs=1)
    with pytest.raises(ProtocolError, match="FitRequest.mean"):
        jax_engine.fit_many(dataclasses.replace(req, mean=req.mean[:1]), processes=1)
    with pytest.raises(ProtocolError, match=r"train_idx\[1\]"):
        jax_engine.fit_many(dataclasses.replace(req, train_idx=[req.train_idx[0], np.array([], int)]), processes=1)
    with pytest.raises(ProtocolError, match="weight shapes"):
        jax_engine.fit_many(req, processes=1, init=[jax_engine.init_weights(0, F + 1, base_hp)] * 2)


def test_models_without_validation_probes_report_nan(base_hp):
    req = _request(_hp(base_hp, dropout=0.0), 4, epochs=2)
    req.val_idx = [np.array([], int)] + req.val_idx[1:]
    res = jax_engine.fit_many(req, processes=1)
    assert np.all(np.isnan(res.val_loss[0])) and np.all(np.isfinite(res.val_loss[1:]))
    assert res.train_loss.shape == (4, 2) and np.all(np.isfinite(res.train_loss))
