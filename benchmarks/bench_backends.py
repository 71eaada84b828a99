"""Optuna trials per minute with 2 worker processes on SQLite vs PostgreSQL, and how many hit lock errors.

    .venv/bin/python benchmarks/bench_backends.py --trials 16
    .venv/bin/python benchmarks/bench_backends.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

The tiny simulated area (10 probes x 365 days) is simulated and ingested once into ``--workdir``; each backend
gets a fresh study (PostgreSQL: a fresh database, dropped afterwards) searched by two ``tune.worker``
processes with tiny trials (1 LSTM/GRU layer of 4-8 units, 1-2 epochs, one fold) and a 1 s heartbeat, so the
storage is written often. Prints Markdown table rows for benchmarks/RESULTS.md ("Shared backends").
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK_PATTERNS = ("database is locked", "could not serialize", "deadlock detected", "could not obtain lock")
TINY = {"simulate.probes_per_region": {"denmark": 3, "finland": 2, "spain": 3, "sweden": 2},
        "simulate.tile_px": {"default": 16, "bench": 500}, "simulate.start": "2017-01-01",
        "simulate.end": "2017-12-31", "data.start": "2017-01-01", "data.end": "2017-12-31",
        "data.remedhus_csv": None}
SEARCH = {"tune.max_epochs": 2, "tune.space.epochs_min": 1, "tune.space.layers": [1, 1], "tune.space.units": [4, 8],
          "tune.space.cells": ["lstm", "gru"], "tune.folds_per_trial": 1, "tune.heartbeat_seconds": 1,
          "tune.grace_seconds": 10, "tune.pruner": {"startup_trials": 1000, "warmup_epochs": 0}}
WORKER = ("import json, logging, sys\n"
          "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')\n"
          "logging.getLogger('soilmoisture.protocol.tune').setLevel(logging.DEBUG)  # heartbeat failures\n"
          "from soilmoisture import config; from soilmoisture.protocol import tune\n"
          "print('RAN=' + json.dumps(tune.worker(config.load(sys.argv[1]))), flush=True)\n")


def write_params(root: Path, overrides: dict) -> Path:
    from soilmoisture.config import apply_override

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in overrides.items():
        apply_override(raw, k, v)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def prepare_area(work: Path) -> None:
    """Simulate and ingest the tiny area once; publish the harmonised tables as processed (the gate is not timed)."""
    from soilmoisture import config, stages

    params = config.load(write_params(work, TINY))
    if not (params.path(params.paths.processed) / "daily.parquet").is_file():
        stages.simulate(params)
        stages.ingest(params)
        shutil.copytree(params.path(params.paths.interim), params.path(params.paths.processed), dirs_exist_ok=True)


def run_backend(work: Path, label: str, storage: str, n_trials: int) -> dict:
    """Two workers on one fresh study in ``storage``; trials per minute, states and lock errors."""
    from soilmoisture import config
    from soilmoisture.protocol import tune

    case = work / label
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    for sub in ("data",):
        (case / sub).symlink_to(work / sub)
    path = write_params(case, {**TINY, **SEARCH, "tune.n_trials": n_trials, "tune.storage": storage,
                               "tune.study_name": f"bench-{label}"})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SOILMOISTURE_OPTUNA_STORAGE", None)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    stderr = "\n".join(err for _, err in outs)
    trials = tune.open_study(config.load(path)).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return {"backend": label, "storage": storage, "workers_rc": [p.returncode for p in procs],
            "trials": len(trials), "finished": len(done),
            "failed": sum(t.state.name == "FAIL" for t in trials),
            "ran": [json.loads(line[4:]) for out, _ in outs for line in out.splitlines() if line.startswith("RAN=")],
            "wall_s": wall, "trial_span_s": span,
            "trials_per_min_wall": 60 * len(done) / wall, "trials_per_min_span": 60 * len(done) / span,
            "lock_errors": {p: stderr.count(p) for p in LOCK_PATTERNS},
            "heartbeat_failures": len(re.findall(r"heartbeat of trial \d+ failed", stderr)),
            "stderr_tail": stderr[-1500:] if any(p.returncode for p in procs) else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16, help="trials per study (default 16)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/soilmoisture-bench-backends"))
    ap.add_argument("--postgres-url", default=os.environ.get("SOILMOISTURE_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="a role allowed to create databases (a fresh one is created and dropped)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest_postgres import admin_execute, with_database

    from soilmoisture.tracking import mask_url

    args.workdir.mkdir(parents=True, exist_ok=True)
    prepare_area(args.workdir)
    results = [run_backend(args.workdir, "sqlite", f"sqlite:///{args.workdir / 'sqlite' / 'optuna.db'}", args.trials)]
    name = f"sm_bench_{uuid.uuid4().hex[:8]}"
    admin_execute(args.postgres_url, f'create database "{name}"')
    try:
        results.append(run_backend(args.workdir, "postgresql", with_database(args.postgres_url, name), args.trials))
    finally:
        admin_execute(args.postgres_url, f'drop database if exists "{name}" with (force)')
    load = os.getloadavg()
    for r in results:
        r["storage"] = mask_url(r["storage"])
        print(json.dumps(r, default=str), file=sys.stderr)
    print(f"\nload average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), "
          f"{os.cpu_count()} cores")
    print("| storage | trials finished / failed | wall (2 workers, incl. start-up) | trials/min (wall) | "
          "trials/min (first start to last finish) | lock errors in worker logs | heartbeat writes failed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        locks = sum(r["lock_errors"].values())
        print(f"| {r['backend']} | {r['finished']} / {r['failed']} | {r['wall_s']:.1f} s | "
              f"{r['trials_per_min_wall']:.1f} | {r['trials_per_min_span']:.1f} | {locks} | {r['heartbeat_failures']} |")


if __name__ == "__main__":
    main()
