"""Many-models-at-once training engine in JAX (same per-model semantics as the plain Keras loop).

The thesis protocol (3.3, 4.2) trains 61 folds x 10 repeats = 610 small LSTMs for 20 epochs with batch
size 1: one optimizer step per probe series. Trained one model at a time with Keras ``fit`` that is about
a day on two cores, because every step is a tiny 883-day recurrent loop dominated by per-op overhead.
This engine keeps each model's semantics (own seed, split, initialisation, shuffled order, Adam state,
cyclical learning rate, dropout) but stacks a *group* of models along a leading model axis and compiles
one optimizer step for the whole group (``jax.jit`` + ``lax.scan``), following STACK-NOTES "Training many
small models at once":

* the input projection of all days is one matmul before the time loop;
* the four LSTM gates are one fused matrix (Keras layout, gate order i, f, c, o);
* the recurrent step is a batched matmul ``einsum('mbh,mhg->mbg')`` with the model axis first;
* all layers advance in one time loop (half the loop iterations: per-day cost here is loop overhead);
* small groups (default 8 models) per call and one process per core (default 2, ``spawn``).

Gradients come from ``jax.value_and_grad`` through ``lax.scan`` (backprop through time); the tests check
them against one-loop-per-layer variants (autodiff and a hand-written backward) and one Adam step against
a Keras train step. Weights are returned in the Keras layout of
``keras_model.build_model(hp, F).get_weights()``: per LSTM layer kernel (F, 4H), recurrent_kernel (H, 4H),
bias (4H,), then Dense kernel (H, 1) and bias (1,).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from soilmoisture.config import Model
from soilmoisture.errors import ConfigError, ProtocolError
from soilmoisture.model.interface import FitRequest, FitResult, normalise

log = logging.getLogger(__name__)

SUPPORTED_CELLS = ("lstm",)
DEFAULT_GROUP_SIZE = 8          # models per compiled call (STACK-NOTES: ~8 beats one huge batch)
DEFAULT_PROCESSES = 2           # one process per core on the 2-core reference machine
ENV_PROCESSES = "SOILMOISTURE_JAX_PROCESSES"
ENV_GROUP_SIZE = "SOILMOISTURE_JAX_GROUP_SIZE"
ENV_THREADS = "SOILMOISTURE_JAX_SINGLE_THREAD"  # "0" keeps XLA's default threading in worker processes
# One XLA CPU thread per worker process: with one process per core the workers must not fight for cores.
UNROLL = 1                      # lax.scan unroll: 2, 4 and 8 were not faster here (measured)
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


# --------------------------------------------------------------------------------------------------
# Initialisation (Keras defaults), on the host with numpy so it is independent of the group
# --------------------------------------------------------------------------------------------------
def _glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def _orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Keras ``Orthogonal`` for a (rows, cols) matrix: QR of a normal matrix, sign-corrected."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(rows, cols).astype(np.float32)


def init_weights(seed: int, n_features: int, hp: Model) -> list[np.ndarray]:
    """Keras-default initial weights for one model, in ``build_model(hp, F).get_weights()`` order.

    LSTM kernel glorot_uniform, recurrent kernel orthogonal, bias zeros with the forget-gate block at 1
    (``unit_forget_bias``); Dense glorot_uniform / zeros. The draws come from ``seed`` alone, so a model's
    start does not depend on the group it is trained in (Keras' own random stream cannot be reproduced).
    """
    _check_cell(hp)
    rng = np.random.default_rng([int(seed), 0])
    h = hp.units
    weights: list[np.ndarray] = []
    fan_in = n_features
    for _ in range(hp.layers):
        kernel = _glorot_uniform(rng, fan_in, 4 * h)
        recurrent = _orthogonal(rng, h, 4 * h)
        bias = np.zeros(4 * h, np.float32)
        bias[h:2 * h] = 1.0  # unit_forget_bias: gate order i, f, c, o
        weights += [kernel, recurrent, bias]
        fan_in = h
    weights += [_glorot_uniform(rng, h, 1), np.zeros(1, np.float32)]
    return weights


def epoch_orders(seed: int, n_train: int, epochs: int) -> list[np.ndarray]:
    """The per-epoch order of the training series (positions into ``train_idx``) for a model's seed.

    The same stream as ``keras_engine.epoch_orders``, so both engines see the series in the same order.
    """
    rng = np.random.default_rng(int(seed))
    return [rng.permutation(n_train) for _ in range(epochs)]


def _check_cell(hp: Model) -> None:
    if hp.cell not in SUPPORTED_CELLS:
        raise ConfigError("model.cell", f"{hp.cell!r} is not supported by the jax engine "
                          f"(supported: {', '.join(SUPPORTED_CELLS)}); use protocol.engine: keras")
    if hp.loss != "mae":
        raise ConfigError("model.loss", f"{hp.loss!r} is not supported by the jax engine (only 'mae')")


# --------------------------------------------------------------------------------------------------
# The compiled core (jax imported lazily; built once per process and hyperparameter set)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Static:
    """What shapes the compiled program; everything else (rates, betas, L2) is a runtime argument, so
    changing a hyperparameter (e.g. in tuning) does not recompile."""

    layers: int
    units: int
    dropout_on: bool
    zero_fill: bool
    # Measured on 2 cores (8 models, 883 days, CPU time per optimizer step): all layers in one time loop
    # with jax.grad ~21 ms; one loop per layer ~23-27 ms with jax.grad, ~24-30 ms with the hand-written
    # backward. The per-layer variants stay as cross-checks in the tests.
    fused: bool = True          # all layers in one time loop (jax.grad through lax.scan)
    hand_vjp: bool = False      # per-layer loops only: hand-written backprop through time

    @classmethod
    def from_hp(cls, hp: Model) -> "_Static":
        return cls(hp.layers, hp.units, hp.dropout > 0, hp.target_fill == "zero")


# Positions in the runtime hyperparameter vector. Complements (1 - beta) and the CLR span are computed in
# float64 on the host, as Keras does with its Python-float constants.
_HYPER = ("dropout", "l2", "beta_1", "beta_2", "one_minus_beta_1", "one_minus_beta_2", "epsilon",
          "base_lr", "lr_span", "step_size")


def _hyper(hp: Model) -> np.ndarray:
    vals = {"dropout": hp.dropout, "l2": hp.recurrent_l2, "beta_1": hp.adam_beta_1, "beta_2": hp.adam_beta_2,
            "one_minus_beta_1": 1.0 - hp.adam_beta_1, "one_minus_beta_2": 1.0 - hp.adam_beta_2,
            "epsilon": hp.adam_epsilon, "base_lr": hp.clr_base_lr, "lr_span": hp.clr_max_lr - hp.clr_base_lr,
            "step_size": float(hp.clr_step_size)}
    return np.array([vals[k] for k in _HYPER], np.float32)


_CORE_CACHE: dict[_Static, dict] = {}
ENV_JAX_CACHE = "SOILMOISTURE_JAX_CACHE"   # persistent compilation cache folder ("off" disables it)


def _persistent_cache() -> None:
    """Keep compiled executables across processes and runs (JAX persistent compilation cache) in the
    project's git-ignored cache folder (``native_build.cache_root()/jax``, or $SOILMOISTURE_JAX_CACHE)."""
    import jax

    from soilmoisture.model.native_build import cache_root

    where = os.environ.get(ENV_JAX_CACHE) or str(cache_root() / "jax")
    if where == "off" or jax.config.jax_compilation_cache_dir:
        return
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:
        log.warning("jax engine: no persistent compilation cache (%s: %s)", where, e)
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def clr_jax(step, base_lr: float, max_lr: float, step_size: int):  # noqa: ANN001, ANN201 - jax arrays
    """Triangular cyclical learning rate in JAX (same formula as ``interface.clr``, float32 like Keras)."""
    return _clr(step, base_lr, max_lr - base_lr, step_size)


def _clr(step, base_lr, span, step_size):  # noqa: ANN001, ANN202 - jax arrays
    import jax.numpy as jnp

    step = jnp.asarray(step, jnp.float32)
    cycle = jnp.floor(1 + step / (2 * step_size))
    xx = jnp.abs(step / step_size - 2 * cycle + 1)
    return base_lr + span * jnp.maximum(0.0, 1 - xx)


def _dropout_key(seed: int) -> np.ndarray:
    """Two uint32 words of a model's dropout stream, from its seed alone."""
    return np.random.SeedSequence([int(seed) % 2**63, 2]).generate_state(2).astype(np.uint32)


def _fmix32(x):  # noqa: ANN001, ANN202 - jax uint32 arrays
    """MurmurHash3 finaliser: a cheap, well-mixing uint32 -> uint32 hash (for dropout masks)."""
    import jax.numpy as jnp

    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _lstm_recurrence(h: int, hand_vjp: bool = True):  # noqa: ANN202 - returns a jax function
    """``recur(zx, r) -> hs``: the LSTM time loop given the input projection ``zx`` (T, M, B, 4H) and the
    recurrent kernels ``r`` (M, H, 4H); zero initial state; Keras gate order i, f, c, o.

    With ``hand_vjp`` the backward pass is written by hand (backprop through time): the reverse loop only
    carries dh/dc and does one batched matmul per day, and the recurrent-kernel gradient is one matmul over
    all days after the loop, instead of autodiff's per-day accumulation. ``hand_vjp=False`` is plain
    ``jax.grad`` through ``lax.scan``; the tests check both give the same gradients.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    def gates(z):
        s = jax.nn.sigmoid(z)
        return s[..., :h], s[..., h:2 * h], jnp.tanh(z[..., 2 * h:3 * h]), s[..., 3 * h:]

    def run(zx, r, keep_c):
        # Each scan output costs ~1.6 us per day on XLA CPU (measured): h and c leave as one array.
        def step(carry, z_t):
            hh, cc = carry
            i, f, g, o = gates(z_t + jnp.einsum("mbh,mhg->mbg", hh, r))
            cc = f * cc + i * g
            hh = o * jnp.tanh(cc)
            return (hh, cc), (jnp.concatenate([hh, cc], axis=-1) if keep_c else hh)

        zeros = jnp.zeros(zx.shape[1:3] + (h,), zx.dtype)
        return lax.scan(step, (zeros, zeros), zx, unroll=UNROLL)[1]

    if not hand_vjp:
        return lambda zx, r: run(zx, r, False)

    @jax.custom_vjp
    def recur(zx, r):
        return run(zx, r, False)

    def fwd(zx, r):
        hc = run(zx, r, True)
        return hc[..., :h], (zx, hc, r)

    def bwd(res, dhs):
        zx, hc, r = res
        hs, cs = hc[..., :h], hc[..., h:]
        h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]], axis=0)
        c_prev = jnp.concatenate([jnp.zeros_like(cs[:1]), cs[:-1]], axis=0)
        # Everything that does not depend on the backward carry is computed for all days at once,
        # so the reverse loop holds one batched matmul and a few multiplications.
        i, f, g, o = gates(zx + jnp.einsum("tmbh,mhg->tmbg", h_prev, r))
        tc = jnp.tanh(cs)
        packed = jnp.concatenate([dhs, o * (1 - tc * tc), f, tc * o * (1 - o), g * i * (1 - i),
                                  c_prev * f * (1 - f), i * (1 - g * g)], axis=-1)   # (T, M, B, 7H)

        def step(carry, p_t):
            dh_next, dc_next = carry
            dh = p_t[..., :h] + dh_next
            dc = dc_next + dh * p_t[..., h:2 * h]
            dz = jnp.concatenate([dc * p_t[..., 4 * h:5 * h], dc * p_t[..., 5 * h:6 * h],
                                  dc * p_t[..., 6 * h:], dh * p_t[..., 3 * h:4 * h]], axis=-1)
            return (jnp.einsum("mbg,mgh->mbh", dz, r_t), dc * p_t[..., 2 * h:3 * h]), dz

        r_t = jnp.swapaxes(r, 1, 2)     # transposed once, not inside the loop
        zeros = jnp.zeros(hs.shape[1:], hs.dtype)
        _, dzs = lax.scan(step, (zeros, zeros), packed, reverse=True, unroll=UNROLL)
        dr = jnp.einsum("tmbh,tmbg->mhg", h_prev, dzs)
        return dzs, dr

    recur.defvjp(fwd, bwd)
    return recur


def _core(st: _Static) -> dict:
    """Compiled functions for one hyperparameter set: ``epoch`` (train), ``loss`` (eval), ``predict``."""
    if st in _CORE_CACHE:
        return _CORE_CACHE[st]
    _persistent_cache()
    import jax
    import jax.numpy as jnp
    from jax import lax

    h = st.units

    recur = _lstm_recurrence(h, hand_vjp=st.hand_vjp)

    def forward_layers(params, x, masks):
        """x (M, B, T, F) normalised -> prediction (T, M, B); ``masks`` per layer (T, M, B, H) or None."""
        u = None
        for layer, (w, r, b) in enumerate(params["lstm"]):
            # Input projection for all days at once (one matmul), time-major for the scan.
            if layer == 0:
                zx = jnp.einsum("mbtf,mfg->tmbg", x, w)
            else:
                zx = jnp.einsum("tmbh,mhg->tmbg", u, w)
            u = recur(zx + b[None, :, None, :], r)              # (T, M, B, H)
            if masks is not None:
                u = u * masks[layer]                            # Dropout after each recurrent layer
        wd, bd = params["dense"]
        return jnp.einsum("tmbh,mho->tmbo", u, wd)[..., 0] + bd[None, :, None, 0]

    def forward_fused(params, x, masks):
        """Same as forward_layers, with every layer advanced in one time loop (half the loop iterations)."""
        lstm = params["lstm"]
        w0, r0, b0 = lstm[0]
        zx = jnp.einsum("mbtf,mfg->tmbg", x, w0) + b0[None, :, None, :]
        # Layer l > 0: [dropped input, own state] @ [W; U] as one batched matmul per day.
        wu = [jnp.concatenate([w, r], axis=1) for w, r, _ in lstm[1:]]
        bs = [b[:, None, :] for _, _, b in lstm[1:]]

        def cell(z, cc):
            s_ = jax.nn.sigmoid(z)
            cc = s_[..., h:2 * h] * cc + s_[..., :h] * jnp.tanh(z[..., 2 * h:3 * h])
            return s_[..., 3 * h:] * jnp.tanh(cc), cc

        def step(carry, inp):
            hs, cs = carry
            z_t, m_t = inp
            new_h, new_c = [], []
            hh, cc = cell(z_t + jnp.einsum("mbh,mhg->mbg", hs[0], r0), cs[0])
            new_h.append(hh)
            new_c.append(cc)
            u = hh * m_t[0] if masks is not None else hh
            for l in range(1, len(lstm)):
                z = jnp.einsum("mbk,mkg->mbg", jnp.concatenate([u, hs[l]], axis=-1), wu[l - 1]) + bs[l - 1]
                hh, cc = cell(z, cs[l])
                new_h.append(hh)
                new_c.append(cc)
                u = hh * m_t[l] if masks is not None else hh
            return (tuple(new_h), tuple(new_c)), u

        zeros = tuple(jnp.zeros(zx.shape[1:3] + (h,), zx.dtype) for _ in lstm)
        mseq = jnp.stack(masks, axis=1) if masks is not None else jnp.zeros((zx.shape[0], 1), zx.dtype)
        _, u = lax.scan(step, (zeros, zeros), (zx, mseq), unroll=UNROLL)
        wd, bd = params["dense"]
        return jnp.einsum("tmbh,mho->tmbo", u, wd)[..., 0] + bd[None, :, None, 0]

    forward = forward_fused if st.fused else forward_layers

    def series_mae(pred, y, obs):
        """Per-series MAE (M, B) over observed days (mask) or all days with NaN as 0 (zero)."""
        err = jnp.abs(pred - y) * obs
        return err.sum(0) / jnp.maximum(obs.sum(0), 1.0)

    def targets(y, zero_fill):
        """(M, B, T) raw targets -> time-major filled targets and day weights."""
        y = jnp.transpose(y, (2, 0, 1))
        obs = jnp.isfinite(y)
        yf = jnp.where(obs, y, 0.0)
        w = jnp.ones_like(yf) if zero_fill else obs.astype(yf.dtype)
        return yf, w

    def data_loss(params, x, y, sw, masks, zero_fill=False):
        """Mean over the step's real series of per-series MAE -> (M,)."""
        yf, w = targets(y, zero_fill)
        per = series_mae(forward(params, x, masks), yf, w)
        return (per * sw).sum(1) / jnp.maximum(sw.sum(1), 1.0)

    def total_loss(params, x, y, sw, masks, l2_rate):
        # target_fill 'zero' (thesis compatibility): missing targets count as 0 m3/m3 in the training loss.
        dl = data_loss(params, x, y, sw, masks, st.zero_fill)
        # Keras adds the regulariser to the loss: l2 * sum(W_rec^2) per recurrent kernel (thesis Table 3).
        l2 = sum(jnp.sum(r * r, axis=(1, 2)) for _, r, _ in params["lstm"]) * l2_rate
        # Summing over models keeps the gradients independent: parameters are disjoint along the model axis.
        return jnp.sum(dl + l2), dl

    grad_fn = jax.value_and_grad(total_loss, has_aux=True)

    def epoch(state, xn, y, order, sw, keys, hyper):
        """One epoch for a group. order/sw (S, M, B): probe index and 1/0 real-series weight per step."""
        n_models = xn.shape[0]
        midx = jnp.arange(n_models)[:, None]
        hv = {k: hyper[i] for i, k in enumerate(_HYPER)}

        def body(state, inp):
            params, mom, vel, count = state
            idx, w = inp
            x = xn[midx, idx]                                   # (M, B, T, F) each model's own series
            yy = y[idx]                                         # (M, B, T)
            active = w.sum(1) > 0                               # padded steps leave a model untouched
            masks = None
            if st.dropout_on:
                # Dropout masks from a counter-based hash of (model key, step count, layer, day, series, unit):
                # threefry cost ~20 % of a step and ~10 s of compilation here; a hash is enough for dropout
                # and depends on the model's own key and step only (group-independent).
                shape = (st.layers, x.shape[2], x.shape[1], h)  # (L, T, B, H) per model
                n = int(np.prod(shape))
                salt = _fmix32(count.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) ^ keys[:, 1])  # (M,)
                idx = lax.iota(jnp.uint32, n)[None, :]
                bits = _fmix32(idx * jnp.uint32(0x9E3779B1) + salt[:, None] + keys[:, :1])
                u = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
                keep = (u >= hv["dropout"]).astype(jnp.float32) / (1.0 - hv["dropout"])
                keep = keep.reshape((-1,) + shape)              # (M, L, T, B, H)
                masks = [jnp.transpose(keep[:, l], (1, 0, 2, 3)) for l in range(st.layers)]
            (_, dl), grads = grad_fn(params, x, yy, w, masks, hv["l2"])
            # Adam exactly as Keras 3 writes it, learning rate from the CLR at the model's own step count.
            lr = _clr(count, hv["base_lr"], hv["lr_span"], hv["step_size"])
            t = (count + 1).astype(jnp.float32)
            alpha = lr * jnp.sqrt(1 - hv["beta_2"] ** t) / (1 - hv["beta_1"] ** t)

            def upd(p, g, m_, v_):
                shp = (-1,) + (1,) * (p.ndim - 1)
                act = active.reshape(shp)
                m2 = m_ + (g - m_) * hv["one_minus_beta_1"]
                v2 = v_ + (g * g - v_) * hv["one_minus_beta_2"]
                p2 = p - (m2 * alpha.reshape(shp)) / (jnp.sqrt(v2) + hv["epsilon"])
                return jnp.where(act, p2, p), jnp.where(act, m2, m_), jnp.where(act, v2, v_)

            flat_p, tree = jax.tree_util.tree_flatten(params)
            flat_g = tree.flatten_up_to(grads)
            flat_m = tree.flatten_up_to(mom)
            flat_v = tree.flatten_up_to(vel)
            out = [upd(*a) for a in zip(flat_p, flat_g, flat_m, flat_v)]
            params = tree.unflatten([o[0] for o in out])
            mom = tree.unflatten([o[1] for o in out])
            vel = tree.unflatten([o[2] for o in out])
            count = count + active.astype(count.dtype)
            return (params, mom, vel, count), dl

        return lax.scan(body, state, (order, sw))

    def evaluate(params, xn, y, idx, sw):
        """Mean per-series MAE (no dropout) over observed days of each model's series idx (M, V) -> (M,).

        Validation is a metric: always over observed days, also with target_fill 'zero' (as keras_engine).
        """
        midx = jnp.arange(xn.shape[0])[:, None]
        return data_loss(params, xn[midx, idx], y[idx], sw, None)

    def predict(params, xn):
        """xn (M, P, T, F) -> (M, P, T) predictions without dropout."""
        return jnp.transpose(forward(params, xn, None), (1, 2, 0))

    core = {"epoch": jax.jit(epoch), "evaluate": jax.jit(evaluate), "predict": jax.jit(predict)}
    _CORE_CACHE[st] = core
    return core


