"""Evaluation against ECV_SM and CSM: tables by hand, the simulated area end to end, the report in a browser."""
from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soilmoisture.evaluate import compare as cmp

ROOT = Path(__file__).resolve().parents[1]


# --- small frames built by hand ----------------------------------------------------------------------
def small_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Two probes x 4 days x 2 repeats; A observed every day, B on 3 days; ECV_SM on 3 days, CSM on 2."""
    dates = pd.date_range("2017-06-01", periods=4, freq="D")
    obs = {"A": [0.10, 0.20, 0.30, 0.40], "B": [0.20, np.nan, 0.20, 0.20]}
    pred = {("A", 0): [0.12, 0.18, 0.33, 0.40], ("A", 1): [0.10, 0.22, 0.30, 0.36],
            ("B", 0): [0.25, 0.25, 0.15, 0.20], ("B", 1): [0.20, 0.30, 0.20, 0.30]}
    rows = []
    for (p, r), v in pred.items():
        rows.append(pd.DataFrame({"probe_id": p, "date": dates, "repeat": r, "ssm": obs[p], "ssm_pred": v,
                                  "baseline_train_mean": 0.2}))
    predictions = pd.concat(rows, ignore_index=True)
    daily = pd.DataFrame({"probe_id": ["A"] * 4 + ["B"] * 4, "date": list(dates) * 2,
                          "ecv_sm": [0.15, 0.15, np.nan, 0.35, 0.30, 0.30, 0.30, np.nan],
                          "csm": [np.nan, 0.40, np.nan, np.nan, 0.00, np.nan, np.nan, np.nan]})
    probes = pd.DataFrame({"probe_id": ["A", "B"], "network": ["HOBE", "REMEDHUS"], "region": ["denmark", "spain"],
                           "landcover_code": [211, 211], "landcover_name": ["Non-irrigated arable land"] * 2})
    return predictions, daily, probes


def test_products_and_model_are_scored_on_the_same_probe_days():
    paired = cmp.paired_frame(*small_frames())
    ov = cmp.compare(paired, []).set_index(["days", "estimator"])
    # ECV_SM days: A on days 1, 2, 4 and B on days 1, 3 (B's day 2 is unobserved) -> 5 probe-days per repeat
    assert ov.loc[("ecv_sm", "ecv_sm"), "n"] == ov.loc[("ecv_sm", "model"), "n"] == 5
    assert ov.loc[("csm", "csm"), "n"] == ov.loc[("csm", "model"), "n"] == 2   # A day 2, B day 1
    assert ov.loc[("all", "model"), "n"] == 7
    # hand-computed: ECV_SM errors +0.05, -0.05, -0.05 (A) and +0.10, +0.10 (B) -> MAE 0.07, bias 0.03
    assert ov.loc[("ecv_sm", "ecv_sm"), "mae"] == pytest.approx(0.07)
    assert ov.loc[("ecv_sm", "ecv_sm"), "bias"] == pytest.approx(0.03)
    assert ov.loc[("ecv_sm", "ecv_sm"), "rmse"] == pytest.approx(np.sqrt((3 * 0.05**2 + 2 * 0.1**2) / 5))
    # CSM: |0.40-0.20| and |0.00-0.20| -> MAE 0.2, bias 0, ubRMSE 0.2; both observed 0.20: r undefined
    assert ov.loc[("csm", "csm"), ["mae", "bias", "ubrmse"]].tolist() == pytest.approx([0.2, 0.0, 0.2])
    assert np.isnan(ov.loc[("csm", "csm"), "pearson_r"])
    # model on CSM days, per repeat then averaged: r0 |0.18-0.2|,|0.25-0.2| -> 0.035; r1 0.02, 0 -> 0.01
    assert ov.loc[("csm", "model"), "mae"] == pytest.approx((0.035 + 0.01) / 2)


def test_model_metrics_are_averaged_over_repeats_like_the_protocol():
    paired = cmp.paired_frame(*small_frames())
    by_probe = cmp.compare(paired, ["probe_id"]).set_index(["probe_id", "days", "estimator"])
    a0 = np.mean([0.02, 0.02, 0.03, 0.0])
    a1 = np.mean([0.0, 0.02, 0.0, 0.04])
    assert by_probe.loc[("A", "all", "model"), "mae"] == pytest.approx((a0 + a1) / 2)
    assert by_probe.loc[("B", "all", "model"), "n"] == 3
    assert by_probe.loc[("B", "all", "baseline_train_mean"), "mae"] == pytest.approx(0.0)
    assert by_probe.loc[("B", "csm", "csm"), "n_probes"] == 1


def test_group_tables_pool_probe_days_by_land_cover_and_region():
    paired = cmp.paired_frame(*small_frames())
    lc = cmp.compare(paired, ["landcover_name"])
    assert set(lc["landcover_name"]) == {"Non-irrigated arable land"}
    reg = cmp.compare(paired, ["region"]).set_index(["region", "days", "estimator"])
    assert reg.loc[("spain", "ecv_sm", "ecv_sm"), "mae"] == pytest.approx(0.10)   # B days 1 and 3
    assert reg.loc[("denmark", "ecv_sm", "ecv_sm"), "mae"] == pytest.approx(0.05)
    wide = cmp.mae_wide(reg.reset_index(), "region", "minimum").set_index("region")
    assert wide.loc["denmark", "ECV_SM"] == pytest.approx(0.05)
    assert list(wide.columns) == ["DLM_minimum", "baseline train_mean", "DLM_minimum on ECV_SM days", "ECV_SM",
                                  "DLM_minimum on CSM days", "CSM", "probes"]


def test_coverage_says_how_many_observed_days_each_product_covers():
    cover = cmp.coverage(cmp.paired_frame(*small_frames())).set_index("product")
    assert cover.loc["ECV_SM", ["observed_days", "product_days", "probes_covered"]].tolist() == [7, 5, 2]
    assert cover.loc["CSM", "share"] == pytest.approx(2 / 7)


def test_table_b1_has_variants_products_land_cover_and_network_per_probe():
    paired = cmp.paired_frame(*small_frames())
    b1 = cmp.table_b1(cmp.compare(paired, ["probe_id"]), paired, "minimum",
                      {"full": pd.Series({"A": 0.3, "B": 0.4})}).set_index("probe_id")
    assert list(b1.columns[:2]) == ["DLM_minimum", "DLM_full"]
    assert {"CSM", "ECV_SM", "land cover (CLC)", "network", "n_ECV_SM_days"} <= set(b1.columns)
    assert b1.loc["B", "network"] == "REMEDHUS" and b1.loc["A", "DLM_full"] == 0.3
    assert b1.loc["B", "CSM"] == pytest.approx(0.0 + 0.2) and b1.loc["A", "n_days"] == 4


def test_median_mae_probe_is_the_middle_probe():
    t = pd.DataFrame({"probe_id": list("abcde"), "days": "all", "estimator": "model",
                      "mae": [0.5, 0.1, 0.3, np.nan, 0.2]})
    assert cmp.median_mae_probe(t.assign(mae=[0.5, 0.1, 0.3, 0.4, 0.2])) == "c"
    assert cmp.median_mae_probe(t) == "e"          # NaN ignored; even count: the lower middle (0.1 0.2 | 0.3 0.5)


def test_wilcoxon_pairs_probes_and_reports_n_and_p():
    from scipy import stats

    rng = np.random.default_rng(3)
    full = pd.Series(rng.uniform(0.05, 0.2, 12), index=[f"p{i}" for i in range(12)])
    minimum = full - 0.02 + rng.normal(0, 0.002, 12)           # better on every probe
    agri = pd.Series([0.1, 0.2], index=["p0", "zz"])           # one shared probe only
    w = cmp.wilcoxon_variants({"full": full, "minimum": minimum, "agriculture": agri})
    row = w[(w.variant_a == "full") & (w.variant_b == "minimum")].iloc[0]
    assert row["n"] == 12 and row["a_better"] == 0 and row["median_diff"] > 0
    assert row["p_value"] == pytest.approx(stats.wilcoxon(full, minimum).pvalue) and row["p_value"] < 0.01
    s = cmp.wilcoxon_sentence(row)
    assert "DLM_minimum has the lower MAE than DLM_full on 12 of 12 probes" in s and "significant" in s
    lone = w[(w.variant_a == "agriculture") & (w.variant_b == "full")].iloc[0]
    assert lone["n"] == 1 and np.isnan(lone["p_value"]) and "no test possible" in cmp.wilcoxon_sentence(lone)


def test_verdict_says_in_words_which_baseline_beats_the_model():
    from soilmoisture.evaluate.compare import verdict

    def overall(model_mae: float) -> pd.DataFrame:
        return pd.DataFrame({"days": ["all"] * 4 + ["ecv_sm"], "mae": [model_mae, 0.036, 0.050, 0.044, 0.01],
                             "estimator": ["model", "baseline_network_day", "baseline_train_mean",
                                           "baseline_climatology", "ecv_sm"]})

    worse = verdict(overall(0.040), "minimum")
    assert worse == ["baseline network_day beats DLM_minimum: MAE 0.0360 against the model's 0.0400 "
                     "(1.11x worse) on the same days."]
    assert len(verdict(overall(0.047), "minimum")) == 2          # network_day and climatology, best first
    better = verdict(overall(0.030), "minimum")
    assert better == ["DLM_minimum beats every baseline: MAE 0.0300, 0.83x the best baseline "
                      "(baseline network_day, 0.0360) on the same days."]


def test_figures_are_labelled_pngs(tmp_path):
    from soilmoisture.evaluate import figures

    pred, daily, probes = small_frames()
    daily = daily.assign(sigma0_vv=0.05, precip_mm=1.0, ssm=np.nan)
    paired = cmp.paired_frame(pred, daily, probes)
    out = figures.write_figures(paired, daily, cmp.compare(paired, []), cmp.compare(paired, ["region"]), "A",
                                "minimum", tmp_path)
    assert set(out) == set(figures.FIGURES)
    for p in out.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))   # no temporary files left behind


def test_a_source_without_products_still_gets_tables_figures_and_a_report(tmp_path):
    """The REMEDHUS export has no ECV_SM/CSM: product day sets are empty (n = 0), nothing breaks."""
    from soilmoisture.evaluate import figures, report

    pred, daily, probes = small_frames()
    daily = daily.assign(ecv_sm=np.nan, csm=np.nan)
    paired = cmp.paired_frame(pred, daily, probes)
    ov = cmp.compare(paired, [])
    prod = ov[ov["estimator"].isin(["ecv_sm", "csm"])]
    assert (prod["n"] == 0).all() and prod["mae"].isna().all()
    assert (cmp.coverage(paired)["product_days"] == 0).all()
    reg = cmp.compare(paired, ["region"])
    figs = figures.write_figures(paired, daily, ov, reg, "B", "minimum", tmp_path)
    page = report.build_html(report.ReportInput(
        run_id="r1", variant="minimum", run_info={}, headline=cmp.headline(ov, "minimum"),
        coverage=cmp.coverage(paired), by_region=reg, by_landcover=cmp.compare(paired, ["landcover_name"]),
        table_b1=cmp.table_b1(cmp.compare(paired, ["probe_id"]), paired, "minimum"),
        figures={n: (p, figures.FIGURES[n]) for n, p in figs.items()}, params={"a": "1"}))
    assert page.count("data:image/png;base64,") == len(figures.FIGURES) and "table-probe" in page


# --- the simulated area end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(tiny_area, tmp_path_factory):
    """tiny area -> ingest -> quality gate -> protocol (keras, 1 epoch, 10 probes) -> ``soilmoisture evaluate``."""
    from conftest import write_params

    from soilmoisture import cli, config
    from soilmoisture.harmonise import run as harmonise
    from soilmoisture.protocol.run import run as protocol
    from soilmoisture.quality.gate import run as gate

    root = tmp_path_factory.mktemp("evaluate") / "area"
    shutil.copytree(tiny_area, root, ignore=shutil.ignore_patterns("mlruns", "optuna"))
    # half a year (spring-summer) of the tiny area keeps ingest and the 11 keras models quick
    path = write_params(root, {"protocol.engine": "keras", "model.epochs": 1, "variant.name": "minimum",
                               "data.start": "2017-04-01", "data.end": "2017-09-30"})
    params = config.load(path)
    harmonise(params)
    gx = root / "expectations"
    shutil.copytree(ROOT / "expectations", gx, ignore=shutil.ignore_patterns("uncommitted"))
    gate(params, context_root=gx)
    rid = protocol(params)
    assert cli.main(["evaluate", "--params", str(path)]) == 0
    return params, path, rid


def _client(params):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    return MlflowClient(tracking.tracking_uri(params))


def test_simulated_products_behave_as_built_csm_worse_than_ecv_and_ecv_capped(evaluated):
    params, _, _ = evaluated
    out = params.path(params.paths.reports) / "evaluate"
    ov = pd.read_csv(out / "overall.csv").set_index(["days", "estimator"])
    assert ov.loc[("csm", "csm"), "mae"] > ov.loc[("ecv_sm", "ecv_sm"), "mae"]
    # same probe-days for the model and each product
    for p in ("ecv_sm", "csm"):
        assert ov.loc[(p, p), "n"] == ov.loc[(p, "model"), "n"] > 0
        assert ov.loc[(p, p), "n"] < ov.loc[("all", "model"), "n"]
    daily = pd.read_parquet(params.path(params.paths.processed) / "daily.parquet")
    assert daily["ecv_sm"].max() <= 0.35   # the simulator's ECV_SM-like cap
    cover = pd.read_csv(out / "coverage.csv").set_index("product")
    assert 0 < cover.loc["CSM", "share"] < 1 and 0 < cover.loc["ECV_SM", "share"] < 1
    by_probe = pd.read_csv(out / "by_probe.csv")
    assert by_probe["probe_id"].nunique() == 10


def test_comparison_is_logged_on_the_parent_protocol_run(evaluated, tmp_path):
    from soilmoisture import tracking
    from soilmoisture.evaluate.figures import FIGURES

    params, _, rid = evaluated
    c = _client(params)
    names = {Path(a.path).name for a in c.list_artifacts(rid, tracking.ART_COMPARISON_DIR)}
    assert set(FIGURES) | {"by_probe.csv", "by_landcover.csv", "by_region.csv", "table_b1.csv", "metrics.json",
                           "report.html"} <= names
    metrics = c.get_run(rid).data.metrics
    assert metrics[tracking.comparison_metric("csm_days.csm.mae")] > metrics[
        tracking.comparison_metric("ecv_sm_days.ecv_sm.mae")]


class _Outline(HTMLParser):
    """Collects element ids, image sources and every external reference of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.img_src: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "img":
            self.img_src.append(a.get("src", ""))
        for k in ("src", "href"):
            if a.get(k, "").startswith(("http:", "https:", "//")):
                self.external.append(a[k])


