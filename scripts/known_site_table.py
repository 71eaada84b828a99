"""Known site through `soilmoisture predict`: per probe on the predicted period, next to the protocol and baselines.

    .venv/bin/python scripts/known_site_table.py --input ../shared/data/remedhus/SM_Data_REMEDHUS.csv \
        [--model soilmoisture-minimum-known-site@champion] [--params params.yaml] [--set key=value ...]

Applies the registered known-site model to the input (the same path as `soilmoisture predict`: ingest's readers
and data rules), scores it per probe on the days from the model's split date on with an observation, and prints
(markdown) the model's MAE and r next to the protocol run's own ensemble on the same days (they must agree) and
the baselines of that run on the same days: the probe's day-of-year climatology, the network-day mean and the
training mean. With ``--gap START END PROBE`` the probe's readings of that period are removed from the input
first, and the table scores the filled gap instead (a worked example of gap-filling, docs/known-site.md).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from soilmoisture import config, tracking
from soilmoisture.evaluate.metrics import mae, pearson_r


def _score(df: pd.DataFrame, col: str) -> tuple[float, float]:
    ok = df["ssm"].notna() & df[col].notna()
    return mae(df.loc[ok, "ssm"].to_numpy(), df.loc[ok, col].to_numpy()), \
        pearson_r(df.loc[ok, "ssm"].to_numpy(), df.loc[ok, col].to_numpy())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--model", default="soilmoisture-minimum-known-site@champion")
    ap.add_argument("--input", required=True, type=Path)
    ap.add_argument("--gap", nargs=3, metavar=("START", "END", "PROBE"), default=None)
    args = ap.parse_args()
    params = config.load(args.params, dict(config.parse_override(o) for o in args.overrides))
    tracking.configure(params)
    from mlflow.tracking import MlflowClient

    from soilmoisture.model.predictor import predict_file

    src, truth = args.input, None
    with tempfile.TemporaryDirectory() as d:
        if args.gap:
            start, end, probe = args.gap
            raw = pd.read_csv(src, dtype=str, keep_default_na=False)
            when = pd.to_datetime(raw["Date"], format="%d/%m/%Y")
            cut = (raw["ID"] == probe) & (when >= start) & (when <= end)
            truth = pd.DataFrame({"probe_id": probe, "date": when[cut],
                                  "ssm_true": pd.to_numeric(raw.loc[cut, "soil_moisture"], errors="coerce")})
            raw.loc[cut, "soil_moisture"] = ""
            src = Path(d) / src.name
            raw.to_csv(src, index=False)
        out, site = predict_file(params, args.model, src)
    client = MlflowClient(tracking.tracking_uri(params))
    rid = site.meta.get("protocol_run_id")
    if not rid:  # the final child run of the registered version; its parent is the protocol run
        name, _, alias = site.meta["model_uri"].removeprefix("models:/").partition("@")
        final = client.get_model_version_by_alias(name, alias).run_id
        rid = client.get_run(final).data.tags.get("mlflow.parentRunId", final)
    with tempfile.TemporaryDirectory() as d:
        preds = pd.read_parquet(client.download_artifacts(rid, tracking.ART_PREDICTIONS, d))
        ens = pd.read_parquet(client.download_artifacts(rid, tracking.ART_ENSEMBLE, d))
    base_cols = [c for c in preds.columns if c.startswith("baseline_")]
    base = preds.groupby(["probe_id", "date"])[base_cols].mean().reset_index()
    rows = []
    if truth is not None:
        g = out.merge(truth, on=["probe_id", "date"]).assign(ssm=lambda t: t["ssm_true"])
        g = g.merge(base, on=["probe_id", "date"], how="left")
        m_mae, m_r = _score(g, "ssm_pred")
        row = {"probe": args.gap[2], "days": int(g["ssm"].notna().sum()), "filled": int(g["filled"].sum()),
               "predict_mae": m_mae, "predict_r": m_r}
        for b in base_cols:
            row[b.replace("baseline_", "") + "_mae"] = _score(g, b)[0]
        rows.append(row)
    else:
        m = out.merge(ens[["probe_id", "date", "ssm_pred"]].rename(columns={"ssm_pred": "protocol"}),
                      on=["probe_id", "date"]).merge(base, on=["probe_id", "date"], how="left")
        for pid, g in m.groupby("probe_id"):
            p_mae, p_r = _score(g, "ssm_pred")
            row = {"probe": pid, "days": int(g["ssm"].notna().sum()), "predict_mae": p_mae, "predict_r": p_r,
                   "protocol_mae": _score(g, "protocol")[0],
                   "max_abs_diff": float(np.nanmax(np.abs(g["ssm_pred"] - g["protocol"])))}
            for b in base_cols:
                row[b.replace("baseline_", "") + "_mae"] = _score(g, b)[0]
            rows.append(row)
    table = pd.DataFrame(rows)
    mean = table.drop(columns="probe").mean(numeric_only=True)
    table = pd.concat([table, pd.DataFrame([{"probe": "mean", **mean.to_dict()}])], ignore_index=True)
    if "max_abs_diff" in table:
        table["max_abs_diff"] = table["max_abs_diff"].map(lambda v: f"{v:.1e}")
        pooled = m.loc[m["date"] >= pd.Timestamp(site.fit_end)]
        sys.stdout.write(f"pooled over probes: MAE {_score(pooled, 'ssm_pred')[0]:.4f}, r {_score(pooled, 'ssm_pred')[1]:.2f}"
                         f"; climatology MAE {_score(pooled, 'baseline_climatology')[0]:.4f}, r "
                         f"{_score(pooled, 'baseline_climatology')[1]:.2f}\n")
    sys.stdout.write(f"model {args.model} (protocol run {rid}), input {args.input.name}\n\n")
    sys.stdout.write(table.to_markdown(index=False, floatfmt=".4f") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
