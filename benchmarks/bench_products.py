"""Benchmark: writing each map format (``map.format``) from the same staged layers, time and size on disk,
next to today's product (the ssm stack alone as one multi-band COG), in one run.

Maps: ``--size default`` - the default map (the default simulated area's Spain tile, 64 x 64 px, ``map.start..
map.end`` of params.yaml: 30 days); ``--size bench`` - the bench map (500 x 500 px = 250,000 px x 883 days, the
area of ``bench_maps.py``, simulated into ``--root`` when missing, ~4-5 min). The map itself is made once by
``mapping.make_map`` (cog-stack, the mappable LSTM with seeded weights, interval offsets fixed at -0.05/+0.06
m3/m3: the cost does not depend on the values); its four layers are re-staged as the tiled uncompressed GeoTIFFs
``make_map`` writes window by window (not timed), and each writer of ``mapping.formats`` is timed on them.

    .venv/bin/python benchmarks/bench_products.py --size default --root /tmp/bench_products_default
    .venv/bin/python benchmarks/bench_products.py --size bench --root /tmp/bench_maps
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger("bench_products")


def ensure_default_area(root: Path) -> Path:
    from conftest import write_params

    from soilmoisture import config
    from soilmoisture.simulate import run

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    own = yaml.safe_load((ROOT / "params.yaml").read_text())   # the project's defaults, not the tests' tiny area
    params_file = write_params(root, {**{f"simulate.{k}": own["simulate"][k] for k in
                                         ("probes_per_region", "tile_px", "start", "end")},
                                      "data.start": own["data"]["start"], "data.end": own["data"]["end"],
                                      "simulate.size": "default", "simulate.hold_back_days": 0})
    if not (root / "data" / "raw" / "static" / "spain_clc.tif").is_file():
        run(config.load(params_file))
    return params_file


def size_mb(p: Path) -> float:
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["default", "bench"], default="default")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--window-px", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("soilmoisture.mapping.products").setLevel(logging.WARNING)
    import numpy as np
    import rasterio
    from rasterio.shutil import copy as rio_copy

    from soilmoisture import config, mapping
    from soilmoisture.mapping import formats
    from soilmoisture.model.jax_engine import init_weights

    root = args.root or Path(f"/tmp/bench_products_{args.size}")
    if args.size == "bench":
        from bench_maps import ensure_area

        params = config.load(ensure_area(root))
        start, end = params.data.start, params.data.end
    else:
        params = config.load(ensure_default_area(root))
        start, end = params.map.start, params.map.end
    feats = params.variants["mappable"].features
    src = mapping.open_sources(params.path(params.paths.raw), "spain")
    model = mapping.MapModel(init_weights(7, len(feats), params.model), feats, np.zeros(len(feats), np.float32),
                             np.ones(len(feats), np.float32), name="bench-mappable")
    prov = formats.Provenance("bench-mappable", "1", "champion", "run", "models:/bench-mappable@champion", "bench",
                              params.data.start, end, "spain", tuple(feats), 0.9, (-0.05, 0.06), "bench offsets", "run")
    work = root / "bench_products"
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    res = mapping.make_map(model, src, work / "made" / "ssm_map.tif", start=start, end=end,
                           warmup_start=params.data.start, stat_range=(params.data.start, params.data.end),
                           window_px=args.window_px, fmt="cog-stack", provenance=prov)
    t_map = time.perf_counter() - t
    src.close()
    log.info("map %d x %d px x %d days made in %.1f s (%s)", res.shape[1], res.shape[0], len(res.dates), t_map,
             ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))

    # Re-stage the layers as make_map writes them (tiled, uncompressed, band = day).
    stage = work / "stage"
    stage.mkdir(parents=True)
    layers = {}
    for layer in res.layers:
        layers[layer] = stage / f"{layer}.tif"
        rio_copy(formats.layer_file(res.path, layer), layers[layer], driver="GTiff", tiled=True, blockxsize=256,
                 blockysize=256, interleave="band", BIGTIFF="IF_SAFER")
    with rasterio.open(layers["ssm"]) as ds:
        crs, tr, W, H = ds.crs, ds.transform, ds.width, ds.height
    st_all = formats.Staged(layers, res.dates, crs, tr, W, H, {"UNITS": "m3/m3"})
    st_today = formats.Staged({"ssm": layers["ssm"]}, res.dates, crs, tr, W, H, {"UNITS": "m3/m3"})
    no_interval = formats.Provenance(**{**prov.__dict__, "interval_coverage": float("nan")})
    rows = []
    runs = [("today: ssm stack only (cog-stack, 1 layer)", "cog-stack", st_today, no_interval)]
    runs += [(f"{fmt} (4 layers)", fmt, st_all, prov) for fmt in formats.FORMATS]
    for label, fmt, st, pv in runs:
        out_dir = work / fmt.replace("-", "_") / ("today" if st is st_today else "all")
        out_dir.mkdir(parents=True)
        out = formats.product_path(out_dir, start, end, fmt)
        t = time.perf_counter()
        formats.write_product(st, fmt, out, pv, overviews=max(H, W) > mapping.products.COG_OVERVIEWS_MIN_PX)
        secs = time.perf_counter() - t
        files = [f for f in out_dir.rglob("*") if f.is_file()]
        rows.append((label, secs, size_mb(out_dir), len(files)))
        log.info("%s: %.1f s, %.1f MB, %d files", label, secs, rows[-1][2], len(files))
    staged_mb = sum(size_mb(p) for p in layers.values())
    load = os.getloadavg()
    print(f"\nmap {W} x {H} px x {len(res.dates)} days (made in {t_map:.1f} s; staged layers {staged_mb:.0f} MB "
          f"uncompressed); load average {load[0]:.1f} at the end")
    print("\n| product | write (s) | vs today | size on disk (MB) | vs today | files |\n|---|---|---|---|---|---|")
    base_t, base_mb = rows[0][1], rows[0][2]
    for label, secs, mb, n in rows:
        print(f"| {label} | {secs:.2f} | {secs / base_t:.1f}x | {mb:.1f} | {mb / base_mb:.1f}x | {n:,} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
