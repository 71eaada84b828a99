"""Time the simulate stage and measure what it writes (issue 18 budgets: <= 60 s, raw <= ~2x the old world).

    .venv/bin/python benchmarks/bench_simulate.py                 # default size (params.yaml as shipped)
    .venv/bin/python benchmarks/bench_simulate.py --size bench     # 500 x 500 px mapping tiles

Writes into ``--workdir`` (default /tmp/soilmoisture-bench-simulate-<size>). Prints one Markdown table row for
benchmarks/RESULTS.md ("Simulated world"): wall and CPU seconds (this process and its workers), the load average
at the start (the reference machine is shared: CPU seconds are the comparable figure), raw files and MB per
source folder, truth MB.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["default", "bench"], default="default")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from soilmoisture import config
    from soilmoisture.simulate import run

    work = args.workdir or Path(f"/tmp/soilmoisture-bench-simulate-{args.size}")
    work.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["simulate"]["size"] = args.size
    raw["data"]["remedhus_csv"] = None
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = config.load(work / "params.yaml")
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    run(params)
    wall = time.perf_counter() - t0
    c1, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime) + ch.ru_utime + ch.ru_stime
    raw_dir, truth = params.path(params.paths.raw), params.path(params.paths.truth)
    files = sum(1 for p in raw_dir.rglob("*") if p.is_file())
    parts = ", ".join(f"{d.name} {_size_mb(d):.0f}" for d in sorted(raw_dir.iterdir()) if d.is_dir())
    print(f"| {args.size} | {wall:.1f} | {cpu:.1f} | {load:.1f} | {files} | {_size_mb(raw_dir):.0f} ({parts}) | "
          f"{_size_mb(truth):.0f} |")


if __name__ == "__main__":
    main()
