"""The network of thesis Table 3 in Keras 3: stacked recurrent layers -> Dense(1), sequence to sequence.

Default (params.yaml ``model``): Input(None, F) -> LSTM(16) -> Dropout(0.1) -> LSTM(16) -> Dropout(0.1)
-> Dense(1), L2 1e-4 on the recurrent kernels (thesis 3.3.2). ``cell`` may also be ``gru``, ``simplernn``
or ``conv1d`` (causal convolutions, so a day never sees its future; used by the tuning search; the
thesis tried these architectures too, 3.3.1). Keras is imported inside the functions (import ~5 s).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from soilmoisture.config import Model

# conv1d: kernel length in days (no thesis value; a week of memory per layer, growing with depth).
CONV_KERNEL_DAYS = 7


def build_model(hp: Model, n_features: int) -> Any:
    """An uncompiled ``keras.Model`` mapping (batch, days, n_features) normalised inputs to (batch, days, 1) SSM."""
    import keras

    reg = keras.regularizers.L2(hp.recurrent_l2) if hp.recurrent_l2 > 0 else None
    inp = keras.Input(shape=(None, n_features), name="features")
    h = inp
    for i in range(hp.layers):
        if hp.cell == "lstm":
            h = keras.layers.LSTM(hp.units, return_sequences=True, recurrent_regularizer=reg, name=f"lstm_{i}")(h)
        elif hp.cell == "gru":
            h = keras.layers.GRU(hp.units, return_sequences=True, recurrent_regularizer=reg, name=f"gru_{i}")(h)
        elif hp.cell == "simplernn":
            h = keras.layers.SimpleRNN(hp.units, return_sequences=True, recurrent_regularizer=reg,
                                       name=f"simplernn_{i}")(h)
        elif hp.cell == "conv1d":
            # No recurrent kernel: the L2 penalty goes on the convolution kernel instead.
            h = keras.layers.Conv1D(hp.units, CONV_KERNEL_DAYS, padding="causal", activation="tanh",
                                    kernel_regularizer=reg, name=f"conv1d_{i}")(h)
        else:  # config.py already restricts the values; a programming error if reached
            raise ValueError(f"unknown cell {hp.cell!r}")
        h = keras.layers.Dropout(hp.dropout, name=f"dropout_{i}")(h)
    out = keras.layers.Dense(1, name="ssm")(h)
    return keras.Model(inp, out, name=f"soilmoisture_{hp.cell}")


def predict_normalised(model: Any, xn: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted SSM (P, T) float32 from normalised inputs ``xn`` (P, T, F) in inference mode (no dropout)."""
    out = [np.asarray(model.predict_on_batch(xn[i:i + batch_size]))[..., 0] for i in range(0, len(xn), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32) if out else np.zeros(xn.shape[:2], np.float32)
