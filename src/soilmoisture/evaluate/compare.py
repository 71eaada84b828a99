"""Product comparison: the model against ECV_SM, CSM and the baselines, as pure functions of frames.

Every comparison is made on the *same probe-days* (thesis 4.2; the thesis compared products on their own
dates): a "day set" is the set of probe-days on which SSM was observed, the model predicted and, for the
product day sets, the product has a value. On the ``ecv_sm`` day set the model and ECV_SM are scored on
identical days; likewise for ``csm``. The ``all`` day set holds every observed day (model and baselines).

Group tables (per probe = thesis Table B1, per land cover = Table 4, per region = Fig. 22, overall =
headline) pool the probe-days of the group, as the thesis' scatter plots (Figs. 24-25) do. Protocol
repeats are scored separately and averaged, as the protocol's own per-probe table does, so a product
(identical in every repeat) is not counted once per repeat. Metrics are those of
:mod:`soilmoisture.evaluate.metrics` (m3/m3; Pearson r unitless); the thesis reports MAE only.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError
from soilmoisture.evaluate.metrics import all_metrics
from soilmoisture.schema import CORINE, PRODUCTS

log = logging.getLogger(__name__)

MODEL = "model"                                     # column of the model's prediction in the paired frame
METRIC_COLUMNS = ("mae", "rmse", "ubrmse", "bias", "pearson_r", "n")
# day set -> products that must have a value on the day (besides observed SSM and the model)
DAY_SETS: dict[str, tuple[str, ...]] = {"all": (), "ecv_sm": ("ecv_sm",), "csm": ("csm",)}
PRODUCT_LABELS = {"ecv_sm": "ECV_SM", "csm": "CSM"}
GROUPINGS = {"probe": ["probe_id"], "landcover": ["landcover_name"], "region": ["region"], "overall": []}


def paired_frame(predictions: pd.DataFrame, daily: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """One row per probe-day and repeat: observed SSM, model, baselines, products and probe info.

    ``predictions`` is the protocol's table (probe_id, date, repeat, ssm, ssm_pred, baseline_*);
    products (``ecv_sm``, ``csm``, m3/m3) come from the processed daily table, land cover and network
    from the probe table. Rows without an observed SSM are kept (the series figure draws them); every
    day set (:func:`day_mask`) holds observed days only.
    """
    need = {"probe_id", "date", "ssm", "ssm_pred"}
    missing = need - set(predictions.columns)
    if missing:
        raise DataError("predictions", f"columns missing: {', '.join(sorted(missing))}")
    for name, cols in (("daily", {"probe_id", "date", *PRODUCTS}), ("probes", {"probe_id", "network", "region",
                                                                                 "landcover_code"})):
        frame = daily if name == "daily" else probes
        gone = cols - set(frame.columns)
        if gone:
            raise DataError(name, f"columns missing: {', '.join(sorted(gone))}")
    pred = predictions.rename(columns={"ssm_pred": MODEL}).copy()
    if "repeat" not in pred:
        pred["repeat"] = 0
    pred["probe_id"] = pred["probe_id"].astype(str)
    pred["date"] = pd.to_datetime(pred["date"]).astype("datetime64[ns]")
    prod = daily[["probe_id", "date", *PRODUCTS]].copy()
    prod["probe_id"] = prod["probe_id"].astype(str)
    prod["date"] = pd.to_datetime(prod["date"]).astype("datetime64[ns]")
    info = probes[["probe_id", "network", "region", "landcover_code"]].copy()
    info["probe_id"] = info["probe_id"].astype(str)
    info["network"] = info["network"].astype(str)
    info["region"] = info["region"].astype(str)
    if "landcover_name" in probes:
        info["landcover_name"] = probes["landcover_name"].astype(str).to_numpy()
    else:
        info["landcover_name"] = [CORINE.get(int(c), str(c)) for c in info["landcover_code"]]
    out = pred.merge(prod, on=["probe_id", "date"], how="left").merge(info, on="probe_id", how="left")
    for c in ("ssm", MODEL, *PRODUCTS):
        out[c] = out[c].astype("float64")
    return out.sort_values(["probe_id", "repeat", "date"]).reset_index(drop=True)


def estimators(paired: pd.DataFrame, day_set: str) -> list[str]:
    """Columns scored on a day set: the model and baselines on ``all``; the model and the product otherwise."""
    if day_set == "all":
        return [MODEL] + [c for c in paired.columns if c.startswith("baseline_")]
    return [MODEL, *DAY_SETS[day_set]]


def day_mask(paired: pd.DataFrame, day_set: str) -> np.ndarray:
    """Boolean rows of ``day_set``: SSM observed, model predicted and every required product present."""
    ok = np.isfinite(paired["ssm"].to_numpy(float)) & np.isfinite(paired[MODEL].to_numpy(float))
    for p in DAY_SETS[day_set]:
        ok &= np.isfinite(paired[p].to_numpy(float))
    return ok


def _score(frame: pd.DataFrame, column: str) -> dict[str, float]:
    """Metrics of ``column`` against observed SSM, per repeat, averaged over repeats."""
    rows = []
    for _, g in frame.groupby("repeat", sort=True):
        m = all_metrics(g["ssm"].to_numpy(float), g[column].to_numpy(float))
        m["n"] = m.pop("n_days")
        rows.append(m)
    if not rows:
        return {k: (0.0 if k == "n" else float("nan")) for k in METRIC_COLUMNS}
    df = pd.DataFrame(rows)
    return {k: float(df[k].mean()) if df[k].notna().any() else float("nan") for k in METRIC_COLUMNS}


def compare(paired: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Tidy table: one row per group, day set and estimator with MAE, RMSE, ubRMSE, bias, r, n, n_probes.

    ``by`` are grouping columns of ``paired`` (``[]`` = everything pooled). ``n`` is the number of
    probe-days scored (per repeat); ``n_probes`` the probes contributing at least one day.
    """
    rows: list[dict[str, Any]] = []
    groups = [((), paired)] if not by else paired.groupby(by, sort=True, dropna=False)
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for ds in DAY_SETS:
            sub = g[day_mask(g, ds)]
            for est in estimators(paired, ds):
                row = dict(zip(by, key))
                row.update({"days": ds, "estimator": est, **_score(sub, est),
                            "n_probes": int(sub["probe_id"].nunique())})
                rows.append(row)
    cols = [*by, "days", "estimator", *METRIC_COLUMNS, "n_probes"]
    return pd.DataFrame(rows, columns=cols)


