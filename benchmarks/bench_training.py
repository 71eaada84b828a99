"""Benchmark: the native engine on the thesis protocol, against the JAX engine and the plain Keras loop.

Bench size (thesis 3.3, 4.2): 61 probes x 883 days, leave-one-probe-out x 10 repeats = 610 models, 20 epochs,
batch size 1, 48 training and 12 validation probes per model. The data are synthetic arrays of the right
shape with ~60 % observed targets: the cost does not depend on the values.

    .venv/bin/python benchmarks/bench_training.py                         # full protocol (once, near the end)
    .venv/bin/python benchmarks/bench_training.py --models 32 --epochs 2  # quick check, extrapolated
    .venv/bin/python benchmarks/bench_training.py --engine jax            # the JAX engine on the full protocol

In one run: the engine under test (``--engine``, default native) on ``--models`` x ``--epochs``, a sample of
the JAX engine (``--jax-models``, same folds) and of the plain Keras loop (``--keras-models``), each in
wall and CPU seconds per model-epoch, and their ratios (CPU ratios do not depend on what else the machine
runs). The native kernel is compiled into a fresh cache first (``--warm-cache`` reuses the project's), so
the engine's time includes compilation; start-up (interpreter, imports) is reported beside it. Prints a
Markdown block for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FULL_MODELS, FULL_EPOCHS = 610, 20
log = logging.getLogger("bench_training")


def make_request(n_probes: int, n_days: int, n_features: int, n_models: int, epochs: int, seed: int = 0):
    """Synthetic LOO x repeats request: model k tests probe k % P (repeat k // P), 80/20 split of the rest."""
    from soilmoisture import config
    from soilmoisture.model.interface import FitRequest

    hp = config.load(ROOT / "params.yaml").model
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_probes, n_days, n_features)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (0.25 + 0.08 * rng.standard_normal((n_probes, n_days))).astype(np.float32)
    y[rng.random(y.shape) >= 0.6] = np.nan                       # ~60 % observed days
    train_idx, val_idx, mean, std = [], [], [], []
    for k in range(n_models):
        rest = np.array([p for p in range(n_probes) if p != k % n_probes])
        perm = np.random.default_rng([seed, k]).permutation(rest)
        n_val = int(round(0.2 * len(rest)))
        train_idx.append(np.sort(perm[n_val:]))
        val_idx.append(np.sort(perm[:n_val]))
        xt = x[train_idx[-1]].reshape(-1, n_features)
        mean.append(np.nanmean(xt, 0))
        std.append(np.nanstd(xt, 0))
    return FitRequest(x=x, y=y, mean=np.array(mean, np.float32), std=np.array(std, np.float32),
                      train_idx=train_idx, val_idx=val_idx, seeds=np.arange(1000, 1000 + n_models), hp=hp,
                      epochs=epochs)