def test_report_is_self_contained_with_every_table_and_figure(evaluated):
    from soilmoisture.evaluate.figures import FIGURES

    params, _, rid = evaluated
    page = (params.path(params.paths.reports) / "report.html").read_text()
    outline = _Outline()
    outline.feed(page)
    assert {"table-headline", "table-coverage", "table-region-mae", "table-landcover-mae", "table-probe",
            "table-region", "table-landcover", "table-params", "run-info"} <= outline.ids
    assert {"fig-" + n[:-4].replace("_", "-") for n in FIGURES} <= outline.ids
    assert len(outline.img_src) == len(FIGURES)
    assert all(s.startswith("data:image/png;base64,") for s in outline.img_src)
    assert not outline.external and "<script" not in page
    assert rid in page and "processed data (md5)" in page
    assert "verdict" in outline.ids                              # the headline in words


def test_second_variant_run_gives_a_paired_wilcoxon_test(evaluated):
    """A finished protocol run of another variant on the same data (logged for real, without training)."""
    from soilmoisture import cli, tracking

    params, path, rid = evaluated
    c = _client(params)
    main = c.get_run(rid)
    local = c.download_artifacts(rid, tracking.ART_PER_PROBE, str(params.root / "dl"))
    per_probe = pd.read_parquet(local)
    per_probe["mae"] = per_probe["mae"] + 0.05    # "full" worse on every probe
    other = c.create_run(main.info.experiment_id, run_name="full", tags={
        tracking.TAG_KIND: "protocol", tracking.TAG_VARIANT: "full", tracking.TAG_SOURCE: "simulated",
        tracking.TAG_MODE: "unseen_site", tracking.TAG_DATA_HASH: main.data.tags[tracking.TAG_DATA_HASH]})
    f = params.root / "dl" / "per_probe_metrics.parquet"
    per_probe.to_parquet(f, index=False)
    c.log_artifact(other.info.run_id, str(f), str(Path(tracking.ART_PER_PROBE).parent))
    c.set_terminated(other.info.run_id, "FINISHED")

    assert cli.main(["evaluate", "--params", str(path)]) == 0
    out = params.path(params.paths.reports)
    w = pd.read_csv(out / "evaluate" / "wilcoxon_variants.csv").iloc[0]
    assert (w["variant_a"], w["variant_b"], w["n"], w["a_better"]) == ("full", "minimum", 10, 0)
    assert w["p_value"] < 0.01
    b1 = pd.read_csv(out / "evaluate" / "table_b1.csv")
    assert {"DLM_minimum", "DLM_full"} <= set(b1.columns)
    page = (out / "report.html").read_text()
    assert "table-wilcoxon" in page and "DLM_minimum has the lower MAE than DLM_full on 10 of 10 probes" in page


def test_missing_run_and_unknown_probe_fail_by_name(evaluated):
    from soilmoisture import config
    from soilmoisture.errors import ConfigError, DataError
    from soilmoisture.evaluate.stage import run

    params, path, _ = evaluated
    with pytest.raises(DataError, match="no FINISHED protocol run of variant 'agriculture'"):
        run(config.load(path, {"variant.name": "agriculture"}))
    with pytest.raises(ConfigError, match="evaluate.figures_probe"):
        run(config.load(path, {"evaluate.figures_probe": "nowhere"}))


def test_report_renders_in_headless_chromium(evaluated, tmp_path, chromium):
    params, _, _ = evaluated
    shot = tmp_path / "report.png"
    res = subprocess.run([str(ROOT / "scripts" / "check_report.sh"),
                          str(params.path(params.paths.reports) / "report.html"), str(shot)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000   # a rendered page, not a blank one
