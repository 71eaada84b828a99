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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/bench_maps"))
    ap.add_argument("--aoi-px", type=int, default=None, help="map only the top-left N x N pixels (memory check)")
    ap.add_argument("--window-px", type=int, default=256)
    ap.add_argument("--sample", type=int, default=2048, help="pixels for the plain model.predict timing")
    args = ap.parse_args()
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
    res = mapping.make_map(model, src, args.root / "maps" / "bench.tif", start=params.data.start, end=params.data.end,
                           warmup_start=params.data.start, stat_range=stat, window_px=args.window_px, aoi=aoi)
    t_map = time.perf_counter() - t0
    rss_map = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

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
          f"(extrapolated); ratio (whole map pipeline vs predict alone) {t_keras / t_map:.1f}x, "
          f"JAX prediction alone vs predict {t_keras / res.seconds['predict']:.1f}x; max |jax - keras| {diff:.2e}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end")
    print("\n| command | pixels x days | map wall (features / predict / write / COG) | plain model.predict "
          "(extrapolated) | ratio | peak RSS |\n|---|---|---|---|---|---|")
    s = res.seconds
    print(f"| `.venv/bin/python benchmarks/bench_maps.py --root {args.root}"
          f"{f' --aoi-px {args.aoi_px}' if args.aoi_px else ''}` | {n_px:,} x {days} | {t_map:.1f} s "
          f"({s['features']:.1f} / {s['predict']:.1f} / {s['write']:.1f} / {s['cog']:.1f}) | {t_keras:.0f} s "
          f"({len(x)} px in {t_keras_sample:.1f} s) | {t_keras / t_map:.1f}x (predict alone {t_keras / s['predict']:.1f}x) "
          f"| {rss_map:.0f} MB |")


if __name__ == "__main__":
    main()