# --------------------------------------------------------------------------------------------------
# Layout conversion between Keras weight lists and stacked parameter trees
# --------------------------------------------------------------------------------------------------
def _stack(weights_list: list[list[np.ndarray]], layers: int) -> dict:
    import jax.numpy as jnp

    def col(i: int):
        return jnp.asarray(np.stack([np.asarray(w[i], np.float32) for w in weights_list]))

    lstm = [(col(3 * l), col(3 * l + 1), col(3 * l + 2)) for l in range(layers)]
    return {"lstm": lstm, "dense": (col(3 * layers), col(3 * layers + 1))}


def _unstack(params: dict, n: int) -> list[list[np.ndarray]]:
    arrays = [np.asarray(a) for trio in params["lstm"] for a in trio] + [np.asarray(a) for a in params["dense"]]
    return [[a[m].copy() for a in arrays] for m in range(n)]


def _check_weights(weights: list[np.ndarray], n_features: int, hp: Model, where: str) -> None:
    expected = [np.shape(w) for w in init_weights(0, n_features, hp)]
    got = [np.shape(w) for w in weights]
    if got != expected:
        raise ProtocolError(f"{where}: weight shapes {got} do not match model "
                            f"({hp.layers} x {hp.cell}({hp.units}), {n_features} features): {expected}")


