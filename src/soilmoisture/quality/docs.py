"""Great Expectations data docs that work offline.

GX 1.24 renders its data docs with 16 CSS/JS files from CDNs (bootstrap, jQuery, font-awesome, vega), builds
the index's list of validation runs with jQuery from embedded JSON, shows pass/fail as font-awesome icons,
and loads its logo from GX's bucket with the data-context id in the URL. Offline (this platform's normal
case) the index is empty and the icons are invisible; online every page view calls home.

After every build, :func:`make_offline` therefore rewrites the site in place:

* every external ``<script src=http…>``, ``<link href=http…>`` and remote image is removed (nothing is
  fetched, no id leaves the machine), and CSS ``url(http…)`` backgrounds are dropped;
* a small inline stylesheet gives the icon classes GX uses a visible text glyph (✔ passed, ✘ failed);
* ``index.html`` is replaced by a plain, self-contained page listing every stored validation run (newest
  first) with its suite, time, pass/fail and counts, linking to GX's own page of that run.

The validation results themselves are read from GX's validation-results store (JSON), never re-computed.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']https?://[^>]*>\s*</script>", re.I | re.S)
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']https?://[^>]*>", re.I | re.S)
_EXTERNAL_IMG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']https?://[^>]*>", re.I | re.S)
_EXTERNAL_CSS_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)", re.I)
MARKER = "<!-- soilmoisture: offline -->"
# Visible glyphs for the font-awesome classes GX's pages use (the font itself comes from a CDN).
ICON_CSS = """<style>
.fas::before,.far::before{font-style:normal;font-weight:bold}
.fa-check-circle::before,.fa-check::before{content:"\\2714 ";color:#198754}
.fa-times::before,.fa-times-circle::before,.fa-exclamation-triangle::before{content:"\\2718 ";color:#dc3545}
.fa-cog::before{content:"\\2699 "}
body{font-family:system-ui,sans-serif;margin:1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}
</style>"""


def strip_external(text: str) -> str:
    """``text`` (an HTML page) without anything fetched from the network, plus the icon stylesheet."""
    if MARKER in text:
        return text
    out = _EXTERNAL_SCRIPT.sub("", text)
    out = _EXTERNAL_LINK.sub("", out)
    out = _EXTERNAL_IMG.sub("", out)
    out = _EXTERNAL_CSS_URL.sub("none", out)
    head = re.search(r"<head[^>]*>", out, re.I)
    inject = MARKER + ICON_CSS
    return out[:head.end()] + inject + out[head.end():] if head else inject + out


def validation_runs(results_dir: Path, site_dir: Path) -> list[dict[str, Any]]:
    """Every stored validation result (``<suite>/<run>/<time>/<batch>.json``), newest first."""
    runs = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("data docs: skipped unreadable validation result %s (%s)", path, e)
            continue
        rel = path.relative_to(results_dir)
        page = Path(site_dir) / "validations" / rel.with_suffix(".html")
        stats = doc.get("statistics", {})
        run_id = (doc.get("meta") or {}).get("run_id") or {}
        failed = [r.get("expectation_config", {}).get("meta", {}).get("check")
                  or r.get("expectation_config", {}).get("type", "?")
                  for r in doc.get("results", []) if not r.get("success")]
        runs.append({"suite": doc.get("suite_name", rel.parts[0]), "run_name": run_id.get("run_name", ""),
                     "run_time": str(run_id.get("run_time") or (rel.parts[2] if len(rel.parts) > 2 else "")),
                     "success": bool(doc.get("success")),
                     "evaluated": int(stats.get("evaluated_expectations", 0)),
                     "passed": int(stats.get("successful_expectations", 0)),
                     "failed": int(stats.get("unsuccessful_expectations", 0)), "failed_checks": failed,
                     "page": os.path.relpath(page, site_dir) if page.is_file() else None})
    return sorted(runs, key=lambda r: (r["run_time"], r["suite"]), reverse=True)


def index_page(runs: list[dict[str, Any]], suites: list[str]) -> str:
    """A self-contained HTML index of ``runs`` (no script, no network)."""
    e = html.escape
    rows = []
    for r in runs:
        status = ('<span class="ok">&#10004; passed</span>' if r["success"]
                  else '<span class="bad">&#10008; failed</span>')
        when = _short_time(r["run_time"])
        link = f'<a href="{e(r["page"])}">{e(when)}</a>' if r["page"] else e(when)
        rows.append(f'<tr class="{"ok" if r["success"] else "bad"}"><td>{link}</td><td>{e(r["suite"])}</td>'
                    f'<td>{status}</td><td>{r["passed"]} / {r["evaluated"]}</td>'
                    f'<td>{e(", ".join(c for c in r["failed_checks"] if c)) or "&ndash;"}</td></tr>')
    n_bad = sum(not r["success"] for r in runs)
    suite_links = " · ".join(f'<a href="expectations/{e(s)}.html">{e(s)}</a>' for s in suites)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{MARKER}
<title>Data quality: validation runs</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:80em}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f3f3f3}}.ok{{color:#146c43}}.bad{{color:#b02a37;font-weight:bold}}tr.bad td{{background:#fdf0f1}}
</style></head><body>
<h1>Data quality gate: validation runs</h1>
<p>{len(runs)} validation results ({n_bad} failed), newest first. Each links to Great Expectations' page of
that run (rendered offline, without GX's styling). Expectation suites: {suite_links or "&ndash;"}.</p>
<table id="validation-runs"><thead><tr><th>run time (UTC)</th><th>suite</th><th>result</th>
<th>expectations passed</th><th>failed checks</th></tr></thead><tbody>
{chr(10).join(rows) or '<tr><td colspan="5">no validation run stored yet</td></tr>'}
</tbody></table></body></html>
"""


def _short_time(iso: str) -> str:
    """``2026-12-02T10:28:30.066282+00:00`` -> ``2026-12-02 10:28:30`` (UTC); other text unchanged."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def make_offline(site_dir: Path, results_dir: Path, suites: list[str]) -> Path:
    """Rewrite the GX site in ``site_dir`` for offline use and write its index; returns the index path.

    Each page is rewritten under a temporary name and renamed, so a reader never sees half a page.
    """
    site_dir = Path(site_dir)
    for page in site_dir.rglob("*.html"):
        if page.name == "index.html" and page.parent == site_dir:
            continue
        text = page.read_text(encoding="utf-8")
        new = strip_external(text)
        if new != text:
            _write(page, new)
    index = site_dir / "index.html"
    _write(index, index_page(validation_runs(results_dir, site_dir), suites))
    return index


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
