"""The thesis' evaluation figures (4.2, Figs. 22-27) from the paired frame of :mod:`.compare`.

Each function returns a matplotlib Figure (Agg backend; nothing is shown); :func:`write_figures` saves
them as PNG atomically. SSM and errors are in m3/m3; error = predicted - observed (positive =
overestimation, as in the thesis' Fig. 26).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.evaluate.compare import DAY_SETS, MODEL, PRODUCT_LABELS, day_mask, label

log = logging.getLogger(__name__)

FIGURES = {
    "scatter_obs_pred.png": "Observed vs predicted SSM for the model, CSM and ECV_SM (thesis Figs. 24-25)",
    "error_density_weekly.png": "Weekly density of prediction errors over time (thesis Fig. 26)",
    "abs_error_by_landcover.png": "Absolute errors by land cover (thesis Fig. 23)",
    "mae_by_region.png": "MAE per region on each product's days (thesis Fig. 22)",
    "probe_series.png": "A probe's predicted and observed SSM with its sigma0 and precipitation (thesis Fig. 27)",
}
COLOURS = {MODEL: "#1b9e9e", "ecv_sm": "#7570b3", "csm": "#c51b7d", "obs": "#e6790f"}
SSM_UNIT = "m³/m³"


DENSE_POINTS = 5000   # above this many points a scatter saturates: draw a log-density hexbin instead


def _panels(paired: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(estimator, day set, rows) for the model on all days (every repeat) and each product on its own days.

    A product is the same in every protocol repeat, so only the first repeat's rows are drawn for it.
    """
    first = paired[paired["repeat"] == paired["repeat"].min()] if len(paired) else paired
    return [(MODEL, "all", paired[day_mask(paired, "all")])] + \
           [(p, p, first[day_mask(first, p)]) for p in DAY_SETS if p != "all"]