# --------------------------------------------------------------------------------------------------
# One group of models, in one process
# --------------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """Everything one compiled call needs, padded to the common shapes of the request."""

    mean: np.ndarray            # (G, F)
    std: np.ndarray             # (G, F)
    train_idx: list[np.ndarray]
    val_idx: list[np.ndarray]
    seeds: np.ndarray           # (G,)
    init: list[list[np.ndarray]] | None
    n_real: int                 # the first n_real models are real, the rest pad the group


def _steps_per_epoch(n_train: int, batch: int) -> int:
    return -(-n_train // batch)


def _train_group(x: np.ndarray, y: np.ndarray, y_train: np.ndarray, grp: _Group, hp: Model, epochs: int,
                 n_steps: int, n_val: int) -> tuple:
    """Train one group; returns weights, train MAE (G, E), val MAE (G, E), L2 penalty (G, E) and the wall
    and CPU seconds of each epoch (E,)."""
    import jax
    import jax.numpy as jnp

    st = _Static.from_hp(hp)
    core = _core(st)
    g = len(grp.seeds)
    b = hp.batch_size
    n_feat = x.shape[2]
    # Per-model normalisation (interface.normalise): training-probe statistics, NaN -> 0 afterwards.
    xn = jnp.asarray(np.stack([normalise(x, grp.mean[m], grp.std[m]) for m in range(g)]))
    y_tr = jnp.asarray(y_train.astype(np.float32))
    y_ev = jnp.asarray(y.astype(np.float32))
    init = grp.init or [init_weights(s, n_feat, hp) for s in grp.seeds]
    params = _stack(init, hp.layers)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = (params, zeros, jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros(g, jnp.int32))
    keys = jnp.asarray(np.stack([_dropout_key(s) for s in grp.seeds]))
    hyper = jnp.asarray(_hyper(hp))
    # Orders: (E, S, G, B) probe indices; weight 0 marks padding (shorter models, last partial batch).
    orders = np.zeros((epochs, n_steps, g, b), np.int32)
    weights = np.zeros((epochs, n_steps, g, b), np.float32)
    for m in range(g):
        tr = np.asarray(grp.train_idx[m])
        for e, pos in enumerate(epoch_orders(grp.seeds[m], len(tr), epochs)):
            perm = tr[pos]
            k = len(perm)
            flat_o = np.zeros(n_steps * b, np.int32)
            flat_w = np.zeros(n_steps * b, np.float32)
            flat_o[:k] = perm
            flat_w[:k] = 1.0
            orders[e, :, m] = flat_o.reshape(n_steps, b)
            weights[e, :, m] = flat_w.reshape(n_steps, b)
    vidx = np.zeros((g, max(n_val, 1)), np.int32)
    vw = np.zeros((g, max(n_val, 1)), np.float32)
    for m in range(g):
        k = len(grp.val_idx[m])
        vidx[m, :k] = grp.val_idx[m]
        vw[m, :k] = 1.0
    has_val = vw.sum(1) > 0
    vidx_j, vw_j = jnp.asarray(vidx), jnp.asarray(vw)
    train_loss = np.full((g, epochs), np.nan, np.float32)
    val_loss = np.full((g, epochs), np.nan, np.float32)
    l2 = np.zeros((g, epochs), np.float32)
    epoch_seconds = np.zeros(epochs)
    epoch_cpu = np.zeros(epochs)
    for e in range(epochs):
        t_e, c_e = time.perf_counter(), time.process_time()
        state, dl = core["epoch"](state, xn, y_tr, jnp.asarray(orders[e]), jnp.asarray(weights[e]), keys,
                                   hyper)
        act = weights[e].sum(2) > 0                              # (S, G)
        dl = np.asarray(dl)
        with np.errstate(invalid="ignore", divide="ignore"):
            # Keras reports the mean of the batch losses seen during the epoch (before each update).
            train_loss[:, e] = (dl * act).sum(0) / act.sum(0)
        if n_val:
            v = np.asarray(core["evaluate"](state[0], xn, y_ev, vidx_j, vw_j))
            val_loss[:, e] = np.where(has_val, v, np.nan)
        l2[:, e] = hp.recurrent_l2 * sum(np.sum(np.asarray(r) ** 2, axis=(1, 2)) for _, r, _ in state[0]["lstm"])
        epoch_seconds[e] = time.perf_counter() - t_e            # the first includes compilation
        epoch_cpu[e] = time.process_time() - c_e
    out = _unstack(state[0], g)
    n = grp.n_real
    return out[:n], train_loss[:n], val_loss[:n], l2[:n], epoch_seconds, epoch_cpu


# Worker-process globals (set once by the pool initializer: the probe tensors are shared by all groups).
_W: dict = {}


def _worker_init(x: np.ndarray, y: np.ndarray, y_train: np.ndarray, single_thread: bool) -> None:
    if single_thread:
        # Must be set before jax is imported in this fresh (spawned) process.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA_FLAGS).strip()
    _W.update(x=x, y=y, y_train=y_train)


def _worker_run(args: tuple) -> tuple:
    grp, hp, epochs, n_steps, n_val = args
    return _train_group(_W["x"], _W["y"], _W["y_train"], grp, hp, epochs, n_steps, n_val)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"environment variable must be an integer, got {raw!r}") from None
    if value < 1:
        raise ConfigError(name, f"environment variable must be >= 1, got {value}")
    return value


