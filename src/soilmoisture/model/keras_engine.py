"""The reference engine: a plain per-model Keras ``fit`` loop (slow, simple, the yardstick).

Keeps the semantics of :mod:`soilmoisture.model.interface`: per model m, ``keras.utils.set_random_seed
(seeds[m])`` then a fresh network (thesis 3.3.1: re-initialised per fold); one optimizer step per
``batch_size`` training series, in an order shuffled every epoch by ``numpy.random.default_rng(seeds[m])``;
Adam with the triangular cyclical learning rate counted in optimizer steps across epochs (3.3.2);
masked MAE. ``train_loss``/``val_loss`` are the masked MAE (without the L2 term) averaged over the
epoch's series; the training value is measured with dropout active, as Keras reports it.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from soilmoisture.model.interface import FitRequest, FitResult, normalise

log = logging.getLogger(__name__)

_CLR_CLASS: Any = None
# XLA (jit_compile) makes an epoch of the thesis model ~10x faster (48 x 883 days: ~2.5 s instead of
# ~27 s on 2 busy cores) but costs ~20 s of compilation once per fit_many call: worth it only for real
# work. None = decide by the amount of work (optimizer steps x days); True/False force it.
JIT: bool | None = None
JIT_MIN_STEP_DAYS = 200_000


def epoch_orders(seed: int, n_train: int, epochs: int) -> list[np.ndarray]:
    """The per-epoch order of the training series (positions into ``train_idx``) for a model's seed."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_train) for _ in range(epochs)]


def masked_mae(y_true: Any, y_pred: Any) -> Any:
    """Per-series MAE (batch,) over days whose target is finite (missing days do not count; thesis defect fixed)."""
    from keras import ops

    mask = ops.cast(ops.isfinite(y_true), y_pred.dtype)
    y0 = ops.where(ops.isfinite(y_true), y_true, ops.zeros_like(y_true))
    err = ops.abs(y0 - y_pred) * mask
    axes = tuple(range(1, len(y_pred.shape)))
    return ops.sum(err, axis=axes) / ops.maximum(ops.sum(mask, axis=axes), 1.0)


def triangular_clr(base_lr: float, max_lr: float, step_size: int) -> Any:
    """A Keras LearningRateSchedule: triangular cyclical rate (Smith 2017) at optimizer step (0-based)."""
    global _CLR_CLASS
    import keras
    from keras import ops

    if _CLR_CLASS is None:
        @keras.saving.register_keras_serializable(package="soilmoisture")
        class TriangularCLR(keras.optimizers.schedules.LearningRateSchedule):
            def __init__(self, base_lr: float, max_lr: float, step_size: int) -> None:
                self.base_lr, self.max_lr, self.step_size = float(base_lr), float(max_lr), int(step_size)

            def __call__(self, step: Any) -> Any:
                s = ops.cast(step, "float32")
                cycle = ops.floor(1.0 + s / (2.0 * self.step_size))
                xx = ops.abs(s / self.step_size - 2.0 * cycle + 1.0)
                return self.base_lr + (self.max_lr - self.base_lr) * ops.maximum(0.0, 1.0 - xx)

            def get_config(self) -> dict:
                return {"base_lr": self.base_lr, "max_lr": self.max_lr, "step_size": self.step_size}

        _CLR_CLASS = TriangularCLR
    return _CLR_CLASS(base_lr, max_lr, step_size)


def compile_model(model: Any, hp: Any, jit: bool = False) -> None:
    """Adam (thesis 3.3.2: beta 0.9/0.999, eps 1e-7) + CLR, masked MAE loss and the masked MAE metric."""
    import keras

    opt = keras.optimizers.Adam(learning_rate=triangular_clr(hp.clr_base_lr, hp.clr_max_lr, hp.clr_step_size),
                                beta_1=hp.adam_beta_1, beta_2=hp.adam_beta_2, epsilon=hp.adam_epsilon)
    model.compile(optimizer=opt, loss=masked_mae,
                  metrics=[keras.metrics.MeanMetricWrapper(masked_mae, name="masked_mae")], jit_compile=jit)