class _Stamps(logging.Handler):
    """Records when the Keras engine reports each finished model (steady-state time per model)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.cpu: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "trained" in record.getMessage():
            self.times.append(time.perf_counter())
            self.cpu.append(_cpu())


def bench_keras(req, n_models: int, epochs: int) -> dict:
    """The plain per-model Keras loop (keras_engine.fit_many) on the first ``n_models`` models."""
    from soilmoisture.model import keras_engine

    sub = dataclasses.replace(req, mean=req.mean[:n_models], std=req.std[:n_models],
                              train_idx=req.train_idx[:n_models], val_idx=req.val_idx[:n_models],
                              seeds=req.seeds[:n_models], epochs=epochs)
    stamps = _Stamps()
    logging.getLogger("soilmoisture.model.keras_engine").addHandler(stamps)
    c0 = _cpu()
    t0 = time.perf_counter()
    keras_engine.fit_many(sub)
    total = time.perf_counter() - t0
    cpu = _cpu() - c0
    per_all = total / (n_models * epochs)
    # Steady state: from the first model's end to the last's (no tracing / graph building).
    steady = (stamps.times[-1] - stamps.times[0]) / ((n_models - 1) * epochs) if len(stamps.times) > 1 else per_all
    steady_cpu = ((stamps.cpu[-1] - stamps.cpu[0]) / ((n_models - 1) * epochs) if len(stamps.cpu) > 1
                  else cpu / (n_models * epochs))
    return {"models": n_models, "epochs": epochs, "seconds": total, "per_model_epoch": steady,
            "per_model_epoch_incl_tracing": per_all, "cpu_per_model_epoch": cpu / (n_models * epochs),
            "steady_cpu_per_model_epoch": steady_cpu}


def _cpu() -> float:
    """CPU seconds (user + sys) of this process and its finished children: a load-robust cost measure."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_jax(req, processes: int | None, group_size: int | None) -> dict:
    from soilmoisture.model import jax_engine

    c0 = _cpu()
    t0 = time.perf_counter()
    res = jax_engine.fit_many(req, processes=processes, group_size=group_size)
    total = time.perf_counter() - t0
    cpu = _cpu() - c0
    m, e = req.n_models, req.epochs
    assert np.all(np.isfinite(res.train_loss)), "engine produced non-finite losses"
    procs, gsize = res.info["processes"], res.info["group_size"]
    secs = res.info["epoch_seconds"]                              # (groups, epochs), first epoch compiles
    # Steady state: a process trains one group-epoch in `group_epoch` s; `procs` run side by side.
    group_epoch = float(np.median(secs[:, 1:])) if e > 1 else float(np.median(secs))
    overhead = max(total - secs.sum() / procs, 0.0) + float(np.median(secs[:, 0]) - group_epoch)
    n_groups_full = -(-FULL_MODELS // gsize)
    full_est = overhead + n_groups_full * FULL_EPOCHS * group_epoch / procs
    # Load-robust: the CPU a worker (1 XLA thread) spends per group-epoch; on `procs` idle cores the
    # wall time would be about that.
    cpu_secs = res.info["epoch_cpu_seconds"]
    group_epoch_cpu = float(np.median(cpu_secs[:, 1:])) if e > 1 else float(np.median(cpu_secs))
    idle_est = overhead * group_epoch_cpu / max(group_epoch, 1e-9) + n_groups_full * FULL_EPOCHS * group_epoch_cpu / procs
    return {"models": m, "epochs": e, "seconds": total, "per_model_epoch": total / (m * e),
            "steady_per_model_epoch": group_epoch / (gsize * procs), "group_epoch_seconds": group_epoch,
            "overhead_seconds": overhead, "full_protocol_estimate": full_est,
            "processes": procs, "group_size": gsize, "cpu_per_model_epoch": cpu / (m * e),
            "group_epoch_cpu": group_epoch_cpu, "steady_cpu_per_model_epoch": group_epoch_cpu / gsize,
            "full_protocol_idle_estimate": idle_est,
            "final_train_mae_mean": float(np.mean(res.train_loss[:, -1]))}


def bench_native(req, threads: int | None) -> dict:
    from soilmoisture.model import native_build, native_engine

    c0 = _cpu()
    t0 = time.perf_counter()
    native_build.load(req.hp.units)                              # compilation (fresh cache) counts
    build = time.perf_counter() - t0
    build_cpu = _cpu() - c0
    res = native_engine.fit_many(req, threads=threads, progress=False)
    total = time.perf_counter() - t0
    cpu = _cpu() - c0
    m, e = req.n_models, req.epochs
    assert np.all(np.isfinite(res.train_loss)), "engine produced non-finite losses"
    train_per = (total - build) / (m * e)
    train_cpu_per = (cpu - build_cpu) / (m * e)
    return {"models": m, "epochs": e, "seconds": total, "build_seconds": build, "threads": res.info["threads"],
            "per_model_epoch": total / (m * e), "cpu_per_model_epoch": cpu / (m * e),
            "train_per_model_epoch": train_per, "train_cpu_per_model_epoch": train_cpu_per,
            # the build once, then training at this run's rate; on idle cores the wall time would be about
            # the CPU time / threads (one core per thread)
            "full_protocol_estimate": build + train_per * FULL_MODELS * FULL_EPOCHS,
            "full_protocol_idle_estimate": build_cpu + train_cpu_per * FULL_MODELS * FULL_EPOCHS / res.info["threads"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_train_mae_mean": float(np.mean(res.train_loss[:, -1]))}


def _since_process_start() -> float:
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except ImportError:
        return float("nan")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=FULL_MODELS, help="engine models (full protocol: 610)")
    ap.add_argument("--epochs", type=int, default=FULL_EPOCHS, help="engine epochs (full protocol: 20)")
    ap.add_argument("--probes", type=int, default=61)
    ap.add_argument("--days", type=int, default=883)
    ap.add_argument("--features", type=int, default=10, help="DLM_minimum: 10 inputs")
    ap.add_argument("--keras-models", type=int, default=3, help="models for the plain Keras loop (>= 2)")
    ap.add_argument("--keras-epochs", type=int, default=1)
    ap.add_argument("--skip-keras", action="store_true")
    ap.add_argument("--engine", choices=("native", "jax"), default="native", help="engine on --models x --epochs")
    ap.add_argument("--jax-models", type=int, default=16, help="JAX engine sample (0: none) when --engine native")
    ap.add_argument("--jax-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="native engine threads (default: one per core)")
    ap.add_argument("--warm-cache", action="store_true", help="reuse the compiled native kernel (default: build)")
    ap.add_argument("--processes", type=int, default=None, help="JAX worker processes (default: engine's)")
    ap.add_argument("--group-size", type=int, default=None, help="JAX models per compiled call (default: engine's)")
    args = ap.parse_args(argv)
    startup = _since_process_start()
    if args.warm_cache or args.engine != "native":
        return _main(args, argv, startup)
    import tempfile

    from soilmoisture.model import native_build

    # A fresh, empty kernel cache: the engine's time includes compiling the kernel.
    saved = os.environ.get(native_build.ENV_CACHE)
    with tempfile.TemporaryDirectory(prefix="bench-native-") as tmp:
        os.environ[native_build.ENV_CACHE] = tmp
        native_build._LOADED.clear()
        try:
            _main(args, argv, startup)
        finally:
            native_build._LOADED.clear()
            if saved is None:
                os.environ.pop(native_build.ENV_CACHE, None)
            else:
                os.environ[native_build.ENV_CACHE] = saved


def _main(args, argv, startup: float) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("jax._src.xla_bridge", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    load_before = load()
    req = make_request(args.probes, args.days, args.features, max(args.models, args.keras_models, args.jax_models),
                       args.epochs)
    n_train = len(req.train_idx[0])
    log.info("request: %d probes x %d days x %d features, %d training series per model",
             args.probes, args.days, args.features, n_train)
    keras = None
    if not args.skip_keras:
        keras = bench_keras(req, args.keras_models, args.keras_epochs)
        log.info("keras: %s", keras)

    def first(n: int, epochs: int):
        return dataclasses.replace(req, mean=req.mean[:n], std=req.std[:n], train_idx=req.train_idx[:n],
                                   val_idx=req.val_idx[:n], seeds=req.seeds[:n], epochs=epochs)

    native = None
    jax_res = None
    if args.engine == "native":
        native = bench_native(first(args.models, args.epochs), args.threads)
        log.info("native: %s", native)
        if args.jax_models:
            jax_res = bench_jax(first(args.jax_models, args.jax_epochs), args.processes, args.group_size)
            log.info("jax: %s", jax_res)
    else:
        jax_res = bench_jax(first(args.models, args.epochs), args.processes, args.group_size)
        log.info("jax: %s", jax_res)
    load_after = load()
    print("\n".join(report(args, argv, n_train, startup, load_before, load_after, keras, jax_res, native)))


def report(args, argv, n_train, startup, load_before, load_after, keras, jax_res, native) -> list[str]:
    full = FULL_MODELS * FULL_EPOCHS
    measured_full = args.models == FULL_MODELS and args.epochs == FULL_EPOCHS
    lines = [
        f"- Command: `.venv/bin/python benchmarks/bench_training.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        f"- Machine: {machine()}",
        f"- Load before: `{load_before}`; after: `{load_after}`",
        f"- Data: {args.probes} probes x {args.days} days x {args.features} features, {n_train} training series "
        f"per model per epoch (batch 1), ~60 % observed targets (synthetic)",
        f"- Start-up before the first engine call (interpreter, imports, synthetic data): {startup:.1f} s",
    ]
    if keras:
        lines.append(f"- Plain Keras loop (`keras_engine.fit_many`, {keras['models']} models x {keras['epochs']} "
                     f"epoch): {keras['per_model_epoch']:.2f} s per model-epoch steady state "
                     f"({keras['per_model_epoch_incl_tracing']:.2f} s including tracing); full protocol "
                     f"at that rate: {keras['per_model_epoch'] * full / 3600:.1f} h; "
                     f"{keras['steady_cpu_per_model_epoch']:.2f} CPU-s per model-epoch steady state "
                     f"({keras['cpu_per_model_epoch']:.2f} including tracing)")
    if jax_res:
        lines.append(f"- JAX engine ({jax_res['models']} models x {jax_res['epochs']} epochs, {jax_res['processes']} "
                     f"processes, groups of {jax_res['group_size']}): {jax_res['seconds']:.1f} s wall, "
                     f"{jax_res['per_model_epoch'] * 1000:.1f} ms per model-epoch overall (start-up and compilation "
                     f"included), {jax_res['steady_per_model_epoch'] * 1000:.1f} ms steady state "
                     f"({jax_res['group_epoch_seconds']:.2f} s per group-epoch per process); "
                     f"{jax_res['cpu_per_model_epoch'] * 1000:.1f} CPU-ms per model-epoch (all processes, start-up "
                     f"and compilation included), {jax_res['steady_cpu_per_model_epoch'] * 1000:.1f} CPU-ms steady "
                     f"state ({jax_res['group_epoch_cpu']:.2f} CPU-s per group-epoch); full protocol at that rate "
                     f"{jax_res['full_protocol_estimate'] / 60:.1f} min ({jax_res['full_protocol_idle_estimate'] / 60:.1f} "
                     f"min on 2 idle cores from CPU time)")
    if native:
        lines.append(f"- Native engine ({native['models']} models x {native['epochs']} epochs, {native['threads']} "
                     f"threads): {native['seconds']:.1f} s wall including {native['build_seconds']:.1f} s "
                     f"{'loading the cached kernel' if args.warm_cache else 'compiling the kernel'}; "
                     f"{native['per_model_epoch'] * 1000:.1f} ms per model-epoch wall, "
                     f"{native['cpu_per_model_epoch'] * 1000:.1f} CPU-ms per model-epoch (after the build: "
                     f"{native['train_per_model_epoch'] * 1000:.1f} ms wall, "
                     f"{native['train_cpu_per_model_epoch'] * 1000:.1f} CPU-ms); peak RSS "
                     f"{native['peak_rss_mb']:.0f} MB")
        est = native["seconds"] if measured_full else native["full_protocol_estimate"]
        lines.append(f"- Full protocol (610 models x 20 epochs) with the native engine: {est / 60:.2f} min wall "
                     f"({'measured' if measured_full else 'extrapolated from this run'}; + {startup:.1f} s "
                     f"start-up); from CPU time, on 2 idle cores: "
                     f"{native['full_protocol_idle_estimate'] / 60:.2f} min")
        if jax_res:
            lines.append(f"- Native vs JAX engine per model-epoch (steady state, after compilation): "
                         f"{jax_res['steady_cpu_per_model_epoch'] / native['train_cpu_per_model_epoch']:.1f}x in CPU "
                         f"time, {jax_res['steady_per_model_epoch'] / native['train_per_model_epoch']:.1f}x wall")
        if keras:
            lines.append(f"- Native vs plain Keras loop per model-epoch: "
                         f"{keras['steady_cpu_per_model_epoch'] / native['cpu_per_model_epoch']:.0f}x in CPU time, "
                         f"{keras['per_model_epoch'] / native['per_model_epoch']:.0f}x wall (Keras steady state; "
                         f"native including compilation; goal >= 300x)")
    elif jax_res:
        est_full = jax_res["seconds"] if measured_full else jax_res["full_protocol_estimate"]
        per_me = jax_res["per_model_epoch"] if measured_full else jax_res["steady_per_model_epoch"]
        lines.append(f"- Full protocol (610 models x 20 epochs) with the JAX engine: {est_full / 60:.1f} min "
                     f"({'measured' if measured_full else 'extrapolated from this run'}); from CPU time, on 2 idle "
                     f"cores: {jax_res['full_protocol_idle_estimate'] / 60:.1f} min")
        if keras:
            lines.append(f"- Speed-up per model-epoch (Keras steady state / engine "
                         f"{'overall' if measured_full else 'steady state'}): {keras['per_model_epoch'] / per_me:.0f}x "
                         f"wall; {keras['steady_cpu_per_model_epoch'] / jax_res['steady_cpu_per_model_epoch']:.0f}x in CPU "
                         f"time (steady state; including start-up and compilation: "
                         f"{keras['cpu_per_model_epoch'] / jax_res['cpu_per_model_epoch']:.0f}x)")
    return lines


if __name__ == "__main__":  # spawn workers re-import __main__: keep the guard
    main()