def _validate(req: FitRequest) -> None:
    _check_cell(req.hp)
    x, y = req.x, req.y
    if x.ndim != 3:
        raise ProtocolError(f"FitRequest.x: expected (probes, days, features), got shape {x.shape}")
    p, t, f = x.shape
    if y.shape != (p, t):
        raise ProtocolError(f"FitRequest.y: expected shape {(p, t)}, got {y.shape}")
    if req.y_train is not None and req.y_train.shape != (p, t):
        raise ProtocolError(f"FitRequest.y_train: expected shape {(p, t)}, got {req.y_train.shape}")
    m = req.n_models
    if m < 1:
        raise ProtocolError("FitRequest.seeds: no model to train")
    for name in ("mean", "std"):
        arr = getattr(req, name)
        if arr.shape != (m, f):
            raise ProtocolError(f"FitRequest.{name}: expected shape {(m, f)}, got {arr.shape}")
    if not np.all(req.std > 0):
        raise ProtocolError("FitRequest.std: every standard deviation must be > 0")
    if len(req.train_idx) != m or len(req.val_idx) != m:
        raise ProtocolError(f"FitRequest.train_idx/val_idx: need {m} arrays each, got "
                            f"{len(req.train_idx)} / {len(req.val_idx)}")
    for i, idx in enumerate(req.train_idx):
        if len(idx) == 0:
            raise ProtocolError(f"FitRequest.train_idx[{i}]: model {i} has no training probe")
    for name, lists in (("train_idx", req.train_idx), ("val_idx", req.val_idx)):
        for i, idx in enumerate(lists):
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= p):
                raise ProtocolError(f"FitRequest.{name}[{i}]: probe index out of range [0, {p})")


