"""Figures of the simulated area (docs/simulation.md): sigma0 vs SSM by land cover, SSM series by land cover
and region. ``python -m soilmoisture.simulate.figures --params params.yaml --out docs/figures``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from soilmoisture.errors import DataError, SoilMoistureError
from soilmoisture.schema import CORINE

log = logging.getLogger(__name__)
COLORS = {"denmark": "tab:blue", "finland": "tab:purple", "spain": "tab:orange", "sweden": "tab:green"}

# Land-cover groups shown (CORINE codes), in the order of thesis Table 4.
GROUPS = {"arable & agriculture (211, 212, 242, 243)": (211, 212, 242, 243),
          "vineyards, grass, heath, sand (221, 321, 322, 331)": (221, 321, 322, 331),
          "coniferous forest (312)": (312,), "peat bogs (412)": (412,)}


def _load(raw_dir: Path, truth_dir: Path):  # noqa: ANN202 - pandas imported lazily
    import pandas as pd

    man_path, truth_path = raw_dir / "manifest.json", truth_dir / "probes_truth.parquet"
    for p in (man_path, truth_path):
        if not p.is_file():
            raise DataError(p, "not found: simulate the area first (`soilmoisture simulate`)")
    probes = pd.DataFrame(json.loads(man_path.read_text())["probes"])
    truth = pd.read_parquet(truth_path)
    return truth.merge(probes[["probe_id", "landcover_code"]], on="probe_id", how="left")


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - matplotlib figure
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=66, metadata={"Software": None})   # no version/time stamps: reproducible bytes
    os.replace(tmp, path)
    return path


def make_figures(raw_dir: Path, truth_dir: Path, out_dir: Path) -> list[Path]:
    """Write ``sim_sigma0_vs_ssm.png`` and ``sim_ssm_series.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw_dir, truth_dir, out_dir = Path(raw_dir), Path(truth_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = _load(raw_dir, truth_dir)
    out = []

    # 1. sigma0 (before speckle) vs SSM at the probes, by land-cover group, unfrozen overpass days.
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(13, 3.6), sharey=True)
    s1 = df.dropna(subset=["sigma0_vv_true"])
    s1 = s1[~s1["frozen"]]
    for ax, (label, codes) in zip(axes, GROUPS.items()):
        g = s1[s1["landcover_code"].isin(codes)]
        for region, gr in g.groupby("region"):
            ax.scatter(gr["ssm_true"], 10 * np.log10(gr["sigma0_vv_true"]), s=2, alpha=0.35, label=region,
                       rasterized=True, color=COLORS.get(str(region), "grey"))
        if len(g) > 2:
            k, c = np.polyfit(g["ssm_true"], 10 * np.log10(g["sigma0_vv_true"]), 1)
            xs = np.linspace(g["ssm_true"].min(), g["ssm_true"].max(), 2)
            ax.plot(xs, k * xs + c, "k-", lw=1)
            ax.set_title(f"{label}\nslope {k:.0f} dB per m3/m3", fontsize=9)
        else:
            ax.set_title(label, fontsize=9)
        ax.set_xlabel("SSM truth (m3/m3)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("sigma0 VV (dB, before speckle)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=r) for r, c in COLORS.items()
               if r in set(s1["region"])]
    axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle("Simulated Sentinel-1 backscatter (water-cloud model) vs surface soil moisture", fontsize=10)
    fig.tight_layout()
    out.append(_save(fig, out_dir / "sim_sigma0_vs_ssm.png"))
    plt.close(fig)

    # 2. SSM series: mean over probes of each land cover, per region; frozen days shaded.
    regions = list(dict.fromkeys(df["region"]))
    fig, axes = plt.subplots(len(regions), 1, figsize=(10, 2.0 * len(regions)), sharex=True, squeeze=False)
    for ax, region in zip(axes[:, 0], regions):
        g = df[df["region"] == region]
        for code, gc in g.groupby("landcover_code"):
            series = gc.groupby("date")["ssm_true"].mean()
            ax.plot(series.index, series.to_numpy(), lw=0.7, label=f"{code} {CORINE.get(int(code), '')}")
        frozen = g.groupby("date")["frozen"].mean()
        ax.fill_between(frozen.index, 0, 0.55, where=frozen.to_numpy() > 0.5, color="lightblue", alpha=0.4,
                        step="mid", label="frozen (most probes)")
        ax.set_ylim(0, 0.55)
        ax.set_ylabel("SSM (m3/m3)")
        ax.set_title(region, fontsize=9, loc="left")
        ax.legend(fontsize=7, ncol=3, loc="upper right")
        ax.grid(alpha=0.3)
    fig.suptitle("Simulated surface soil moisture (truth) at the probes, by land cover", fontsize=10)
    fig.tight_layout()
    out.append(_save(fig, out_dir / "sim_ssm_series.png"))
    plt.close(fig)
    log.info("figures written: %s", ", ".join(str(p) for p in out))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m soilmoisture.simulate.figures --params params.yaml --out docs/figures``."""
    from soilmoisture import config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = config.load(args.params)
        for p in make_figures(params.path(params.paths.raw), params.path(params.paths.truth), args.out):
            print(p)
    except SoilMoistureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