def _points(fig: Any, ax: Any, x: np.ndarray, y: np.ndarray, colour: str, hi: float) -> None:
    """A scatter for few points, a log-count hexbin (with colour bar) for many."""
    if len(x) > DENSE_POINTS:
        hb = ax.hexbin(x, y, gridsize=60, extent=(0, hi, 0, hi), bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, shrink=0.75, label="points per cell")
    else:
        ax.scatter(x, y, s=5, alpha=0.35, color=colour, edgecolors="none", rasterized=True)


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_obs_pred(paired: pd.DataFrame, overall: pd.DataFrame, variant: str) -> Any:
    """Observed (x) vs predicted (y) SSM, one panel per estimator, with n, MAE and Pearson r (Figs. 24-25)."""
    plt = _mpl()
    panels = _panels(paired)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    hi = max(0.6, float(np.nanmax(paired[["ssm", MODEL, *PRODUCT_LABELS]].to_numpy(float), initial=0.0)) * 1.05) \
        if len(paired) else 0.6
    for ax, (est, ds, rows) in zip(axes[0], panels):
        row = overall[(overall["days"] == ds) & (overall["estimator"] == est)]
        m = row.iloc[0] if len(row) else None
        if len(rows):
            _points(fig, ax, rows["ssm"].to_numpy(float), rows[est].to_numpy(float), COLOURS[est], hi)
        else:
            ax.text(0.5, 0.5, "no common days", ha="center", transform=ax.transAxes)
        ax.plot([0, hi], [0, hi], color="0.3", lw=0.8, ls="--", label="1:1")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"observed SSM ({SSM_UNIT})")
        ax.set_ylabel(f"predicted SSM ({SSM_UNIT})")
        days = "all observed days" if ds == "all" else f"{PRODUCT_LABELS[ds]} days"
        ax.set_title(f"{label(est, variant)} ({days})", fontsize=10)
        if m is not None:
            ax.text(0.03, 0.97, f"MAE = {m['mae']:.4f} {SSM_UNIT}\nr = {m['pearson_r']:.2f}\nn = {int(m['n'])} days",
                    transform=ax.transAxes, va="top", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    reps = paired["repeat"].nunique() if len(paired) else 0
    fig.suptitle("Observed vs predicted surface soil moisture"
                 + (f" (model: all {reps} repeats drawn)" if reps > 1 else ""))
    fig.tight_layout()
    return fig


def error_density_weekly(paired: pd.DataFrame, variant: str, bin_width: float = 0.02) -> Any:
    """Per estimator, a weekly count of errors (predicted - observed) in ``bin_width`` m3/m3 bins (Fig. 26)."""
    from matplotlib.colors import LogNorm

    plt = _mpl()
    panels = _panels(paired)
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), sharex=True, squeeze=False)
    dates = pd.to_datetime(paired["date"]) if len(paired) else pd.to_datetime(pd.Series([], dtype="datetime64[ns]"))
    start = (dates.min() if len(dates) else pd.Timestamp("2000-01-01")).normalize()
    end = (dates.max() if len(dates) else start) + pd.Timedelta(days=7)
    week_edges = pd.date_range(start, end, freq="7D")
    if len(week_edges) < 2:
        week_edges = pd.DatetimeIndex([start, start + pd.Timedelta(days=7)])
    err_edges = np.arange(-1.0, 1.0 + bin_width / 2, bin_width)
    x_edges = week_edges.to_numpy().astype("datetime64[D]").astype(float)
    hists, lim = [], 0.1
    for est, _ds, rows in panels:
        err = (rows[est] - rows["ssm"]).to_numpy(float)
        t = pd.to_datetime(rows["date"]).to_numpy().astype("datetime64[D]").astype(float)
        h, _, _ = np.histogram2d(t, err, bins=[x_edges, err_edges])
        hists.append(np.where(h > 0, h, np.nan))
        if err.size:  # one error range for every panel, so the panels compare at a glance
            lim = max(lim, float(np.nanpercentile(np.abs(err), 99.5)) * 1.1)
    lim = min(lim, 1.0)
    vmax = max([2.0] + [float(np.nanmax(h)) for h in hists if np.isfinite(h).any()])
    norm = LogNorm(vmin=1, vmax=vmax)  # one colour scale for every panel
    mesh = None
    for ax, (est, ds, rows), h in zip(axes[:, 0], panels, hists):
        if np.isfinite(h).any():
            mesh = ax.pcolormesh(week_edges.to_numpy(), err_edges, h.T, cmap="viridis", norm=norm, shading="flat")
        else:
            ax.text(0.5, 0.5, "no common days", ha="center", transform=ax.transAxes)
        ax.set_ylim(-lim, lim)
        ax.axhline(0, color="0.3", lw=0.6)
        days = "all observed days" if ds == "all" else f"{PRODUCT_LABELS[ds]} days"
        ax.set_title(f"{label(est, variant)} ({days}, {len(rows)} points)", fontsize=10)
        ax.set_ylabel(f"error ({SSM_UNIT})")
    axes[-1, 0].set_xlabel("date (weekly bins)")
    if mesh is not None:
        from matplotlib.ticker import LogLocator, ScalarFormatter

        cb = fig.colorbar(mesh, ax=axes[:, 0].tolist(), label=f"probe-days per week and {bin_width} {SSM_UNIT} bin",
                          shrink=0.9)
        cb.locator = LogLocator(subs=(1.0, 2.0, 5.0))
        cb.formatter = ScalarFormatter()
        cb.update_ticks()
    fig.suptitle("Prediction error (predicted − observed) over time")
    return fig