def fit_many(req: FitRequest, *, processes: int | None = None, group_size: int | None = None,
             init: list[list[np.ndarray]] | None = None) -> FitResult:
    """Train all models of ``req`` in groups of ``group_size`` (env SOILMOISTURE_JAX_GROUP_SIZE, default 8)
    on ``processes`` worker processes (env SOILMOISTURE_JAX_PROCESSES, default 2; 1 = in this process).

    ``init`` optionally gives each model's starting weights (Keras layout), e.g. to warm-start or to
    compare with another engine from the same start; by default they are drawn from ``req.seeds``.
    """
    t0 = time.perf_counter()
    _validate(req)
    hp = req.hp
    epochs = int(req.epochs or hp.epochs)
    m_total = req.n_models
    n_feat = req.x.shape[2]
    if init is not None:
        if len(init) != m_total:
            raise ProtocolError(f"fit_many(init=...): need {m_total} weight lists, got {len(init)}")
        for i, w in enumerate(init):
            _check_weights(w, n_feat, hp, f"fit_many(init[{i}])")
    processes = processes or _env_int(ENV_PROCESSES, DEFAULT_PROCESSES)
    gsize = min(group_size or _env_int(ENV_GROUP_SIZE, DEFAULT_GROUP_SIZE), m_total)
    # Common shapes across all groups: one compilation per process.
    n_steps = max(_steps_per_epoch(len(t), hp.batch_size) for t in req.train_idx)
    n_val = max(len(v) for v in req.val_idx)
    groups: list[_Group] = []
    for start in range(0, m_total, gsize):
        ids = list(range(start, min(start + gsize, m_total)))
        n_real = len(ids)
        ids += [ids[0]] * (gsize - n_real)  # pad the last group with copies (results discarded)
        groups.append(_Group(
            mean=np.asarray(req.mean, np.float32)[ids], std=np.asarray(req.std, np.float32)[ids],
            train_idx=[np.asarray(req.train_idx[i]) for i in ids], val_idx=[np.asarray(req.val_idx[i]) for i in ids],
            seeds=np.asarray(req.seeds)[ids], init=None if init is None else [init[i] for i in ids], n_real=n_real))
    x = np.asarray(req.x, np.float32)
    y = np.asarray(req.y, np.float32)
    y_train = y if req.y_train is None else np.asarray(req.y_train, np.float32)
    processes = min(processes, len(groups))
    if processes > 1:
        import multiprocessing as mp

        if mp.current_process().daemon:
            # e.g. inside a Dask/Prefect process worker: daemonic processes cannot have children.
            log.warning("jax engine: running in a daemonic process; training the groups in-process")
            processes = 1
    log.info("jax engine: %d models, %d epochs, %d groups of %d, %d process(es)",
             m_total, epochs, len(groups), gsize, processes)
    jobs = [(g, hp, epochs, n_steps, n_val) for g in groups]
    if processes == 1:
        results = []
        for i, g in enumerate(groups):
            results.append(_train_group(x, y, y_train, g, hp, epochs, n_steps, n_val))
            log.info("jax engine: group %d/%d done", i + 1, len(groups))
    else:
        import multiprocessing as mp

        single = os.environ.get(ENV_THREADS, "1") != "0"
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes, initializer=_worker_init, initargs=(x, y, y_train, single)) as pool:
            results = []
            for i, r in enumerate(pool.imap(_worker_run, jobs)):
                results.append(r)
                log.info("jax engine: group %d/%d done", i + 1, len(groups))
    weights = [w for r in results for w in r[0]]
    train_loss = np.concatenate([r[1] for r in results])
    val_loss = np.concatenate([r[2] for r in results])
    l2 = np.concatenate([r[3] for r in results])
    seconds = time.perf_counter() - t0
    return FitResult(weights=weights, train_loss=train_loss, val_loss=val_loss, seconds=seconds,
                     info={"engine": "jax", "group_size": gsize, "processes": processes, "groups": len(groups),
                           "epochs": epochs, "train_l2": l2,
                           # (groups, epochs) wall and CPU seconds; the first epoch includes compilation
                           "epoch_seconds": np.stack([r[4] for r in results]),
                           "epoch_cpu_seconds": np.stack([r[5] for r in results])})