def coverage(paired: pd.DataFrame) -> pd.DataFrame:
    """Per product: observed model days, days the product covers among them and the share (first repeat)."""
    first = paired[paired["repeat"] == paired["repeat"].min()] if len(paired) else paired
    n_all = int(day_mask(first, "all").sum())
    rows = []
    for p in PRODUCTS:
        n = int(day_mask(first, p).sum())
        rows.append({"product": PRODUCT_LABELS[p], "observed_days": n_all, "product_days": n,
                     "share": n / n_all if n_all else float("nan"),
                     "probes_covered": int(first.loc[day_mask(first, p), "probe_id"].nunique()),
                     "probes": int(first["probe_id"].nunique())})
    return pd.DataFrame(rows)


def label(estimator: str, variant: str) -> str:
    """Human name of an estimator column: ``DLM_minimum``, ``ECV_SM``, ``baseline network_day``."""
    if estimator == MODEL:
        return f"DLM_{variant}"
    if estimator in PRODUCT_LABELS:
        return PRODUCT_LABELS[estimator]
    return estimator.replace("baseline_", "baseline ")


def headline(overall: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The overall table in reading order: model and baselines on all days, then each product's day set."""
    df = overall.copy()
    df.insert(0, "estimator_label", [label(e, variant) for e in df["estimator"]])
    df["days"] = df["days"].map({"all": "all observed days", "ecv_sm": "ECV_SM days", "csm": "CSM days"})
    return df.drop(columns=["estimator"])


def verdict(overall: pd.DataFrame, variant: str) -> list[str]:
    """The headline in words: on all observed days, is the model beaten by a baseline (by MAE)?

    A soil-moisture estimate is judged against the estimates a user already has; a baseline that beats the
    model is said first and plainly, with the ratio of the MAEs.
    """
    rows = overall[overall["days"] == "all"].set_index("estimator")
    if MODEL not in rows.index or not np.isfinite(rows.loc[MODEL, "mae"]):
        return []
    m = float(rows.loc[MODEL, "mae"])
    name = label(MODEL, variant)
    base = {e: float(rows.loc[e, "mae"]) for e in rows.index
            if e.startswith("baseline_") and np.isfinite(rows.loc[e, "mae"])}
    if not base:
        return []
    better = sorted((v, e) for e, v in base.items() if v < m)
    if better:
        return [f"{label(e, variant)} beats {name}: MAE {v:.4f} against the model's {m:.4f} "
                f"({m / v:.2f}x worse) on the same days." for v, e in better]
    best_v, best_e = min((v, e) for e, v in base.items())
    return [f"{name} beats every baseline: MAE {m:.4f}, {m / best_v:.2f}x the best baseline "
            f"({label(best_e, variant)}, {best_v:.4f}) on the same days."]


def table_b1(per_probe: pd.DataFrame, paired: pd.DataFrame, variant: str,
             other_variants: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """Thesis Table B1 layout: per probe MAE of each variant, CSM and ECV_SM, land cover and network.

    ``per_probe`` is :func:`compare` by probe. The current variant's MAE is on all observed days; each
    product's MAE is beside the model's MAE on *that product's* days, with the day counts. Other variants'
    MAE (``other_variants``: name -> per-probe MAE indexed by probe_id, from their latest protocol runs)
    are on their own observed days, which are the same probe-days when the processed data are the same.
    """
    def pick(days: str, est: str, col: str = "mae") -> pd.Series:
        s = per_probe[(per_probe["days"] == days) & (per_probe["estimator"] == est)]
        return s.set_index("probe_id")[col]

    ids = sorted(paired["probe_id"].unique())
    out = pd.DataFrame(index=pd.Index(ids, name="probe_id"))
    out[f"DLM_{variant}"] = pick("all", MODEL)
    for name, s in sorted((other_variants or {}).items()):
        if name != variant:
            out[f"DLM_{name}"] = s.reindex(out.index)
    out["n_days"] = pick("all", MODEL, "n")
    for p in ("csm", "ecv_sm"):
        lab = PRODUCT_LABELS[p]
        out[lab] = pick(p, p)
        out[f"DLM_{variant} on {lab} days"] = pick(p, MODEL)
        out[f"n_{lab}_days"] = pick(p, p, "n")
    info = paired.drop_duplicates("probe_id").set_index("probe_id")
    out["land cover (CLC)"] = info["landcover_name"].reindex(out.index)
    out["network"] = info["network"].reindex(out.index)
    return out.reset_index()


def median_mae_probe(per_probe: pd.DataFrame) -> str:
    """The probe whose model MAE (all observed days) is the median one (the lower middle for even counts)."""
    s = per_probe[(per_probe["days"] == "all") & (per_probe["estimator"] == MODEL)].dropna(subset=["mae"])
    if s.empty:
        raise DataError("predictions", "no probe has a model MAE: nothing observed to compare with")
    s = s.sort_values(["mae", "probe_id"])
    return str(s["probe_id"].iloc[(len(s) - 1) // 2])


def wilcoxon_variants(per_probe_mae: dict[str, pd.Series]) -> pd.DataFrame:
    """Paired two-sided Wilcoxon signed-rank tests on per-probe MAE for every pair of variants.

    ``per_probe_mae``: variant -> MAE per probe (index probe_id). Only probes scored by both variants are
    paired (n). ``median_diff`` is the median of MAE(a) - MAE(b) (negative: a better); ``a_better`` the
    number of probes where a has the lower MAE; p is NaN with fewer than 2 pairs or all differences zero.
    """
    from scipy import stats

    rows = []
    names = sorted(per_probe_mae)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = per_probe_mae[a], per_probe_mae[b]
            both = pd.concat([sa.rename("a"), sb.rename("b")], axis=1, join="inner").dropna()
            d = (both["a"] - both["b"]).to_numpy(float)
            stat, p = float("nan"), float("nan")
            if len(d) >= 2 and np.any(d != 0):
                res = stats.wilcoxon(both["a"], both["b"], alternative="two-sided")
                stat, p = float(res.statistic), float(res.pvalue)
            rows.append({"variant_a": a, "variant_b": b, "n": int(len(d)),
                         "mean_mae_a": float(both["a"].mean()) if len(d) else float("nan"),
                         "mean_mae_b": float(both["b"].mean()) if len(d) else float("nan"),
                         "median_diff": float(np.median(d)) if len(d) else float("nan"),
                         "a_better": int((d < 0).sum()), "statistic": stat, "p_value": p})
    return pd.DataFrame(rows, columns=["variant_a", "variant_b", "n", "mean_mae_a", "mean_mae_b", "median_diff",
                                       "a_better", "statistic", "p_value"])


def wilcoxon_sentence(row: pd.Series, alpha: float = 0.05) -> str:
    """A plain statement of one Wilcoxon row, e.g. whether "minimum beats full" holds or is noise."""
    a, b = row["variant_a"], row["variant_b"]
    if not np.isfinite(row["p_value"]):
        return (f"DLM_{a} vs DLM_{b}: too few paired probes (n = {row['n']}) or no difference; "
                "no test possible.")
    better, worse = (a, b) if row["median_diff"] < 0 else (b, a)
    k = row["a_better"] if better == a else row["n"] - row["a_better"]
    verdict = ("a significant difference" if row["p_value"] < alpha
               else f"not significant at {alpha} (could be noise)")
    return (f"DLM_{better} has the lower MAE than DLM_{worse} on {k} of {row['n']} probes "
            f"(median difference {abs(row['median_diff']):.4f} m3/m3); paired Wilcoxon signed-rank "
            f"p = {row['p_value']:.3g}, n = {row['n']}: {verdict}.")


def flat_metrics(overall: pd.DataFrame, cover: pd.DataFrame) -> dict[str, float]:
    """Overall numbers as flat names for MLflow and metrics.json, e.g. ``ecv_sm_days.ecv_sm.mae``."""
    out: dict[str, float] = {}
    for r in overall.itertuples(index=False):
        for m in METRIC_COLUMNS:
            v = getattr(r, m)
            if np.isfinite(v):
                out[f"{r.days}_days.{r.estimator}.{m}"] = float(v)
    for r in cover.itertuples(index=False):
        out[f"coverage.{r.product}.days"] = float(r.product_days)
        if np.isfinite(r.share):
            out[f"coverage.{r.product}.share"] = float(r.share)
    return out


def mae_wide(table: pd.DataFrame, key: str, variant: str, metric: str = "mae") -> pd.DataFrame:
    """Thesis Table 4 / Fig. 22 layout of a :func:`compare` table: one row per group, one column per estimator.

    Columns: the model and baselines on all observed days, then for each product the model on that
    product's days beside the product, and the group's probe count.
    """
    cols = [("all", MODEL)] + [("all", e) for e in table.loc[table["days"] == "all", "estimator"].unique()
                               if e != MODEL]
    for p in PRODUCTS:
        cols += [(p, MODEL), (p, p)]
    out = pd.DataFrame(index=pd.Index(sorted(table[key].unique()), name=key))
    for ds, est in cols:
        s = table[(table["days"] == ds) & (table["estimator"] == est)].set_index(key)[metric]
        name = label(est, variant) + ("" if ds == "all" or est != MODEL else f" on {PRODUCT_LABELS[ds]} days")
        out[name] = s.reindex(out.index)
    out["probes"] = table[table["days"] == "all"].groupby(key)["n_probes"].max().reindex(out.index)
    return out.reset_index()
