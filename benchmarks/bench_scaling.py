"""Benchmark: how the native engine's cost and memory grow with models per call, days and probes.

Each point runs in a fresh child process (so its peak resident memory is its own), on synthetic
requests of benchmarks/bench_training.py (LOO x repeats, 80/20 split of the other probes, batch 1):

* models per call: 1, 8, 32, 128, 610 models (61 probes x 883 days);
* series length: 883, 1,500, 3,000 days (8 models, 61 probes);
* probes: 61, 150, 500 probes (8 models, 883 days; a model trains on 80 % of the other probes, so an epoch
  has proportionally more optimizer steps).

Reported per point: wall and CPU seconds, CPU microseconds per (optimizer step x day), which must stay
flat if the cost is linear in models x steps x days, and peak RSS.

    .venv/bin/python benchmarks/bench_scaling.py                 # all three tables, 1 epoch per point
    .venv/bin/python benchmarks/bench_scaling.py --table models --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TABLES = {
    "models": [dict(models=m, probes=61, days=883) for m in (1, 8, 32, 128, 610)],
    "days": [dict(models=8, probes=61, days=d) for d in (883, 1500, 3000)],
    "probes": [dict(models=8, probes=p, days=883) for p in (61, 150, 500)],
}


def _point(models: int, probes: int, days: int, epochs: int, threads: int | None) -> dict:
    """Runs in the child: one fit_many call, timed."""
    sys.path.insert(0, str(ROOT))
    from bench_training import _cpu, make_request

    from soilmoisture.model import native_build, native_engine

    req = make_request(probes, days, 10, models, epochs)
    native_build.load(req.hp.units)                      # warm cache: the build is not part of the scaling
    c0, t0 = _cpu(), time.perf_counter()
    res = native_engine.fit_many(req, threads=threads, progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    steps = sum(len(t) for t in req.train_idx) * epochs   # batch 1: one step per training series
    return {"models": models, "probes": probes, "days": days, "epochs": epochs, "threads": res.info["threads"],
            "wall_s": wall, "cpu_s": cpu, "cpu_us_per_step_day": cpu / (steps * days) * 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", choices=tuple(TABLES) + ("all",), default="all")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_point(**json.loads(args.child), epochs=args.epochs, threads=args.threads)))
        return
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"load before: `{load}`")
    names = list(TABLES) if args.table == "all" else [args.table]
    env = dict(os.environ)
    for name in names:
        print(f"\n| {name} | models | probes | days | wall s | CPU s | CPU µs per step-day | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for pt in TABLES[name]:
            cmd = [sys.executable, __file__, "--child", json.dumps(pt), "--epochs", str(args.epochs)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {pt[name]} | {r['models']} | {r['probes']} | {r['days']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
                  f"| {r['cpu_us_per_step_day']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"\nload after: `{load}`")


if __name__ == "__main__":
    main()
