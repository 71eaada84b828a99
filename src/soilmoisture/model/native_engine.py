"""Training engine on a native C kernel: one model per call, one call per core at a time.

Same contract and per-model semantics as :mod:`soilmoisture.model.jax_engine` (and so as the plain
Keras loop): weights from ``seeds[m]`` (``jax_engine.init_weights``), the series order of
``epoch_orders``, Adam + triangular cyclical rate at the model's own step count, dropout after each
recurrent layer with the JAX engine's counter-based masks (so both engines give the same model from the
same seed), L2 on recurrent kernels, masked (or zero-filled) MAE.

Why it is faster: with batch size 1 each optimizer step is one long recurrence whose per-day work is a
16 x 64 matrix-vector product. XLA runs that as ~20 tiny kernels per day; the C kernel
(``model/native/lstm.c``) keeps one model's weights in L1 cache, computes the input-to-gate products of
all days before the time loop, carries only dh/dc through the reverse loop and forms the weight
gradients over all days after it. Models are independent, so the engine runs one model per call on a
pool of threads (ctypes releases the GIL), one per core in ``os.sched_getaffinity``: no worker processes,
no compilation per call, and a model's result does not depend on the thread count.

The kernel is compiled at first use (``native_build``); when that is impossible the error says why and
``protocol.engine: native`` falls back to the JAX engine (protocol/run.py).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from soilmoisture.config import Model
from soilmoisture.errors import ConfigError, ProtocolError, SoilMoistureError
from soilmoisture.model import jax_engine, native_build
from soilmoisture.model.interface import FitRequest, FitResult

log = logging.getLogger(__name__)

SUPPORTED_CELLS = ("lstm",)
ENV_THREADS = "SOILMOISTURE_NATIVE_THREADS"
MAX_LAYERS = 8                      # MAXL in lstm.c

init_weights = jax_engine.init_weights
epoch_orders = jax_engine.epoch_orders


def default_threads() -> int:
    """One thread per core this process may run on (``os.sched_getaffinity``), or $SOILMOISTURE_NATIVE_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:              # not on Linux
        cores = os.cpu_count() or 1
    return jax_engine._env_int(ENV_THREADS, max(cores, 1))


def _check(hp: Model, n_features: int) -> None:
    jax_engine._check_cell(hp)
    if not 1 <= hp.layers <= MAX_LAYERS:
        raise ConfigError("model.layers", f"the native engine supports 1 to {MAX_LAYERS} layers, got {hp.layers}")
    if n_features < 1:
        raise ProtocolError("FitRequest.x: no input feature")


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _flat(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(w, np.float32).ravel() for w in weights])


