"""The Keras network (thesis Table 3) and the reference engine: loss, masking, seeds, schedule."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from soilmoisture.model.interface import FitRequest, clr


@pytest.fixture(scope="module")
def hp():
    from soilmoisture import config
    from conftest import ROOT

    return config.load(ROOT / "params.yaml").model


def _data(P: int = 6, T: int = 40, F: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(P, T, F)).astype(np.float32)
    y = (0.25 + 0.05 * np.tanh(x[..., 0] + 0.5 * x[..., 1])).astype(np.float32)
    y[rng.random((P, T)) < 0.3] = np.nan
    return x, y


def _request(x, y, hp, seeds, train, val, epochs) -> FitRequest:
    M, F = len(seeds), x.shape[-1]
    return FitRequest(x=x, y=y, mean=np.zeros((M, F), np.float32), std=np.ones((M, F), np.float32),
                      train_idx=[np.asarray(t) for t in train], val_idx=[np.asarray(v) for v in val],
                      seeds=np.asarray(seeds), hp=hp, epochs=epochs)


def test_network_is_the_thesis_architecture(hp):
    import keras

    from soilmoisture.model.keras_model import build_model

    m = build_model(hp, 10)
    kinds = [type(layer).__name__ for layer in m.layers[1:]]
    assert kinds == ["LSTM", "Dropout", "LSTM", "Dropout", "Dense"]
    assert all(layer.units == 16 for layer in m.layers if isinstance(layer, keras.layers.LSTM))
    assert all(layer.rate == pytest.approx(0.1) for layer in m.layers if isinstance(layer, keras.layers.Dropout))
    lstm = m.layers[1]
    assert lstm.return_sequences and lstm.cell.recurrent_regularizer.l2 == pytest.approx(1e-4)
    assert m(np.zeros((1, 37, 10), np.float32)).shape == (1, 37, 1)  # sequence to sequence, any length


@pytest.mark.parametrize("cell", ["gru", "simplernn", "conv1d"])
def test_other_cells_build_and_conv1d_never_sees_the_future(hp, cell):
    from soilmoisture.model.keras_model import build_model

    m = build_model(dataclasses.replace(hp, cell=cell), 3)
    x = np.random.default_rng(1).normal(size=(1, 40, 3)).astype(np.float32)
    y1 = np.asarray(m(x))
    x2 = x.copy()
    x2[:, 20:] += 5.0  # change only the future of day 19
    y2 = np.asarray(m(x2))
    assert y1.shape == (1, 40, 1)
    np.testing.assert_allclose(y1[:, :20], y2[:, :20], atol=1e-6)  # causal: no cell looks ahead


def test_cyclical_rate_is_triangular_between_base_and_max(hp):
    from soilmoisture.model.keras_engine import triangular_clr

    sched = triangular_clr(1e-6, 2e-3, 250)
    steps = np.array([0, 125, 250, 375, 500, 750])
    got = np.array([float(sched(s)) for s in steps])
    np.testing.assert_allclose(got, clr(steps, 1e-6, 2e-3, 250), rtol=1e-5)
    np.testing.assert_allclose(got[[0, 2, 4, 5]], [1e-6, 2e-3, 1e-6, 2e-3], rtol=1e-5)


def test_masked_loss_ignores_missing_days():
    from soilmoisture.model.keras_engine import masked_mae

    y_true = np.array([[[0.2], [np.nan], [0.4]]], np.float32)
    y_pred = np.array([[[0.1], [5.0], [0.5]]], np.float32)  # day 2 would dominate if it counted
    assert float(np.asarray(masked_mae(y_true, y_pred))[0]) == pytest.approx(0.1, abs=1e-6)
    # the thesis' zero-filled target (compatibility option) counts it: (0.1 + 5.0 + 0.1) / 3
    zero = np.nan_to_num(y_true)
    assert float(np.asarray(masked_mae(zero, y_pred))[0]) == pytest.approx(5.2 / 3, abs=1e-5)


def test_engine_loss_falls_seeds_reproduce_and_models_train_independently(hp):
    from soilmoisture.model import keras_engine

    fast = dataclasses.replace(hp, clr_step_size=4, clr_base_lr=1e-3, clr_max_lr=1e-2)
    x, y = _data()
    tr, va = [0, 1, 2, 3, 4], [5]
    res = keras_engine.fit_many(_request(x, y, fast, [7, 11, 7], [tr, [1, 2, 3], tr], [va, [0], va], epochs=4))
    assert res.train_loss.shape == (3, 4) and np.isfinite(res.val_loss).all()
    assert res.train_loss[0, -1] < res.train_loss[0, 0]          # training loss falls
    np.testing.assert_array_equal(res.train_loss[0], res.train_loss[2])  # same seed, same data -> same run
    for a, b in zip(res.weights[0], res.weights[2]):
        np.testing.assert_array_equal(a, b)
    alone = keras_engine.fit_many(_request(x, y, fast, [11], [[1, 2, 3]], [[0]], epochs=4))
    np.testing.assert_allclose(alone.train_loss[0], res.train_loss[1], rtol=1e-6)  # no state leaks between models
    for a, b in zip(alone.weights[0], res.weights[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_zero_fill_option_trains_on_missing_targets_as_zero():
    from soilmoisture.model.keras_engine import training_targets

    y = np.array([[0.2, np.nan, 0.4]], np.float32)
    np.testing.assert_array_equal(training_targets(y, "zero"), np.array([[0.2, 0.0, 0.4]], np.float32))
    masked = training_targets(y, "mask")
    assert np.isnan(masked[0, 1]) and masked[0, 0] == np.float32(0.2)
    assert np.isnan(y[0, 1])  # input untouched
