"""The registered LSTM applied to pixel feature cubes: compiled JAX inference with pixels as the batch axis.

Thesis 4.2 / Fig. 28 applies the trained network to every pixel's series. The first LSTM layer's input
projection is linear, so weather and static terms are projected once instead of for every pixel and day.
Prediction runs in JAX, float32, fixed-size pixel batches (one compilation, and a pixel's value does not depend
on its neighbours in the batch: windowed == whole-array maps). No file access.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.mapping.inputs import Cube, Sources, build_cube

PREDICT_THREADS = min(os.cpu_count() or 1, 4)   # concurrent compiled calls (pixel batches)
PIXEL_BATCH = 256           # pixels per compiled call (padded); one core, session 2: 128/256/512/1024 ->
                            # 3.7/4.4/2.0/3.5 M pixel-days/s (256 keeps the gate arrays in cache)


def check_mappable(features: list[str], where: str) -> None:
    """Refuse a model whose inputs do not exist at every pixel (e.g. probe soil temperature)."""
    from soilmoisture.schema import MAPPABLE_FEATURES

    bad = [f for f in features if f not in MAPPABLE_FEATURES]
    if bad:
        raise DataError(where, f"model input(s) {', '.join(bad)} do not exist at every pixel, so this model cannot "
                               "map; train the 'mappable' variant (variant.name: mappable)", field=bad[0])


@dataclass
class MapModel:
    """A trained LSTM for maps: Keras-layout weights, its feature list and normalisation statistics."""

    weights: list[np.ndarray]      # per LSTM layer kernel (F, 4H), recurrent (H, 4H), bias (4H,); Dense (H, 1), (1,)
    features: list[str]
    mean: np.ndarray               # (F,)
    std: np.ndarray                # (F,)
    name: str = "model"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_mappable(self.features, self.name)
        n = len(self.weights)
        if n < 5 or (n - 2) % 3:
            raise DataError(self.name, f"{n} weight arrays do not form stacked LSTM layers + Dense (not an LSTM?)")
        if self.weights[0].shape[0] != len(self.features):
            raise DataError(self.name, f"first kernel takes {self.weights[0].shape[0]} inputs but the feature list has "
                                       f"{len(self.features)}", field="features")

    @property
    def layers(self) -> int:
        return (len(self.weights) - 2) // 3

    @property
    def units(self) -> int:
        return int(self.weights[1].shape[0])


_FORWARD_CACHE: dict[tuple, Any] = {}


def _forward_fn(layers: int, units: int) -> Any:
    """Compiled LSTM inference over time for a pixel batch (Keras gate order i, f, c, o; no dropout)."""
    key = (layers, units)
    if key in _FORWARD_CACHE:
        return _FORWARD_CACHE[key]
    import jax
    import jax.numpy as jnp
    from jax import lax

    h = units

    def cell(z, c):
        # sigmoid(z) = (1 + tanh(z / 2)) / 2: one vectorised tanh is cheaper than XLA's logistic here
        # (measured: 4.4 vs 3.9 M pixel-days/s per core at 256 pixels per call); equal to float32 rounding.
        s = 0.5 * jnp.tanh(0.5 * z) + 0.5
        c = s[:, h:2 * h] * c + s[:, :h] * jnp.tanh(z[:, 2 * h:3 * h])
        return s[:, 3 * h:] * jnp.tanh(c), c

    def forward(wd, r0, rest, dense_w, dense_b, xd, wz, sz):
        """xd (T, B, Fd) normalised pixel features, wz (T, 4H) weather projection + bias, sz (B, 4H) static
        projection -> (T, B) SSM."""
        B = sz.shape[0]

        def step(carry, inp):
            hs, cs = carry
            x_t, w_t = inp
            z = jnp.dot(x_t, wd) + w_t[None, :] + sz + jnp.dot(hs[0], r0)
            hh, cc = cell(z, cs[0])
            new_h, new_c, u = [hh], [cc], hh
            for l, (wr, b) in enumerate(rest, start=1):
                # [input, own state] @ [W; U] as one matmul (as jax_engine's fused loop; ~10 % faster here)
                hh, cc = cell(jnp.dot(jnp.concatenate([u, hs[l]], axis=1), wr) + b[None, :], cs[l])
                new_h.append(hh)
                new_c.append(cc)
                u = hh
            return (tuple(new_h), tuple(new_c)), jnp.dot(u, dense_w)[:, 0] + dense_b[0]

        zeros = tuple(jnp.zeros((B, h), jnp.float32) for _ in range(layers))
        _, y = lax.scan(step, (zeros, zeros), (xd, wz))
        return y

    fn = jax.jit(forward)
    _FORWARD_CACHE[key] = fn
    return fn


def predict_cube(model: MapModel, cube: Cube, batch: int = PIXEL_BATCH) -> np.ndarray:
    """Predicted SSM (T, N) float32 (m3/m3) for every pixel and series day; NaN where ``cube.valid`` is False.

    Inputs are normalised as in training ((x - mean) / std, missing -> 0; thesis 3.3.1). The first layer's input
    projection is split by feature group (exact: it is linear). Pixels go in fixed batches of ``batch``
    (the last one padded) so every call has the same shapes.
    """
    import jax.numpy as jnp

    f = model.features
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    idx = {name: i for i, name in enumerate(f)}
    w = [np.asarray(a, np.float32) for a in model.weights]
    k0, r0, b0 = w[0], w[1], w[2]
    d_names = [n for n in cube.dynamic_names if n in idx]
    w_names = [n for n in cube.weather_names if n in idx]
    s_names = [n for n in cube.static_names if n in idx]
    missing = set(f) - set(d_names) - set(w_names) - set(s_names)
    if missing:
        raise DataError(model.name, f"the feature cube lacks model input(s) {', '.join(sorted(missing))}")

    def norm(x: np.ndarray, names: list[str]) -> np.ndarray:
        j = [idx[n] for n in names]
        return np.nan_to_num((x - mean[j]) / std[j], nan=0.0).astype(np.float32)

    d_sel = [cube.dynamic_names.index(n) for n in d_names]
    wz = norm(cube.weather[:, [cube.weather_names.index(n) for n in w_names]], w_names) @ k0[[idx[n] for n in w_names]]
    wz = (wz + b0[None, :]).astype(np.float32)
    sz_all = norm(cube.static[:, [cube.static_names.index(n) for n in s_names]], s_names) @ k0[[idx[n] for n in s_names]]
    wd = k0[[idx[n] for n in d_names]] if d_names else np.zeros((0, k0.shape[1]), np.float32)
    rest = [(jnp.asarray(np.concatenate([w[3 * l], w[3 * l + 1]], axis=0)), jnp.asarray(w[3 * l + 2]))
            for l in range(1, model.layers)]
    fwd = _forward_fn(model.layers, model.units)
    T, N = len(cube.dates), cube.n_pixels
    # Small windows: the next power of two (few distinct shapes, few compilations) instead of a mostly padded batch.
    batch = min(batch, 1 << max(int(N - 1).bit_length(), 6))
    out = np.empty((T, N), np.float32)
    args = (jnp.asarray(wd), jnp.asarray(r0), rest, jnp.asarray(w[-2]), jnp.asarray(w[-1]))
    wz_j = jnp.asarray(wz)
    def one(s: int) -> None:
        e = min(s + batch, N)
        xd = np.zeros((T, batch, len(d_names)), np.float32)
        xd[:, : e - s] = norm(cube.dynamic[:, s:e][:, :, d_sel], d_names)
        sz = np.zeros((batch, k0.shape[1]), np.float32)
        sz[: e - s] = sz_all[s:e]
        out[:, s:e] = np.asarray(fwd(*args, jnp.asarray(xd), wz_j, jnp.asarray(sz)))[:, : e - s]

    starts = list(range(0, N, batch))
    threads = min(PREDICT_THREADS, len(starts))
    if threads > 1:
        # XLA runs one call's small matmuls on one core; two calls at once use both (measured 1.5x on 2 cores).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, starts))
    else:
        for s in starts:
            one(s)
    out[~cube.valid] = np.nan
    return out


# ----------------------------------------------------------------------------------------------
# one window as a task for a runner worker
# ----------------------------------------------------------------------------------------------
@dataclass
class WindowJob:
    """One window's prediction as a task for a runner worker (``params.yaml`` ``runner``): plain, picklable data."""

    model: MapModel
    src: Sources                        # with no open dataset (each worker opens the files itself)
    window: Any
    series: pd.DatetimeIndex
    first: int                          # index of the first requested day in ``series``
    cube_kwargs: dict


def predict_window(job: WindowJob) -> tuple[np.ndarray, np.ndarray]:
    """(predicted SSM (D, N) of the requested days, CORINE codes (N,)) of one window, on a runner worker.

    Module-level so Dask process workers can unpickle it by name; the worker's files are closed after it.
    """
    try:
        cube = build_cube(job.src, job.window, job.series, job.model.features, **job.cube_kwargs)
        return predict_cube(job.model, cube)[job.first:], cube.landcover
    finally:
        job.src.close()


__all__ = ["MapModel", "PIXEL_BATCH", "WindowJob", "check_mappable", "predict_cube", "predict_window"]