def _unflat(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, pos = [], 0
    for w in like:
        n = int(np.prod(np.shape(w)))
        out.append(flat[pos:pos + n].reshape(np.shape(w)).copy())
        pos += n
    return out


class _Progress:
    """One line of progress (models trained, ETA) on a terminal; silent otherwise (logs at the end only)."""

    def __init__(self, total: int, epochs: int, enabled: bool | None) -> None:
        self.total, self.epochs, self.done = total, epochs, 0
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="model", desc=f"training ({epochs} epochs)", leave=False,
                                dynamic_ncols=True)
            except ImportError:          # tqdm is a dependency; without it, no bar
                self.bar = None

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Training:
    """The models of one request in training: ``advance(n)`` trains every model ``n`` more epochs (the same
    as training them in one go: optimizer state, step count and series order carry over), ``result()``
    gives the :class:`FitResult` of the epochs done so far. For per-epoch decisions (e.g. pruning a tuning
    trial); :func:`fit_many` is ``Training(req).advance(epochs)``.
    """

    def __init__(self, req: FitRequest, *, threads: int | None = None,
                 init: list[list[np.ndarray]] | None = None, progress: bool | None = None) -> None:
        self.t0 = time.perf_counter()
        jax_engine._validate(req)
        self.req, hp = req, req.hp
        self.x = np.ascontiguousarray(req.x, np.float32)
        p, t, f = self.x.shape
        _check(hp, f)
        self.lib = native_build.load(hp.units)
        self.epochs = int(req.epochs or hp.epochs)
        m_total = req.n_models
        if init is not None:
            if len(init) != m_total:
                raise ProtocolError(f"fit_many(init=...): need {m_total} weight lists, got {len(init)}")
            for i, w in enumerate(init):
                jax_engine._check_weights(w, f, hp, f"fit_many(init[{i}])")
        self.y_val = np.ascontiguousarray(req.y, np.float32)
        self.y_train = self.y_val if req.y_train is None else np.ascontiguousarray(req.y_train, np.float32)
        self.mean = np.ascontiguousarray(req.mean, np.float32)
        self.std = np.ascontiguousarray(req.std, np.float32)
        self.hyper = np.ascontiguousarray(jax_engine._hyper(hp), np.float32)
        self.like = init_weights(0, f, hp)
        n_params = int(self.lib.sm_n_params(f, hp.layers))
        if n_params != sum(w.size for w in self.like):
            raise SoilMoistureError(f"native kernel parameter count {n_params} does not match the Keras layout")
        self.threads = max(1, min(threads or default_threads(), m_total))
        self.progress = progress
        self.done = 0                                   # epochs trained so far
        self.train_loss = np.full((m_total, self.epochs), np.nan, np.float32)
        self.val_loss = np.full((m_total, self.epochs), np.nan, np.float32)
        self.l2 = np.zeros((m_total, self.epochs), np.float32)
        self.seconds = np.zeros(m_total)
        b = hp.batch_size
        self.state = []
        for m in range(m_total):
            tr = np.asarray(req.train_idx[m], np.int64)
            steps = jax_engine._steps_per_epoch(len(tr), b)
            order = np.zeros((self.epochs, steps * b), np.int32)
            sw = np.zeros((self.epochs, steps * b), np.float32)
            for e, pos in enumerate(epoch_orders(req.seeds[m], len(tr), self.epochs)):
                order[e, :len(tr)] = tr[pos]
                sw[e, :len(tr)] = 1.0
            self.state.append({
                "params": _flat(init[m] if init is not None else init_weights(req.seeds[m], f, hp)),
                "mom": np.zeros(n_params, np.float32), "vel": np.zeros(n_params, np.float32),
                "count": np.zeros(1, np.int32), "steps": steps, "order": order, "sw": sw,
                "vidx": np.ascontiguousarray(np.asarray(req.val_idx[m], np.int32)),
                "key": np.ascontiguousarray(jax_engine._dropout_key(req.seeds[m]))})

    def _one(self, m: int, e0: int, n: int) -> None:
        ts = time.perf_counter()
        st, hp = self.state[m], self.req.hp
        p, t, f = self.x.shape
        tl, vl, l2e = (np.zeros(n, np.float32) for _ in range(3))
        order = np.ascontiguousarray(st["order"][e0:e0 + n])
        sw = np.ascontiguousarray(st["sw"][e0:e0 + n])
        vidx = st["vidx"]
        rc = self.lib.sm_fit(p, t, f, hp.layers, hp.batch_size, st["steps"], n, len(vidx),
                             _ptr(self.x), _ptr(self.mean[m]), _ptr(self.std[m]), _ptr(self.y_train),
                             _ptr(self.y_val), int(hp.target_fill == "zero"), int(hp.dropout > 0), _ptr(self.hyper),
                             _ptr(st["key"]), _ptr(st["params"]), _ptr(st["mom"]), _ptr(st["vel"]),
                             _ptr(st["count"]), _ptr(order), _ptr(sw), _ptr(vidx) if len(vidx) else 0,
                             _ptr(tl), _ptr(vl), _ptr(l2e))
        if rc != 0:
            raise SoilMoistureError(f"native engine: training model {m} failed "
                                    f"({'out of memory' if rc == 1 else 'bad arguments'}, code {rc})")
        self.train_loss[m, e0:e0 + n], self.val_loss[m, e0:e0 + n], self.l2[m, e0:e0 + n] = tl, vl, l2e
        self.seconds[m] += time.perf_counter() - ts

    def advance(self, n_epochs: int = 1) -> "Training":
        """Train every model ``n_epochs`` more epochs (at most up to the request's epochs)."""
        e0 = self.done
        n = min(int(n_epochs), self.epochs - e0)
        if n <= 0:
            return self
        m_total = self.req.n_models
        bar = _Progress(m_total, n, self.progress)
        log.info("native engine: %d models, epochs %d-%d of %d, %d thread(s)", m_total, e0 + 1, e0 + n,
                 self.epochs, self.threads)

        def one(m: int) -> None:
            self._one(m, e0, n)
            bar.step()

        try:
            if self.threads == 1:
                for m in range(m_total):
                    one(m)
            else:
                with ThreadPoolExecutor(self.threads, thread_name_prefix="native-engine") as pool:
                    for fut in [pool.submit(one, m) for m in range(m_total)]:
                        fut.result()
        finally:
            bar.close()
        self.done = e0 + n
        return self

    def result(self) -> FitResult:
        """Weights (Keras layout) and the loss curves of the epochs trained so far."""
        d = self.done
        total = time.perf_counter() - self.t0
        return FitResult(weights=[_unflat(st["params"], self.like) for st in self.state],
                         train_loss=self.train_loss[:, :d].copy(), val_loss=self.val_loss[:, :d].copy(),
                         seconds=total,
                         info={"engine": "native", "threads": self.threads, "group_size": 1, "processes": 1,
                               "groups": self.req.n_models, "epochs": d, "train_l2": self.l2[:, :d].copy(),
                               "model_seconds": self.seconds.copy()})


