"""A self-contained HTML report: one file, images embedded as base64, inline CSS, no script, no CDN.

It opens offline in any browser (GX's data docs, by contrast, load CSS from CDNs: STACK-NOTES). Pure
functions: tables and figure paths in, an HTML string out; :func:`write_html` writes it atomically.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.evaluate.compare import label, mae_wide

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:2px solid #1b9e9e;padding-bottom:.2em;
margin-top:2em} h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.86em}
th,td{border:1px solid #d0d7de;padding:.25em .55em;text-align:right}
th{background:#eef3f6;position:sticky;top:0} td.t,th.t{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
.verdict{font-size:1.1em;font-weight:bold;padding:.4em .6em} .verdict.bad{background:#fdecee;border-left:4px solid #b02a37} .verdict.ok{background:#eaf6ee;border-left:4px solid #146c43}
.meta td{text-align:left} .note{color:#555;font-size:.9em} .warn{background:#fff4e5;border-left:4px solid #e6790f;
padding:.5em 1em} figure{margin:1em 0 2em} figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#444;font-size:.9em;margin-top:.3em} .best{font-weight:bold;color:#0b6e6e}
details{margin:1em 0} summary{cursor:pointer;font-weight:600}
"""
METRIC_HEADERS = {"mae": "MAE (m³/m³)", "rmse": "RMSE (m³/m³)", "ubrmse": "ubRMSE (m³/m³)", "bias": "bias (m³/m³)",
                  "pearson_r": "Pearson r", "n": "n (probe-days)", "n_probes": "probes"}


@dataclass
class ReportInput:
    """Everything the report shows. Tables are frames; figures map a file name to (PNG path, caption)."""

    run_id: str
    variant: str
    run_info: dict[str, str]                  # e.g. data source, mode, engine, data hash, git commit
    headline: pd.DataFrame
    coverage: pd.DataFrame
    by_region: pd.DataFrame
    by_landcover: pd.DataFrame
    table_b1: pd.DataFrame
    figures: dict[str, tuple[Path, str]]
    params: dict[str, str]
    wilcoxon: pd.DataFrame | None = None
    wilcoxon_sentences: list[str] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)   # the headline in words (compare.verdict)
    warnings: list[str] = field(default_factory=list)
    figures_probe: str = ""


