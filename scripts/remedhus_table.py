"""Per-probe results of the latest REMEDHUS protocol runs next to the thesis' Table B1 (markdown).

    .venv/bin/python scripts/remedhus_table.py [--params params.yaml] > reports/remedhus/results.md

Reads the latest FINISHED unseen_site and known_site parent runs of experiment soilmoisture/remedhus/protocol
through the MLflow client; prints MAE and r per probe with the baselines and the thesis' figures.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from soilmoisture import config, tracking

# Thesis Table B1 (MAE): DLM_full, DLM_minimum, DLM_agriculture, CSM, ECV_SM.
THESIS_B1 = {
    "Canizal": (0.1664, 0.1175, 0.0804, 0.2611, 0.0496),
    "Carretoro": (0.0475, 0.0927, 0.0707, 0.4111, 0.1576),
    "La_Atalaya": (0.0446, 0.0399, 0.0489, 0.3365, 0.1104),
    "Las_Bodegas": (0.043, 0.0458, 0.0351, 0.3339, 0.0595),
    "Las_Eritas": (0.2094, 0.1566, 0.171, 0.238, 0.0637),
}


def latest(client, exp_id: str, mode: str, variant: str):
    runs = client.search_runs([exp_id], filter_string=(
        f"tags.kind = 'protocol' and tags.mode = '{mode}' and tags.variant = '{variant}' "
        "and attributes.status = 'FINISHED'"), order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def per_probe(client, run) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        path = client.download_artifacts(run.info.run_id, tracking.ART_PER_PROBE, d)
        return pd.read_parquet(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variant", default="minimum")
    args = ap.parse_args()
    params = config.load(args.params, {"data.source": "remedhus"})
    from mlflow.tracking import MlflowClient

    tracking.configure(params)
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.experiment_name("remedhus"))
    if exp is None:
        print("error: no REMEDHUS protocol runs (run scripts/run_remedhus.sh first)", file=sys.stderr)
        return 2
    out = []
    for mode in ("unseen_site", "known_site"):
        run = latest(client, exp.experiment_id, mode, args.variant)
        if run is None:
            continue
        df = per_probe(client, run).set_index("probe_id")
        base = [c for c in df.columns if c.startswith("baseline_") and c.endswith("_mae")]
        out.append(f"\n### {mode} — run `{run.info.run_id}` (engine {run.data.tags.get('engine')}, "
                   f"{int(run.data.metrics.get('n_models', 0))} models, repeats {run.data.params.get('protocol.repeats')})\n")
        head = ["probe", "days", "MAE", "RMSE", "ubRMSE", "bias", "r"] + [c[len('baseline_'):-len('_mae')] + " MAE"
                                                                          for c in base]
        if mode == "unseen_site":
            head += ["thesis DLM_minimum MAE", "thesis DLM_full MAE", "thesis ECV_SM MAE"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for pid, r in df.iterrows():
            row = [pid, f"{int(r['n_days'])}", f"{r['mae']:.4f}", f"{r['rmse']:.4f}", f"{r['ubrmse']:.4f}",
                   f"{r['bias']:+.4f}", f"{r['pearson_r']:.2f}"] + [f"{r[c]:.4f}" for c in base]
            if mode == "unseen_site":
                t = THESIS_B1.get(pid)
                row += [f"{t[1]:.4f}", f"{t[0]:.4f}", f"{t[4]:.4f}"] if t else ["", "", ""]
            out.append("| " + " | ".join(row) + " |")
        mean = ["**mean**", "", f"**{df['mae'].mean():.4f}**", f"{df['rmse'].mean():.4f}", f"{df['ubrmse'].mean():.4f}",
                f"{df['bias'].mean():+.4f}", f"**{df['pearson_r'].mean():.2f}**"] + [f"{df[c].mean():.4f}" for c in base]
        if mode == "unseen_site":
            ids = [p for p in df.index if p in THESIS_B1]
            mean += [f"{sum(THESIS_B1[p][1] for p in ids) / len(ids):.4f}",
                     f"{sum(THESIS_B1[p][0] for p in ids) / len(ids):.4f}",
                     f"{sum(THESIS_B1[p][4] for p in ids) / len(ids):.4f}"]
        out.append("| " + " | ".join(mean) + " |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
