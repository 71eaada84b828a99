"""Exploratory figures of the processed data set (thesis 3.2.6, Figs. 11-13).

Spearman rank correlations (the thesis chose them for the non-parametric data) for the static and
the dynamic variables, violin plots of min-max normalised variables (distributions, multimodality)
and hexbin density plots of SSM against sigma0 and NDWI (non-linear relationships). Figures go to
``paths.reports/describe/`` with the correlation matrices as CSV beside them.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.config import Params
from soilmoisture.errors import DataError
from soilmoisture.harmonise import file_mode
from soilmoisture.schema import DYNAMIC_FEATURES, STATIC_FEATURES, TARGET

log = logging.getLogger(__name__)

FIGURES = ("spearman_static.png", "spearman_dynamic.png", "violins.png", "hexbin_ssm_sigma0.png",
           "hexbin_ssm_ndwi.png")


def spearman(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Spearman rank correlation of ``columns`` (pairwise complete; constant or empty columns dropped)."""
    cols = [c for c in columns if c in df and df[c].notna().sum() > 2 and df[c].nunique(dropna=True) > 1]
    return df[cols].astype("float64").corr(method="spearman")


def static_table(daily: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """One row per probe: static variables and the probe's mean observed SSM (m3/m3)."""
    mean_ssm = daily.groupby("probe_id")[TARGET].mean().rename("ssm_mean")
    return probes.set_index("probe_id").join(mean_ssm).reset_index()


def normalised(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Min-max normalised copies of ``columns`` (each to [0, 1]) for side-by-side violins."""
    out = {}
    for c in columns:
        s = df[c].astype("float64")
        lo, hi = s.min(), s.max()
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            out[c] = (s - lo) / (hi - lo)
    return pd.DataFrame(out)


def _save(fig: Any, path: Path) -> None:
    """Save a figure atomically (temporary name in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save_csv(df: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".csv", dir=path.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, float_format="%.4f")
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _heatmap(corr: pd.DataFrame, title: str) -> Any:
    import matplotlib.pyplot as plt

    n = max(len(corr), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(corr)), corr.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(corr)), corr.index, fontsize=8)
    for i in range(len(corr)):
        for j in range(len(corr)):
            v = corr.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Spearman rho")
    ax.set_title(title)
    return fig


def _hexbin(x: pd.Series, y: pd.Series, xlabel: str, title: str) -> Any:
    import matplotlib.pyplot as plt

    ok = x.notna() & y.notna()
    fig, ax = plt.subplots(figsize=(5, 4))
    if ok.sum() > 0:
        hb = ax.hexbin(x[ok], y[ok], gridsize=30, mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="days (count)")
    else:
        ax.text(0.5, 0.5, "no pairs", ha="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SSM (m3/m3)")
    ax.set_title(f"{title} (n = {int(ok.sum())})")
    return fig


def write_figures(daily: pd.DataFrame, probes: pd.DataFrame, out: Path) -> dict[str, Path]:
    """All exploratory figures (+ correlation CSVs) into ``out``; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    static = static_table(daily, probes)
    corr_s = spearman(static, [*STATIC_FEATURES, "ssm_mean"])
    corr_d = spearman(daily, [TARGET, *DYNAMIC_FEATURES])
    for name, corr, title in (("spearman_static", corr_s, "Static variables (per probe)"),
                              ("spearman_dynamic", corr_d, "Dynamic variables (per day)")):
        fig = _heatmap(corr, title)
        _save(fig, out / f"{name}.png")
        plt.close(fig)
        _save_csv(corr, out / f"{name}.csv")
        written[f"{name}.png"] = out / f"{name}.png"
        written[f"{name}.csv"] = out / f"{name}.csv"

    norm = normalised(daily, [TARGET, *[c for c in DYNAMIC_FEATURES if c in daily]])
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * max(len(norm.columns), 1), 4))
    data = [norm[c].dropna().to_numpy() for c in norm.columns]
    keep = [i for i, d in enumerate(data) if d.size > 1]
    if keep:
        ax.violinplot([data[i] for i in keep], showmedians=True)
        ax.set_xticks(range(1, len(keep) + 1), [norm.columns[i] for i in keep], rotation=45, ha="right")
    ax.set_ylabel("min-max normalised value")
    ax.set_title("Distributions of the dynamic variables")
    _save(fig, out / "violins.png")
    plt.close(fig)
    written["violins.png"] = out / "violins.png"

    for col, label, name in (("sigma0_vv", "sigma0 VV (linear)", "hexbin_ssm_sigma0"),
                             ("ndwi", "NDWI", "hexbin_ssm_ndwi")):
        x = daily[col] if col in daily else pd.Series(np.nan, index=daily.index)
        fig = _hexbin(x.astype("float64"), daily[TARGET].astype("float64"), label, f"SSM vs {label}")
        _save(fig, out / f"{name}.png")
        plt.close(fig)
        written[f"{name}.png"] = out / f"{name}.png"
    return written


def run(params: Params) -> None:
    """The ``describe`` stage: figures of ``paths.processed`` into ``paths.reports``/describe."""
    src = params.path(params.paths.processed)
    tables = {}
    for name in ("daily", "probes"):
        f = src / f"{name}.parquet"
        if not f.is_file():
            raise DataError(f, "processed table not found (run `soilmoisture validate` first)")
        tables[name] = pd.read_parquet(f)
    out = params.path(params.paths.reports) / "describe"
    written = write_figures(tables["daily"], tables["probes"], out)
    log.info("describe: %d files in %s", len(written), out)