def abs_error_by_landcover(paired: pd.DataFrame, variant: str) -> Any:
    """Box plots of absolute error per land cover, model vs CSM vs ECV_SM, each on its days (Fig. 23)."""
    plt = _mpl()
    panels = _panels(paired)
    classes = sorted(paired["landcover_name"].dropna().unique()) if len(paired) else []
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.75 * max(len(classes), 1)))
    k = len(panels)
    width = 0.8 / k
    handles = []
    for j, (est, _ds, rows) in enumerate(panels):
        data, pos = [], []
        for i, c in enumerate(classes):
            r = rows[rows["landcover_name"] == c]
            ae = np.abs((r[est] - r["ssm"]).to_numpy(float))
            if ae.size:
                data.append(ae)
                pos.append(i - 0.4 + width * (j + 0.5))
        if data:
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, vert=False, patch_artist=True,
                            showfliers=False, manage_ticks=False)
            for b in bp["boxes"]:
                b.set_facecolor(COLOURS[est])
                b.set_alpha(0.75)
            for med in bp["medians"]:
                med.set_color("black")
        handles.append(plt.Rectangle((0, 0), 1, 1, color=COLOURS[est], alpha=0.75, label=label(est, variant)))
    ax.set_yticks(range(len(classes)), classes)
    ax.invert_yaxis()
    ax.set_xlabel(f"absolute error |predicted − observed| ({SSM_UNIT})")
    ax.set_title("Absolute errors by land cover (CORINE 2018); boxes: quartiles, whiskers 1.5 IQR")
    ax.legend(handles=handles, loc="lower right", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def mae_by_region(by_region: pd.DataFrame, variant: str) -> Any:
    """Grouped bars of MAE per region: model and each product on the product's days (Fig. 22)."""
    plt = _mpl()
    regions = sorted(by_region["region"].unique())
    bars = [(MODEL, "all"), ("ecv_sm", "ecv_sm"), ("csm", "csm")]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(regions) + 2), 4))
    w = 0.8 / len(bars)
    for j, (est, ds) in enumerate(bars):
        sel = by_region[(by_region["days"] == ds) & (by_region["estimator"] == est)].set_index("region")
        vals = sel["mae"].reindex(regions).to_numpy(float)
        ok = np.isfinite(vals)  # a region without product days gets no bar (not a bar of height 0)
        ax.bar((np.arange(len(regions)) - 0.4 + w * (j + 0.5))[ok], vals[ok], width=w * 0.95,
               color=COLOURS[est], label=label(est, variant) + ("" if ds == "all" else f" ({PRODUCT_LABELS[ds]} days)"))
    ax.set_xticks(range(len(regions)), regions)
    ax.set_ylabel(f"MAE ({SSM_UNIT})")
    ax.set_title("Mean absolute error per region")
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def probe_series(paired: pd.DataFrame, daily: pd.DataFrame, probe: str, variant: str) -> Any:
    """One probe: predicted (solid) and observed (dashed) SSM, products, sigma0 VV and precipitation (Fig. 27).

    The model line is the mean over protocol repeats; sigma0 is linear (thesis 3.2.2) on overpass days.
    """
    plt = _mpl()
    rows = paired[paired["probe_id"] == probe]
    d = daily[daily["probe_id"].astype(str) == probe].copy()
    d["date"] = pd.to_datetime(d["date"])
    d = d.sort_values("date")
    model = rows.groupby("date")[MODEL].mean()
    fig, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3, 1.3]})
    ax = axes[0]
    # observed SSM as the protocol scored it (NaN days break the line rather than being bridged)
    obs = rows[rows["repeat"] == rows["repeat"].min()].set_index("date")["ssm"] if len(rows) else model
    ax.plot(obs.index, obs.to_numpy(float), ls="--", color=COLOURS["obs"], lw=1.3, label="observed (probe)")
    ax.plot(model.index, model.to_numpy(float), color=COLOURS[MODEL], lw=1.5,
            label=f"{label(MODEL, variant)} predicted")
    for p in PRODUCT_LABELS:
        if p in d and d[p].notna().any():
            ax.plot(d["date"], d[p], ".", ms=3, color=COLOURS[p], alpha=0.7, label=PRODUCT_LABELS[p])
    ax.set_ylabel(f"SSM ({SSM_UNIT})")
    ax.legend(fontsize=8, ncol=4, loc="upper right")
    net = rows["network"].iloc[0] if len(rows) else ""
    lc = rows["landcover_name"].iloc[0] if len(rows) else ""
    ax.set_title(f"Probe {probe} ({net}, {lc})")
    ax.grid(alpha=0.3)
    if "sigma0_vv" in d and d["sigma0_vv"].notna().any():
        axes[1].plot(d["date"], d["sigma0_vv"], ".", ms=3, color="0.25")
    axes[1].set_ylabel("σ⁰ VV (linear)")
    axes[1].grid(alpha=0.3)
    if "precip_mm" in d:
        axes[2].bar(d["date"], d["precip_mm"].fillna(0), width=1.0, color="#3182bd")
    axes[2].set_ylabel("precipitation (mm/day)")
    axes[2].set_xlabel("date")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: Path) -> Path:
    """Save ``fig`` as PNG atomically (temporary name in the same folder, then rename) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_figures(paired: pd.DataFrame, daily: pd.DataFrame, overall: pd.DataFrame, by_region: pd.DataFrame,
                  probe: str, variant: str, out: Path) -> dict[str, Path]:
    """Every figure of :data:`FIGURES` into ``out``; returns file name -> path."""
    made = {
        "scatter_obs_pred.png": lambda: scatter_obs_pred(paired, overall, variant),
        "error_density_weekly.png": lambda: error_density_weekly(paired, variant),
        "abs_error_by_landcover.png": lambda: abs_error_by_landcover(paired, variant),
        "mae_by_region.png": lambda: mae_by_region(by_region, variant),
        "probe_series.png": lambda: probe_series(paired, daily, probe, variant),
    }
    return {name: save_png(make(), out / name) for name, make in made.items()}
