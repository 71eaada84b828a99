"""Benchmark: LOO fold models per minute through the task runners (params.yaml `runner`).

The same synthetic protocol request as benchmarks/bench_training.py (61 probes x 883 days x 10 features,
leave-one-probe-out splits, batch size 1) is trained by the jax engine through
``soilmoisture.protocol.run.fit_requests`` with

* ``runner.kind: local``: the engine's own pool of 2 processes (the default);
* ``runner.kind: dask_local`` with 1 and 2 worker processes (one thread each): the models are cut into
  one chunk per worker, each a Prefect task on its own LocalCluster.

    .venv/bin/python benchmarks/bench_runner.py                      # 64 models x 4 epochs
    .venv/bin/python benchmarks/bench_runner.py --models 32 --epochs 2

Wall time includes starting the cluster and jax's import and compilation in fresh workers (what a user
waits for); the Prefect temporary API is started once before and not counted. Every runner must give the
local run's losses bit for bit: the script says whether they did. Prints a Markdown block for RESULTS.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

log = logging.getLogger("bench_runner")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the engine's pool, the LocalCluster workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_once(req, runner) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds and the FitResult of one training of ``req`` through ``runner``."""
    from soilmoisture.model import jax_engine
    from soilmoisture.protocol.run import fit_requests

    t, c = time.perf_counter(), _cpu()
    (res,) = fit_requests(jax_engine, "jax", [req], runner)
    return time.perf_counter() - t, _cpu() - c, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("distributed", "prefect"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from bench_training import make_request

    from soilmoisture.config import Runner
    from soilmoisture.runner import prefect_api_url

    req = make_request(61, 883, 10, args.models, args.epochs)
    t = time.perf_counter()
    prefect_api_url()
    api_seconds = time.perf_counter() - t
    rows = []
    wall, cpu, ref = run_once(req, Runner(kind="local", address=None, n_workers=2))
    rows.append(("local (engine pool, 2 processes)", wall, cpu, True))
    for n in args.workers:
        wall, cpu, res = run_once(req, Runner(kind="dask_local", address=None, n_workers=n))
        same = (np.array_equal(res.train_loss, ref.train_loss, equal_nan=True)
                and all(np.array_equal(a, b) for wa, wb in zip(res.weights, ref.weights) for a, b in zip(wa, wb)))
        rows.append((f"dask_local, {n} worker process{'es' if n > 1 else ''}", wall, cpu, same))
    load = os.getloadavg()[0]

    print(f"\nmachine: {platform.node()} ({os.cpu_count()} cores); {args.models} models x {args.epochs} epochs, "
          f"61 probes x 883 days x 10 features; Prefect temporary API started in {api_seconds:.1f} s (not counted); "
          f"load average {load:.1f} at the end\n")
    print("| runner | wall s | fold models per minute (wall) | CPU s (all processes) | CPU s per model | "
          "weights and losses == local |")
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, same in rows:
        print(f"| {name} | {wall:.1f} | {60 * args.models / wall:.1f} | {cpu:.0f} | {cpu / args.models:.2f} | "
              f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
