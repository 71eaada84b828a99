"""Benchmark: daily maps of 5 x 5 km at 10 m (500 x 500 = 250,000 pixels) x 883 days, and a plain Keras
``model.predict`` over the same pixels in the same run, for the ratio.

Data: the bench-size simulated area, Spain only (one 500 x 500 px tile, 2016-09-20..2019-02-19: 295 Sentinel-1
and 177 Sentinel-2 scenes), generated into ``--root`` when it is not there yet (~4-5 min).
Model: the mappable variant's LSTM (2 x 16) with seeded initial weights (cost does not depend on the values).
The map is the whole pipeline of ``mapping.make_map``: per-window feature cubes from the raster files
(sigma0 outlier rules, NDVI/NDWI interpolation, weather, terrain), JAX prediction, windowed writes, COG
conversion. The plain ``model.predict`` is timed on a sample of pixels (``--sample``, default 2048) of the
normalised dense cube and extrapolated linearly to all pixels (it is linear in the number of series).

    .venv/bin/python benchmarks/bench_maps.py --root /tmp/bench_maps          # full tile
    .venv/bin/python benchmarks/bench_maps.py --root /tmp/bench_maps --aoi-px 250   # a quarter: memory check
    .venv/bin/python benchmarks/bench_maps.py --root /tmp/bench_maps --memory-series 128,256,384,500 --window-px 128
        # memory flat as the area grows: each size in a fresh process, peak RSS of it and its workers
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
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger("bench_maps")


def ensure_area(root: Path) -> Path:
    """The bench-size Spain tile under ``root`` (simulated once); returns its params.yaml."""
    from conftest import write_params

    from soilmoisture import config
    from soilmoisture.simulate import run

    root.mkdir(parents=True, exist_ok=True)
    # Rewritten every time from the project's params.yaml (keys may have been added since the area was made).
    params_file = write_params(root, {
        "simulate.size": "bench", "simulate.probes_per_region": {"denmark": 0, "finland": 0, "spain": 20, "sweden": 0},
        "simulate.start": "2016-09-20", "simulate.end": "2019-02-19", "data.start": "2016-09-20",
        "data.end": "2019-02-19"})
    if (root / "data" / "raw" / "static" / "spain_clc.tif").is_file():
        return params_file
    t = time.perf_counter()
    run(config.load(params_file))
    log.info("simulated the bench area in %.0f s", time.perf_counter() - t)
    return params_file


def peak_rss_mb() -> float:
    """Peak resident memory (MB) of this process and of the largest of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def memory_series(args: argparse.Namespace) -> None:
    """Map growing areas, each in a fresh process (independent peaks); print a Markdown table."""
    import json
    import subprocess

    rows = []
    for px in [int(v) for v in args.memory_series.split(",")]:
        cmd = [sys.executable, __file__, "--root", str(args.root), "--aoi-px", str(px), "--window-px",
               str(args.window_px), "--skip-keras", "--json", "--runner", args.runner, "--workers", str(args.workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
        print(rows[-1], flush=True)
    print(f"\n`{' '.join(['.venv/bin/python', 'benchmarks/bench_maps.py', '--root', str(args.root), '--memory-series', args.memory_series, '--window-px', str(args.window_px), '--runner', args.runner])}`\n")
    print("| area (px) | pixels | windows | wall | peak RSS |\n|---|---|---|---|---|")
    for r in rows:
        w, h = r["aoi_px"]
        print(f"| {w} x {h} | {w * h:,} | {r['windows']} | {r['seconds']:.1f} s | {r['peak_rss_mb']:,} MB |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/bench_maps"))
    ap.add_argument("--aoi-px", type=int, default=None, help="map only the top-left N x N pixels (memory check)")
    ap.add_argument("--window-px", type=int, default=256)
    ap.add_argument("--sample", type=int, default=2048, help="pixels for the plain model.predict timing")
    ap.add_argument("--skip-keras", action="store_true", help="time the map only")
    ap.add_argument("--runner", choices=["local", "dask_local"], default="local",
                    help="local: this process (threads); dask_local: a LocalCluster of --workers processes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-series", default=None,
                    help="comma-separated AOI sizes (px): map each in a fresh process and report its peak RSS")
    ap.add_argument("--json", action="store_true", help="print one JSON line of results (used by --memory-series)")
    args = ap.parse_args()
    if args.memory_series:
        memory_series(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from rasterio.windows import Window

    from soilmoisture import config, mapping
    from soilmoisture.model.jax_engine import init_weights

    params = config.load(ensure_area(args.root))
    feats = params.variants["mappable"].features
    src = mapping.open_sources(params.path(params.paths.raw), "spain")
    H, W = src.grid.height, src.grid.width
    aoi = Window(0, 0, args.aoi_px or W, args.aoi_px or H)
    n_px = int(aoi.width * aoi.height)
    stat = (params.data.start, params.data.end)

    # Normalisation from a small sample cube (values do not change the cost).
    sample_cube = mapping.build_cube(src, Window(0, 0, 64, 32), params.data.dates, feats, stat_range=stat)
    dense = sample_cube.dense(feats).reshape(-1, len(feats))
    mean = np.nan_to_num(np.nanmean(dense, axis=0))
    std = np.nan_to_num(np.nanstd(dense, axis=0), nan=1.0) + 1e-3
    model = mapping.MapModel(init_weights(7, len(feats), params.model), feats, mean, std, name="bench-mappable")

    t0 = time.perf_counter()
    runner = config.Runner(kind=args.runner, address=None, n_workers=args.workers)
    res = mapping.make_map(model, src, args.root / "maps" / "bench.tif", start=params.data.start, end=params.data.end,
                           warmup_start=params.data.start, stat_range=stat, window_px=args.window_px, aoi=aoi,
                           runner=runner)
    t_map = time.perf_counter() - t0
    rss_map = peak_rss_mb()
    if args.json:
        import json

        print(json.dumps({"aoi_px": [int(aoi.width), int(aoi.height)], "window_px": args.window_px,
                          "windows": -(-int(aoi.width) // args.window_px) * -(-int(aoi.height) // args.window_px),
                          "seconds": round(t_map, 1), "peak_rss_mb": round(rss_map)}))
    if args.skip_keras:
        src.close()
        print(f"map {int(aoi.width)} x {int(aoi.height)} px: {t_map:.1f} s wall "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in res.seconds.items())}); peak RSS {rss_map:.0f} MB")
        return

    # Plain Keras model.predict on a sample of the same pixels (dense normalised cube), extrapolated.
    from soilmoisture.model.interface import normalise
    from soilmoisture.model.keras_model import build_model

    side = int(np.sqrt(args.sample))
    cube = mapping.build_cube(src, Window(0, 0, side, args.sample // side), params.data.dates, feats, stat_range=stat)
    x = normalise(cube.dense(feats), mean, std)
    net = build_model(params.model, len(feats))
    net.set_weights(model.weights)
    net.predict(x[:256], batch_size=256, verbose=0)            # build/trace outside the timing
    t1 = time.perf_counter()
    y_keras = net.predict(x, batch_size=256, verbose=0)[..., 0]
    t_keras_sample = time.perf_counter() - t1
    t_keras = t_keras_sample * n_px / len(x)
    # Same pixels through the map's JAX path: the two agree (a check, not timed).
    y_jax = mapping.predict_cube(model, cube).T
    ok = np.isfinite(y_jax)
    diff = float(np.abs(y_jax[ok] - y_keras[ok]).max())
    src.close()

    days = len(res.dates)
    load = os.getloadavg()
    print(f"\nmap {int(aoi.width)} x {int(aoi.height)} px x {days} days: {t_map:.1f} s wall "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in res.seconds.items())}); peak RSS {rss_map:.0f} MB")
    print(f"plain keras model.predict: {t_keras_sample:.1f} s for {len(x)} pixels -> {t_keras:.0f} s for {n_px} "
          f"(extrapolated); ratio (whole map pipeline vs predict alone) {t_keras / t_map:.1f}x; "
          f"max |jax - keras| {diff:.2e}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end")
    s = res.seconds
    phases = " / ".join(f"{k} {v:.1f}" for k, v in s.items() if v > 0)
    alone = f" (predict alone {t_keras / s['predict']:.1f}x)" if s.get("predict", 0) > 0 else ""
    print("\n| command | pixels x days | map wall (phases, s) | plain model.predict (extrapolated) | ratio | peak RSS |"
          "\n|---|---|---|---|---|---|")
    print(f"| `.venv/bin/python benchmarks/bench_maps.py --root {args.root}"
          f"{f' --aoi-px {args.aoi_px}' if args.aoi_px else ''} --runner {args.runner}` | {n_px:,} x {days} | "
          f"{t_map:.1f} s ({phases}) | {t_keras:.0f} s ({len(x)} px in {t_keras_sample:.1f} s) | "
          f"{t_keras / t_map:.1f}x{alone} | {rss_map:.0f} MB |")

if __name__ == "__main__":
    main()