def _fmt(v: Any, col: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        if col in ("n", "n_probes") or col.startswith("n_") or col in ("observed_days", "product_days"):
            return f"{int(round(v))}"
        if col in ("p_value",):
            return f"{v:.3g}"
        if col == "share":
            return f"{100 * v:.1f} %"
        return f"{v:.4f}"
    return html.escape(str(v))


def table_html(df: pd.DataFrame, table_id: str, headers: dict[str, str] | None = None,
               text_cols: tuple[str, ...] = ()) -> str:
    """A frame as an HTML table with ``id``; numbers right-aligned with 4 decimals, NaN as a dash."""
    headers = {**METRIC_HEADERS, **(headers or {})}
    cols = list(df.columns)
    is_text = {c: (c in text_cols or not pd.api.types.is_numeric_dtype(df[c])) for c in cols}
    head = "".join(f'<th class="{"t" if is_text[c] else ""}">{html.escape(headers.get(c, c))}</th>' for c in cols)
    body = []
    for row in df.itertuples(index=False):
        cells = "".join(f'<td class="{"t" if is_text[c] else ""}">{_fmt(v, c)}</td>' for c, v in zip(cols, row))
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def img_html(path: Path, caption: str, fig_id: str) -> str:
    """A figure with its PNG embedded as a base64 data URI (the report needs no other file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return (f'<figure id="{fig_id}"><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{alt}</figcaption></figure>")


def _group_table(df: pd.DataFrame, key: str, key_header: str, variant: str, table_id: str) -> str:
    t = df.copy()
    t.insert(1, "estimator_label", [label(e, variant) for e in t["estimator"]])
    t["days"] = t["days"].map({"all": "all observed", "ecv_sm": "ECV_SM days", "csm": "CSM days"})
    t = t.drop(columns=["estimator"])
    return table_html(t, table_id, {key: key_header, "estimator_label": "estimator", "days": "days"},
                      text_cols=(key, "estimator_label", "days"))


def build_html(r: ReportInput) -> str:
    """The report as one HTML string."""
    v = html.escape(r.variant)
    info_rows = "".join(f'<tr><td class="t">{html.escape(k)}</td><td class="t">{html.escape(str(val))}</td></tr>'
                        for k, val in {"protocol run": r.run_id, "variant": r.variant, **r.run_info}.items())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>Soil moisture evaluation – DLM_{v}</title><style>{CSS}</style></head><body>",
             f"<h1>Surface soil moisture: DLM_{v} against ECV_SM, CSM and baselines</h1>",
             f"<p class='note'>Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             "<code>soilmoisture evaluate</code>. All errors are predicted − observed SSM in m³/m³; every product "
             "is compared with the model on the <em>same probe-days</em> (days with an observed SSM, a model "
             "prediction and a product value). Thesis headline (real data, 61 probes): MAE 0.0933 (DLM_minimum), "
             "0.1166 (ECV_SM), 0.3213 (CSM).</p>"]
    for w in r.warnings:
        parts.append(f"<p class='warn'>{html.escape(w)}</p>")
    parts.append(f"<h2 id='run'>Run</h2><table class='meta' id='run-info'>{info_rows}</table>")
    head = r.headline.rename(columns={"estimator_label": "estimator"})
    parts.append("<h2 id='headline'>Headline numbers</h2>"
                 "<p class='note'>Pooled over every test probe's days (protocol repeats scored separately and "
                 "averaged). Compare the model with a product only within the same day set.</p>")
    for sentence in r.verdict:
        cls = "verdict bad" if " beats DLM_" in sentence else "verdict ok"
        parts.append(f"<p class='{cls}' id='verdict'>{html.escape(sentence)}</p>")
    parts.append(table_html(head, "table-headline", {"days": "days", "estimator": "estimator"},
                            text_cols=("estimator", "days")))
    parts.append("<h3>Product coverage</h3>" + table_html(
        r.coverage, "table-coverage", {"product": "product", "observed_days": "observed model days",
                                       "product_days": "with a product value", "share": "share",
                                       "probes_covered": "probes covered", "probes": "probes"},
        text_cols=("product",)))
    parts.append("<h2 id='variants'>Variants compared across probes</h2>")
    if r.wilcoxon is not None and len(r.wilcoxon):
        parts.append("<p class='note'>Paired two-sided Wilcoxon signed-rank test on per-probe MAE (all observed "
                     "days) of each variant's latest finished protocol run on the same data.</p>")
        parts.append(table_html(r.wilcoxon, "table-wilcoxon",
                                {"variant_a": "variant a", "variant_b": "variant b", "n": "n (probes)",
                                 "mean_mae_a": "mean MAE a", "mean_mae_b": "mean MAE b",
                                 "median_diff": "median MAE a − b", "a_better": "probes a better",
                                 "statistic": "W", "p_value": "p"}, text_cols=("variant_a", "variant_b")))
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in r.wilcoxon_sentences) + "</ul>")
    else:
        parts.append(f"<p class='note'>Only DLM_{v} has a finished protocol run on these data: no variant "
                     "comparison (run <code>soilmoisture train --set variant.name=full</code> and evaluate again).</p>")
    for key, head, title, tid in (("region", "region", "Per region (thesis Fig. 22)", "region"),
                                  ("landcover_name", "land cover (CLC)", "Per land cover (thesis Table 4)",
                                   "landcover")):
        table = r.by_region if key == "region" else r.by_landcover
        parts.append(f"<h2 id='{tid}'>{title}</h2><p class='note'>MAE (m³/m³) pooled over the group's probe-days; "
                     "each product beside the model on that product's days.</p>")
        parts.append(table_html(mae_wide(table, key, r.variant), f"table-{tid}-mae", {key: head},
                                text_cols=(key,)))
        parts.append(f"<details><summary>All metrics ({head}: MAE, RMSE, ubRMSE, bias, r, n)</summary>"
                     + _group_table(table, key, head, r.variant, f"table-{tid}") + "</details>")
    parts.append("<h2 id='probe'>Per probe (thesis Table B1)</h2><p class='note'>MAE (m³/m³). Each product's MAE "
                 "stands beside the model's MAE on that product's days; the first column is the model on all "
                 "observed days. Full metrics per probe: <code>evaluate/by_probe.csv</code>.</p>")
    parts.append(table_html(r.table_b1, "table-probe", {"probe_id": "probe"},
                            text_cols=("probe_id", "land cover (CLC)", "network")))
    parts.append("<h2 id='figures'>Figures</h2>")
    for name, (path, caption) in r.figures.items():
        cap = caption + (f" Probe: {r.figures_probe}." if name.startswith("probe_series") and r.figures_probe else "")
        parts.append(f"<h3>{html.escape(caption.split(' (')[0])}</h3>")
        parts.append(img_html(path, cap, "fig-" + name.rsplit(".", 1)[0].replace("_", "-")))
    prm = pd.DataFrame(sorted(r.params.items()), columns=["parameter", "value"])
    parts.append("<h2 id='params'>Parameters of the run</h2><details><summary>"
                 f"{len(prm)} parameters (as logged on the MLflow run)</summary>")
    parts.append(table_html(prm, "table-params", text_cols=("parameter", "value")) + "</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically (temporary name in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
