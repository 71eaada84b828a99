"""The contract between the protocol and the training engines.

The protocol builds one :class:`FitRequest` for a *group* of models (fold x repeat) sharing the same
tensors; an engine returns a :class:`FitResult`. Three engines implement ``fit_many(request) -> FitResult``:

* ``soilmoisture.model.keras_engine`` — the plain per-model Keras ``fit`` loop (the reference);
* ``soilmoisture.model.jax_engine`` — many models at once (weights with a leading model axis);
* ``soilmoisture.model.native_engine`` — one C kernel call per model, one model per core (the default;
  the JAX engine's initialisation, order and dropout masks, so the same models).

Semantics every engine keeps (thesis 3.3): each model m takes one optimizer step per training probe
series per epoch (batch size ``model.batch_size``, default 1), in an order shuffled every epoch by its
own ``seeds[m]``; weights initialised from ``seeds[m]``; Adam + triangular cyclical learning rate
counted in optimizer steps across epochs; dropout after each recurrent layer; L2 on recurrent kernels;
MAE over observed target days only (``target_fill='mask'``) or with missing targets as 0 (``'zero'``,
thesis compatibility). Inputs are normalised per model: ``(x - mean[m]) / std[m]``, NaN -> 0 after.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from soilmoisture.config import Model


@dataclass
class FitRequest:
    x: np.ndarray              # (P, T, F) float32 raw features of all probes, NaN = missing
    y: np.ndarray              # (P, T) float32 target SSM (m3/m3), NaN = not observed
    mean: np.ndarray           # (M, F) per-model normalisation means (training probes only)
    std: np.ndarray            # (M, F) per-model normalisation standard deviations (> 0)
    train_idx: list[np.ndarray]  # M arrays of probe indices into P used for training
    val_idx: list[np.ndarray]    # M arrays of probe indices for validation (may be empty)
    seeds: np.ndarray          # (M,) int seeds: initialisation, shuffling, dropout
    hp: Model                  # hyperparameters (params.yaml `model`)
    epochs: int | None = None  # overrides hp.epochs when set
    y_train: np.ndarray | None = None  # optional (P, T) target used for training (known_site mode masks
                                       # the predicted period); defaults to ``y``

    @property
    def n_models(self) -> int:
        return len(self.seeds)


@dataclass
class FitResult:
    weights: list[list[np.ndarray]]   # per model, in ``keras_model.build_model(hp, F).get_weights()`` order
    train_loss: np.ndarray            # (M, epochs) mean training MAE per epoch (observed days)
    val_loss: np.ndarray              # (M, epochs) mean validation MAE per epoch (NaN if no val probes)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std with missing values set to 0 after normalisation (thesis 3.3)."""
    z = (x - mean) / std
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def clr(step: np.ndarray | int, base_lr: float, max_lr: float, step_size: int) -> np.ndarray:
    """Triangular cyclical learning rate (Smith 2017) at optimizer step ``step`` (0-based)."""
    step = np.asarray(step, dtype=np.float64)
    cycle = np.floor(1 + step / (2 * step_size))
    xx = np.abs(step / step_size - 2 * cycle + 1)
    return base_lr + (max_lr - base_lr) * np.maximum(0.0, 1 - xx)