def predict_many(x: np.ndarray, mean: np.ndarray, std: np.ndarray, weights_list: list[list[np.ndarray]],
                 hp: Model, probe_idx: list[np.ndarray] | None = None,
                 group_size: int = DEFAULT_GROUP_SIZE) -> np.ndarray | list[np.ndarray]:
    """Predicted SSM (m3/m3) of every model on every probe: (M, P, T), no dropout.

    ``x`` (P, T, F) raw features; ``mean``/``std`` (M, F) each model's normalisation; ``weights_list`` in the
    Keras layout. With ``probe_idx`` (one index array per model) returns a list of (len(idx_m), T) arrays,
    e.g. each fold model's test probe.
    """
    _check_cell(hp)
    x = np.asarray(x, np.float32)
    n_models = len(weights_list)
    if n_models == 0:
        return np.zeros((0,) + x.shape[:2], np.float32)
    mean = np.asarray(mean, np.float32).reshape(n_models, -1)
    std = np.asarray(std, np.float32).reshape(n_models, -1)
    for i, w in enumerate(weights_list):
        _check_weights(w, x.shape[2], hp, f"predict_many(weights_list[{i}])")
    import jax.numpy as jnp

    core = _core(_Static.from_hp(hp))
    gsize = min(group_size, n_models)
    out = np.empty((n_models,) + x.shape[:2], np.float32)
    for start in range(0, n_models, gsize):
        ids = list(range(start, min(start + gsize, n_models)))
        pad = ids + [ids[0]] * (gsize - len(ids))  # same shapes for every call: one compilation
        xn = np.stack([normalise(x, mean[i], std[i]) for i in pad])
        pred = np.asarray(core["predict"](_stack([weights_list[i] for i in pad], hp.layers), jnp.asarray(xn)))
        out[ids] = pred[: len(ids)]
    if probe_idx is None:
        return out
    return [out[m][np.asarray(probe_idx[m])] for m in range(n_models)]
