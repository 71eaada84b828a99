"""Time the ismn package's metadata collection on a simulated ISMN folder: serial, parallel, and from the cache.

    .venv/bin/python benchmarks/bench_ismn.py --raw <simulated data/raw> [--repeats 2]

Serial vs the package's ``parallel=True`` (threads + a multiprocessing manager process) decides what
``sources/ismn.py`` uses; the cached case is what every ingest after the first pays (the cache is keyed on the
archive's content). Prints one Markdown table row per case for benchmarks/RESULTS.md ("ISMN metadata").
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True, help="a simulated data/raw (its ismn/ folder is read)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from ismn.interface import ISMN_Interface

    from soilmoisture.sources import ismn

    folder = args.raw / "ismn"
    n = sum(1 for _ in folder.rglob("*.stm"))
    times: dict[str, list[float]] = {"serial": [], "parallel": [], "cached": []}
    for _ in range(args.repeats):
        for mode in ("serial", "parallel"):
            work = Path(tempfile.mkdtemp(prefix="bench-ismn-"))
            try:
                t0 = time.perf_counter()
                with ismn._quiet_ismn():
                    ISMN_Interface(str(folder), meta_path=str(work), parallel=mode == "parallel", temp_root=str(work))
                times[mode].append(time.perf_counter() - t0)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="bench-ismn-"))
        try:
            ismn._interface(folder, work, work)              # builds the cache
            t0 = time.perf_counter()
            ismn._interface(folder, work, work)
            times["cached"].append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for mode, t in times.items():
        print(f"| `benchmarks/bench_ismn.py --raw {args.raw}` | {n} .stm files | {mode} | "
              f"{min(t):.2f}-{max(t):.2f} s ({len(t)} runs) |")


if __name__ == "__main__":
    main()
