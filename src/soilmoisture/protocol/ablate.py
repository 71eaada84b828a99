"""``soilmoisture ablate``: a declared list of input sets and methods through the normal protocol, as ONE experiment.

Every configuration of ``ablate.configs`` (a variant + dotted parameter overrides, e.g. the anomaly target)
runs the ordinary protocol (``protocol.run.run``) with the same folds and seeds (``protocol.seed``,
``ablate.repeats``), as a child of one ablation run in the experiment ``soilmoisture/<source>/ablation``;
nothing is registered. One table (``reports/ablate/table.csv`` / ``.md``, logged on the ablation run) holds,
per mode, configuration and region (and overall): the model's and the ensemble's MAE, ubRMSE, r and bias,
the interval coverage, the baselines on the same days, the validation score, and a paired Wilcoxon test over
test probes against ``ablate.reference`` (the current default).

**Choosing.** The selected configuration of a mode is the one with the lowest *validation* MAE, never a test
score: unseen site — the fold models' MAE on their validation probes (never the test probe); known site —
a validation period: the same protocol with the split moved ``ablate.known_site_val_days`` earlier and the
data ending the day before the real split (the test period is not read at all). Test scores are reported
beside it, for the record only.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture import tracking
from soilmoisture.config import Params, apply_override, from_dict
from soilmoisture.errors import ConfigError, ProtocolError

log = logging.getLogger(__name__)

TAG_CONFIG = "ablation_config"
TAG_ROLE = "ablation_role"          # test | validation
METRICS = ("mae", "ubrmse", "pearson_r", "bias")
OVERALL = "overall"


def config_params(params: Params, name: str, mode: str) -> Params:
    """The parameters of configuration ``name`` in ``mode`` (ConfigError naming ``ablate.configs.<name>``)."""
    ab = params.ablate
    cfg = ab.configs[name]
    raw = params.to_dict()
    apply_override(raw, "variant.name", cfg.variant)
    apply_override(raw, "protocol.mode", mode)
    apply_override(raw, "protocol.repeats", ab.repeats)
    for key, value in cfg.set.items():
        if key.split(".")[0] in ("ablate", "paths", "tracking", "data"):
            raise ConfigError(f"ablate.configs.{name}.set.{key}", "may not change ablate, paths, tracking or data")
        try:
            apply_override(raw, key, value)
        except ConfigError as e:
            raise ConfigError(f"ablate.configs.{name}.set.{key}", e.problem) from None
    try:
        return from_dict(raw, root=params.root)
    except ConfigError as e:
        raise ConfigError(f"ablate.configs.{name} ({e.key})", e.problem) from None


def validation_params(p: Params, val_days: int) -> Params:
    """Known site: the same configuration on a validation period inside the training period.

    The split moves ``val_days`` earlier and the data end the day before the real split, so nothing of the
    test period is read; the validation period's scores choose between configurations.
    """
    split = pd.Timestamp(p.protocol.split_date)
    vsplit = split - pd.Timedelta(days=val_days)
    if vsplit <= pd.Timestamp(p.data.start):
        raise ConfigError("ablate.known_site_val_days", f"{val_days} days before protocol.split_date "
                                                        f"{p.protocol.split_date} is before data.start {p.data.start}")
    raw = p.to_dict()
    apply_override(raw, "protocol.split_date", vsplit.strftime("%Y-%m-%d"))
    apply_override(raw, "data.end", (split - pd.Timedelta(days=1)).strftime("%Y-%m-%d"))
    return from_dict(raw, root=p.root)


def _wilcoxon(a: pd.Series, b: pd.Series) -> float:
    """Two-sided paired Wilcoxon p over the probes both have (NaN with < 2 pairs or all differences 0)."""
    from scipy import stats

    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    d = both["a"] - both["b"]
    if len(both) < 2 or np.allclose(d, 0):
        return float("nan")
    return float(stats.wilcoxon(both["a"], both["b"], alternative="two-sided").pvalue)


def summarise(per_probe: pd.DataFrame, val: pd.DataFrame | None, mode: str) -> pd.DataFrame:
    """Rows per region and overall: model, ensemble and baseline scores (means over test probes)."""
    base = ["network_day", "train_mean"] + (["climatology"] if mode == "known_site" else [])
    rows = []
    groups = [(OVERALL, per_probe)] + [(r, g) for r, g in per_probe.groupby("region", sort=True)]
    for region, g in groups:
        row: dict[str, Any] = {"region": region, "n_probes": len(g)}
        for m in METRICS:
            row[f"model_{m}"] = g[m].mean() if m in g else np.nan
            row[f"ensemble_{m}"] = g[f"ensemble_{m}"].mean() if f"ensemble_{m}" in g else np.nan
            for b in base:
                c = tracking.baseline_metric(b, m)
                row[f"{b}_{m}"] = g[c].mean() if c in g else np.nan
        row["interval_coverage"] = g["interval_coverage"].mean() if "interval_coverage" in g else np.nan
        if val is not None and len(val):
            vg = val if region == OVERALL else val[val["region"] == region]
            row["val_mae"] = vg["mae"].mean() if len(vg) else np.nan
            row["val_network_day_mae"] = vg[tracking.baseline_metric("network_day", "mae")].mean() if len(vg) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _artifact_table(client: Any, rid: str, art: str) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory() as d:
        try:
            local = client.download_artifacts(rid, art, d)
        except Exception:  # noqa: BLE001 - an artifact a run did not write (no validation probes)
            return None
        return pd.read_parquet(local)


def run(params: Params) -> dict[str, Any]:
    """Run every configuration in every mode of ``params.ablate``; write and log the table; return the summary."""
    from mlflow.tracking import MlflowClient

    from soilmoisture.protocol import run as protocol
    from soilmoisture.protocol.run import validation_per_probe

    ab = params.ablate
    # Every configuration's parameters are built (and checked) before any training.
    plans = {(mode, name): config_params(params, name, mode) for mode in ab.modes for name in ab.configs}
    vplans = {k: validation_params(p, ab.known_site_val_days) for k, p in plans.items() if k[0] == "known_site"}
    if tracking.tracking_uri(params).startswith("sqlite:"):
        protocol.tune_sqlite()
    exp_id = tracking.ensure_experiment(params, kind="ablation")
    client = MlflowClient(tracking.tracking_uri(params))
    parent = client.create_run(exp_id, run_name=f"ablation-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={tracking.TAG_KIND: "ablation", tracking.TAG_SOURCE: params.data.source,
                                     tracking.TAG_GIT_COMMIT: tracking.git_commit(params.root)})
    arid = parent.info.run_id
    try:
        client.log_dict(arid, tracking.masked_params(params.to_dict()), tracking.ART_CONFIG)
        tables, per_probe_all = [], {}
        for (mode, name), p in plans.items():
            log.info("ablation: %s / %s (variant %s)", mode, name, p.variant.name)
            tags = {TAG_CONFIG: name, TAG_ROLE: "test"}
            rid = protocol.run(p, parent_run_id=arid, register=False, extra_tags=tags, experiment_kind="ablation")
            pp = _artifact_table(client, rid, tracking.ART_PER_PROBE)
            if mode == "unseen_site":
                v = _artifact_table(client, rid, tracking.ART_VALIDATION)
                val = validation_per_probe(v) if v is not None else None
            else:
                vrid = protocol.run(vplans[(mode, name)], parent_run_id=arid, register=False,
                                    extra_tags={TAG_CONFIG: name, TAG_ROLE: "validation"}, experiment_kind="ablation")
                vpp = _artifact_table(client, vrid, tracking.ART_PER_PROBE)
                val = vpp.assign(mae=vpp["ensemble_mae"])[["probe_id", "region", "mae",
                                                           tracking.baseline_metric("network_day", "mae")]]
            t = summarise(pp, val, mode)
            t.insert(0, "config", name)
            t.insert(0, "mode", mode)
            t.insert(2, "variant", p.variant.name)
            t["run_id"] = rid
            tables.append(t)
            per_probe_all[(mode, name)] = pp.set_index("probe_id")
        table = pd.concat(tables, ignore_index=True)
        table = _add_tests(table, per_probe_all, ab.reference)
        summary = _select(table, ab.reference)
        _write_and_log(client, arid, params, table, summary)
    except BaseException as e:
        client.set_tag(arid, tracking.TAG_FAILURE, f"{type(e).__name__}: {e}"[:4900])
        client.set_terminated(arid, "FAILED")
        raise
    client.set_terminated(arid, "FINISHED")
    summary["run_id"] = arid
    return summary


def _add_tests(table: pd.DataFrame, per_probe: dict, reference: str) -> pd.DataFrame:
    """Columns ``delta_ensemble_mae`` (config - reference) and ``wilcoxon_p`` (paired over the region's probes)."""
    dm, pv = [], []
    for row in table.itertuples(index=False):
        a, b = per_probe[(row.mode, row.config)], per_probe.get((row.mode, reference))
        if b is None:
            dm.append(np.nan), pv.append(np.nan)
            continue
        if row.region != OVERALL:
            a, b = a[a["region"] == row.region], b[b["region"] == row.region]
        ea, eb = a["ensemble_mae"], b["ensemble_mae"].reindex(a.index)
        dm.append(float((ea - eb).mean()))
        pv.append(np.nan if row.config == reference else _wilcoxon(ea, eb))
    return table.assign(delta_ensemble_mae=dm, wilcoxon_p=pv)


def _select(table: pd.DataFrame, reference: str) -> dict[str, Any]:
    """Per mode: the configuration with the lowest overall validation MAE (test scores for the record)."""
    out: dict[str, Any] = {"reference": reference, "modes": {}}
    ov = table[table["region"] == OVERALL]
    for mode, g in ov.groupby("mode", sort=False):
        if g["val_mae"].notna().any():
            best = g.loc[g["val_mae"].idxmin()]
        else:
            raise ProtocolError(f"ablation {mode}: no configuration has a validation score (protocol.val_fraction "
                                "0 leaves no validation probes); nothing can be chosen without test probes")
        ref = g[g["config"] == reference]
        r = ref.iloc[0] if len(ref) else None
        out["modes"][mode] = {
            "selected": best["config"], "selected_variant": best["variant"],
            "val_mae": float(best["val_mae"]),
            "reference_val_mae": float(r["val_mae"]) if r is not None else None,
            "test_ensemble_mae": float(best["ensemble_mae"]), "test_model_mae": float(best["model_mae"]),
            "test_network_day_mae": float(best["network_day_mae"]),
            "test_interval_coverage": float(best["interval_coverage"]),
            "reference_test_ensemble_mae": float(r["ensemble_mae"]) if r is not None else None,
            "wilcoxon_p_vs_reference": None if not np.isfinite(best["wilcoxon_p"]) else float(best["wilcoxon_p"]),
        }
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown (numbers to 4 decimals, p to 3)."""
    cols = ["mode", "config", "region", "n_probes", "val_mae", "val_network_day_mae", "ensemble_mae", "model_mae",
            "ensemble_ubrmse", "ensemble_pearson_r", "ensemble_bias", "interval_coverage", "network_day_mae",
            "network_day_ubrmse", "network_day_pearson_r", "train_mean_mae", "climatology_mae", "delta_ensemble_mae",
            "wilcoxon_p"]
    cols = [c for c in cols if c in table.columns and (c != "climatology_mae" or table[c].notna().any())]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table[cols].iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("" if not np.isfinite(v) else (f"{v:.3f}" if c == "wilcoxon_p" else f"{v:.4f}"))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_and_log(client: Any, arid: str, params: Params, table: pd.DataFrame, summary: dict) -> None:
    """reports/ablate/{table.csv, table.md, summary.json} (atomic) and the same files on the ablation run."""
    from mlflow.entities import Metric

    out = params.path(params.ablate.reports)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "table.csv", table.to_csv(index=False))
    _atomic_write(out / "table.md", to_markdown(table))
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    for f in ("table.csv", "table.md", "summary.json"):
        client.log_artifact(arid, str(out / f), "ablation")
    now = int(time.time() * 1000)
    ms = []
    for row in table[table["region"] == OVERALL].itertuples(index=False):
        for c in ("val_mae", "ensemble_mae", "model_mae", "network_day_mae", "interval_coverage"):
            v = getattr(row, c, np.nan)
            if v is not None and np.isfinite(v):
                ms.append(Metric(f"{row.mode}.{row.config}.{c}", float(v), now, 0))
    if ms:
        client.log_batch(arid, metrics=ms)
    for mode, s in summary["modes"].items():
        client.set_tag(arid, f"selected.{mode}", s["selected"])
    log.info("ablation table: %s", out / "table.md")


def handle(params: Params, args: Any) -> dict[str, Any]:
    from soilmoisture.backends import preflight

    preflight(params, "train")
    summary = run(params)
    for mode, s in summary["modes"].items():
        log.info("%s: selected %s on validation (val MAE %.4f vs reference %s); test ensemble MAE %.4f, "
                 "network-day baseline %.4f", mode, s["selected"], s["val_mae"], s["reference_val_mae"],
                 s["test_ensemble_mae"], s["test_network_day_mae"])
    return summary

