"""Time the ingest stage (raw files -> harmonised daily table) on a simulated area.

    .venv/bin/python benchmarks/bench_ingest.py --size bench   # 500 x 500 px tiles, all probes, 883 days
    .venv/bin/python benchmarks/bench_ingest.py --size default  # 64 x 64 px tiles

The area is simulated once into ``--workdir`` (reused when it exists: only ingestion is timed).
Prints one Markdown table row for benchmarks/RESULTS.md ("Ingestion").
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["default", "bench"], default="bench")
    ap.add_argument("--workdir", type=Path, default=None, help="default: /tmp/soilmoisture-bench-ingest-<size>")
    ap.add_argument("--repeats", type=int, default=1, help="timed ingest runs (best is reported)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from soilmoisture import config
    from soilmoisture.harmonise import run as ingest

    work = args.workdir or Path(f"/tmp/soilmoisture-bench-ingest-{args.size}")
    work.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["simulate"]["size"] = args.size
    raw["data"]["remedhus_csv"] = None
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = config.load(work / "params.yaml")

    sim_s = None
    if not (params.path(params.paths.raw) / "manifest.json").is_file():
        from soilmoisture.simulate import run as simulate

        t0 = time.perf_counter()
        simulate(params)
        sim_s = time.perf_counter() - t0
    n_files = sum(1 for _ in params.path(params.paths.raw).rglob("*") if _.is_file())

    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ingest(params)
        best = min(best, time.perf_counter() - t0)
    report = json.loads((params.path(params.paths.interim) / "ingest_report.json").read_text())
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"| ingest ({args.size}: {params.simulate.tile} px tiles) | {report['probes']} probes x {report['days']} days, "
          f"{n_files} raw files | {best:.1f} s | {machine} |"
          + (f" (simulate took {sim_s:.1f} s)" if sim_s is not None else ""))


if __name__ == "__main__":
    main()
