"""The realism table: the same statistics on a simulated region and on the real REMEDHUS export (markdown).

    .venv/bin/python scripts/realism_table.py [--params params.yaml] [--processed data/processed]
        [--region spain] [--real-csv ../shared/data/remedhus/SM_Data_REMEDHUS.csv] [--out FILE]

The simulated side is the published daily table (``paths.processed``, after ingest and the quality gate: probe
readings with their sensor errors, σ⁰ at the probe pixel), so it is compared reading for reading with the real
export. Both are cut to the period they share; count-dependent statistics use random 5-probe subsets of the
simulated region (the export has 5 probes). The climatology baseline is fit before ``protocol.split_date`` and
scored after it. Exit code 1 when the simulated network-day baseline is more than 1.5 x easier than the real one
(issue 18's target), so the script can gate a world change; the table is printed either way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from soilmoisture import config
from soilmoisture.evaluate import realism
from soilmoisture.sources.remedhus import read_remedhus


def _coords(probes: pd.DataFrame) -> pd.DataFrame:
    x, y = realism.local_km(probes["lat"].to_numpy(), probes["lon"].to_numpy())
    return pd.DataFrame({"probe_id": probes["probe_id"].astype(str), "x_km": x, "y_km": y})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--processed", help="folder with daily.parquet and probes.parquet (default: paths.processed)")
    ap.add_argument("--region", default="spain", help="simulated region compared with the real export")
    ap.add_argument("--real-csv", help="the REMEDHUS export (default: data.remedhus_csv)")
    ap.add_argument("--subsets", type=int, default=200, help="random 5-probe subsets of the simulated region")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    params = config.load(args.params)
    processed = Path(args.processed) if args.processed else params.path(params.paths.processed)
    real_csv = Path(args.real_csv) if args.real_csv else params.path(params.data.remedhus_csv)
    for p in (processed / "daily.parquet", processed / "probes.parquet", real_csv):
        if not p.exists():
            print(f"error: {p}: not found (run `make run` for the simulated tables; the real export is "
                  "data.remedhus_csv)", file=sys.stderr)
            return 2
    sim = pd.read_parquet(processed / "daily.parquet")
    sim_probes = pd.read_parquet(processed / "probes.parquet")
    sim = sim.loc[sim["region"] == args.region]
    if sim.empty:
        print(f"error: {processed / 'daily.parquet'}: no rows for region {args.region!r} "
              f"(regions: {sorted(pd.read_parquet(processed / 'daily.parquet', columns=['region'])['region'].unique())})",
              file=sys.stderr)
        return 2
    real, _real_probes = read_remedhus(real_csv)
    start = max(sim["date"].min(), real["date"].min()).date().isoformat()
    end = min(sim["date"].max(), real["date"].max()).date().isoformat()
    split = params.protocol.split_date
    coords = _coords(sim_probes.loc[sim_probes["region"] == args.region])
    columns = {
        f"simulated {args.region}": realism.network_stats(sim, start=start, end=end, split_date=split,
                                                          coords_km=coords, n_subsets=args.subsets),
        # The export has no coordinates (remedhus.py): no distance fall-off on the real side.
        "real REMEDHUS export": realism.network_stats(real, start=start, end=end, split_date=split),
    }
    sim_s, real_s = columns.values()
    ratio, ok = realism.ratio_check(sim_s, real_s)
    text = (f"Period {start}..{end}; climatology fit before {split}. Simulated: random {5}-probe subsets of "
            f"{sim_s.n_probes} probes (mean, and 5–95 % range of the subsets).\n\n"
            + realism.markdown(columns) + "\n" + realism.falloff_markdown(columns)
            + f"Network-day baseline: the real export's MAE is {ratio:.2f} × the simulated one's "
            f"({'within' if ok else 'outside'} the 1.5 × target).\n")
    print(text)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