def training_targets(y: np.ndarray, target_fill: str) -> np.ndarray:
    """Targets the loss sees: NaN (masked out of the loss) or, for ``'zero'``, missing days as 0 m3/m3.

    ``'zero'`` is thesis compatibility only (3.3.1 trained on zero-filled targets; DESIGN.md calls it a defect).
    """
    return np.nan_to_num(y, nan=0.0) if target_fill == "zero" else y


def _reinitialise(model: Any, hp: Any, n_features: int, seed: int) -> None:
    """Give the compiled ``model`` the state of a freshly built, freshly compiled one for ``seed``.

    Same result as building and compiling a new model (the thesis re-initialises per fold, 3.3.1), but
    the traced training function is reused: tracing the recurrent loop costs seconds per new model.
    """
    import keras

    from soilmoisture.model.keras_model import build_model

    keras.utils.set_random_seed(seed)
    fresh = build_model(hp, n_features)
    model.set_weights(fresh.get_weights())
    # Dropout draws its masks from per-layer seed generators: restart them as a new model would.
    for lp, lf in zip(model._flatten_layers(), fresh._flatten_layers()):
        for gp, gf in zip(getattr(lp, "_seed_generators", []), getattr(lf, "_seed_generators", [])):
            gp.state.assign(gf.state.value)
    # A new Adam: step counter (drives the CLR) and moment estimates back to zero.
    for v in model.optimizer.variables:
        v.assign(np.zeros(v.shape, dtype=v.dtype))


def fit_many(req: FitRequest) -> FitResult:
    """Train every model of ``req`` one after the other; weights in ``build_model(...).get_weights()`` order."""
    import keras

    from soilmoisture.model.keras_model import build_model

    t0 = time.perf_counter()
    hp = req.hp
    F = req.x.shape[-1]
    epochs = req.epochs or hp.epochs
    y_fit = training_targets(req.y if req.y_train is None else req.y_train, hp.target_fill)
    M = req.n_models
    weights: list[list[np.ndarray]] = []
    train_loss = np.full((M, epochs), np.nan)
    val_loss = np.full((M, epochs), np.nan)
    step_days = sum(-(-len(t) // hp.batch_size) for t in req.train_idx) * epochs * req.x.shape[1]
    jit = JIT if JIT is not None else step_days >= JIT_MIN_STEP_DAYS
    model = build_model(hp, F)
    compile_model(model, hp, jit=jit)
    for m in range(M):
        seed = int(req.seeds[m])
        _reinitialise(model, hp, F, seed)
        tr, va = np.asarray(req.train_idx[m]), np.asarray(req.val_idx[m])
        xt = normalise(req.x[tr], req.mean[m], req.std[m])
        yt = y_fit[tr][..., None].astype(np.float32)
        val = None
        if len(va):
            val = (normalise(req.x[va], req.mean[m], req.std[m]), req.y[va][..., None].astype(np.float32))
        for e, order in enumerate(epoch_orders(seed, len(tr), epochs)):
            h = model.fit(xt[order], yt[order], batch_size=hp.batch_size, epochs=1, shuffle=False, verbose=0,
                          validation_data=val, validation_batch_size=hp.batch_size)
            train_loss[m, e] = h.history["masked_mae"][-1]
            if val is not None:
                val_loss[m, e] = h.history["val_masked_mae"][-1]
        weights.append([np.asarray(w) for w in model.get_weights()])
        log.info("keras engine: model %d/%d (seed %d) trained, train MAE %.4f", m + 1, M, seed, train_loss[m, -1])
    return FitResult(weights=weights, train_loss=train_loss, val_loss=val_loss, seconds=time.perf_counter() - t0,
                     info={"engine": "keras", "jit_compile": jit})