def fit_many(req: FitRequest, *, threads: int | None = None, init: list[list[np.ndarray]] | None = None,
             progress: bool | None = None, **_ignored: object) -> FitResult:
    """Train every model of ``req`` (one C call per model) on ``threads`` threads (default: one per core).

    ``init`` optionally gives each model's starting weights (Keras layout). ``progress``: a progress bar
    (models trained, ETA) on stderr, by default only when stderr is a terminal. Extra keyword arguments of
    the JAX engine (``processes``, ``group_size``) are accepted and ignored: every model is its own group.
    """
    training = Training(req, threads=threads, init=init, progress=progress)
    res = training.advance(training.epochs).result()
    log.info("native engine: trained %d models in %.1f s", req.n_models, res.seconds)
    return res


def loss_grad(x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, weights: list[np.ndarray],
              hp: Model, idx: np.ndarray, sw: np.ndarray, seed: int = 0, count: int = 0) -> tuple[float, list]:
    """Data loss and gradient (Keras layout) of one optimizer step of one model, without the update.

    ``idx``/``sw`` (B,) the step's probe series and 1/0 weights; with ``hp.dropout > 0`` the masks are those
    the model with ``seed`` draws at step ``count``. The gradient includes the L2 term (``hp.recurrent_l2``).
    For tests and diagnostics: training never leaves the C kernel.
    """
    x = np.ascontiguousarray(x, np.float32)
    p, t, f = x.shape
    _check(hp, f)
    jax_engine._check_weights(weights, f, hp, "loss_grad(weights)")
    lib = native_build.load(hp.units)
    params = _flat(weights)
    grad = np.zeros_like(params)
    loss = np.zeros(1, np.float32)
    idx = np.ascontiguousarray(idx, np.int32)
    sw = np.ascontiguousarray(sw, np.float32)
    y = np.ascontiguousarray(y, np.float32)
    mean = np.ascontiguousarray(mean, np.float32)
    std = np.ascontiguousarray(std, np.float32)
    hyper = np.ascontiguousarray(jax_engine._hyper(hp), np.float32)
    key = np.ascontiguousarray(jax_engine._dropout_key(seed))
    rc = lib.sm_loss_grad(p, t, f, hp.layers, len(idx), _ptr(x), _ptr(mean), _ptr(std), _ptr(y),
                          int(hp.target_fill == "zero"), int(hp.dropout > 0), _ptr(hyper), _ptr(key), int(count),
                          _ptr(params), _ptr(idx), _ptr(sw), _ptr(loss), _ptr(grad))
    if rc != 0:
        raise SoilMoistureError(f"native engine: loss_grad failed (code {rc})")
    return float(loss[0]), _unflat(grad, weights)


def predict_many(x: np.ndarray, mean: np.ndarray, std: np.ndarray, weights_list: list[list[np.ndarray]],
                 hp: Model, probe_idx: list[np.ndarray] | None = None,
                 threads: int | None = None, **_ignored: object) -> np.ndarray | list[np.ndarray]:
    """Predicted SSM (m3/m3) of every model on every probe: (M, P, T), no dropout (as ``jax_engine.predict_many``).

    With ``probe_idx`` (one index array per model) returns a list of (len(idx_m), T) arrays.
    """
    x = np.ascontiguousarray(x, np.float32)
    p, t, f = x.shape
    _check(hp, f)
    n_models = len(weights_list)
    if n_models == 0:
        return np.zeros((0, p, t), np.float32) if probe_idx is None else []
    mean = np.ascontiguousarray(np.asarray(mean, np.float32).reshape(n_models, -1))
    std = np.ascontiguousarray(np.asarray(std, np.float32).reshape(n_models, -1))
    for i, w in enumerate(weights_list):
        jax_engine._check_weights(w, f, hp, f"predict_many(weights_list[{i}])")
    lib = native_build.load(hp.units)
    idx_all = [np.arange(p, dtype=np.int32) if probe_idx is None else np.asarray(probe_idx[m], np.int32)
               for m in range(n_models)]
    outs = [np.empty((len(ix), t), np.float32) for ix in idx_all]

    def one(m: int) -> None:
        ix = np.ascontiguousarray(idx_all[m])
        if np.any((ix < 0) | (ix >= p)):
            raise ProtocolError(f"predict_many(probe_idx[{m}]): probe index out of range [0, {p})")
        params = _flat(weights_list[m])
        if len(ix) == 0:
            return
        rc = lib.sm_predict(p, t, f, hp.layers, len(ix), _ptr(x), _ptr(mean[m]), _ptr(std[m]), _ptr(params),
                            _ptr(ix), _ptr(outs[m]))
        if rc != 0:
            raise SoilMoistureError(f"native engine: predicting with model {m} failed (code {rc})")

    threads = max(1, min(threads or default_threads(), n_models))
    if threads == 1:
        for m in range(n_models):
            one(m)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for fut in [pool.submit(one, m) for m in range(n_models)]:
                fut.result()
    if probe_idx is None:
        return np.stack(outs)
    return outs
