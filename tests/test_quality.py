"""The quality gate: passes on correct tables, fails closed on each kind of bad data, publishes atomically."""
from __future__ import annotations

import hashlib
import re
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from soilmoisture.errors import QualityGateError
from soilmoisture.quality import gate
from soilmoisture.quality.suites import GateSettings, build_checks
from soilmoisture.schema import DAILY_COLUMNS, PROBE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
START, END = "2017-01-01", "2017-03-31"   # 90 days keep every case fast
SETTINGS = GateSettings(start=START, end=END, sigma0_max=0.35, ssm_flag_threshold=0.5, ssm_flag_mostly=0.95,
                        ecv_sm_max=0.6)
PROBES = ("P1", "P2", "P3")


def make_tables(start: str = START, end: str = END, probes: tuple[str, ...] = PROBES,
                seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A valid daily table and probes table in the data contract of schema.py (seeded, plausible)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, end, freq="D")
    n = len(dates)
    parts = []
    for i, pid in enumerate(probes):
        ts_max = 8 + 10 * np.sin(np.arange(n) / 58.0) + rng.normal(0, 2, n)
        ts_max[5:9] = -2.0                                       # a frozen spell
        frozen = ts_max <= 0
        ssm = rng.uniform(0.08, 0.45, n)
        ssm[frozen] = np.nan                                     # thesis 3.2.1: removed
        ssm[20 + i] = 0.55                                       # one questionable value, flagged
        overpass = np.arange(n) % 6 == i
        parts.append(pd.DataFrame({
            "probe_id": pid, "date": dates, "network": "REMEDHUS", "region": "spain",
            "ssm": ssm, "ssm_flag_gt50": ssm > 0.5, "frozen": frozen, "ts_max": ts_max,
            "sigma0_vv": np.where(overpass, rng.uniform(0.02, 0.3, n), np.nan),
            "sigma0_outlier": np.zeros(n, bool), "ndvi": rng.uniform(-0.1, 0.9, n), "ndwi": rng.uniform(-0.6, 0.6, n),
            "precip_mm": rng.exponential(1.5, n), "dry_days": np.zeros(n), "ta_min": ts_max - 6, "ta_mean": ts_max - 3,
            "ta_max": ts_max, "ecv_sm": np.where(np.arange(n) % 3 == 0, rng.uniform(0.1, 0.5, n), np.nan),
            "csm": np.nan,
        }))
    daily = pd.concat(parts, ignore_index=True)[list(DAILY_COLUMNS)]
    daily.loc[2, "sigma0_outlier"] = True
    probes_df = pd.DataFrame({c: [np.nan] * len(probes) for c in PROBE_COLUMNS})
    probes_df = probes_df.assign(
        probe_id=list(probes), network="REMEDHUS", region="spain", lat=[41.2 + 0.1 * i for i in range(len(probes))],
        lon=[-5.3 - 0.1 * i for i in range(len(probes))], landcover_code=[(211, 212, 231)[i % 3] for i in
                                                                          range(len(probes))],
        landcover_name="x", climate_class="Csb")[list(PROBE_COLUMNS)]
    return daily, probes_df


def write_interim(folder: Path, daily: pd.DataFrame, probes: pd.DataFrame, report: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    daily.to_parquet(folder / gate.DAILY_FILE, index=False)
    probes.to_parquet(folder / gate.PROBES_FILE, index=False)
    if report is not None:
        (folder / gate.INGEST_REPORT_FILE).write_text(json.dumps(report))
    return folder


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> md5 of every file under ``folder`` (empty if absent)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def gx_copy(dst: Path) -> Path:
    """A temporary copy of the repository's expectations/ (committed part only): tests never write there."""
    src = ROOT / "expectations"
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("uncommitted"))
    else:
        dst.mkdir(parents=True)
    return dst


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory) -> Path:
    """One GX context for the module (creating contexts is cheap, but one keeps every case comparable)."""
    return gx_copy(tmp_path_factory.mktemp("gx") / "expectations")


@pytest.fixture(scope="module")
def published(tmp_path_factory, gx_root: Path) -> Path:
    """A processed/ folder published by the gate from valid tables (the 'previous' state to protect)."""
    base = tmp_path_factory.mktemp("published")
    daily, probes = make_tables()
    interim = write_interim(base / "interim", daily, probes, {"sigma0_outliers_removed": 7})
    gate.check_and_publish(interim, base / "processed", gx_root, SETTINGS)
    return base / "processed"


# --- passing -------------------------------------------------------------------------------------------
def test_gate_passes_and_publishes_correct_tables(tmp_path: Path, gx_root: Path) -> None:
    daily, probes = make_tables()
    interim = write_interim(tmp_path / "interim", daily, probes, {"sigma0_outliers_removed": 7})
    before = tree_hashes(interim)
    summary = gate.check_and_publish(interim, tmp_path / "processed", gx_root, SETTINGS)
    assert summary["success"] and summary["expectations_failed"] == 0
    assert summary["expectations_passed"] == len(build_checks(SETTINGS))
    assert summary["flagged_ssm_days"] == 3                  # one questionable value per probe, reported
    assert summary["frozen_days_removed"] == 12              # 4 frozen days x 3 probes
    assert summary["sigma0_outliers_removed"] == 7           # taken from ingest_report.json
    out = tree_hashes(tmp_path / "processed")
    assert set(out) == {"daily.parquet", "probes.parquet", "ingest_report.json", "quality_summary.json"}
    assert out["daily.parquet"] == before["daily.parquet"]    # published unchanged, byte for byte
    assert tree_hashes(interim) == before                     # inputs never modified
    assert Path(summary["data_docs"]).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".processed")]  # no temp leftovers


def test_flagged_ssm_is_dropped_only_when_asked(tmp_path: Path, gx_root: Path) -> None:
    daily, probes = make_tables()
    interim = write_interim(tmp_path / "interim", daily, probes)
    settings = GateSettings(**{**SETTINGS.__dict__, "drop_flagged_ssm": True})
    summary = gate.check_and_publish(interim, tmp_path / "processed", gx_root, settings)
    out = pd.read_parquet(tmp_path / "processed" / "daily.parquet")
    assert summary["ssm_dropped"] == 3
    assert out.loc[out["ssm_flag_gt50"], "ssm"].isna().all()
    assert out["ssm"].notna().sum() == daily["ssm"].notna().sum() - 3
    assert pd.read_parquet(interim / "daily.parquet")["ssm"].notna().sum() == daily["ssm"].notna().sum()


def test_rerunning_the_gate_does_not_change_committed_suites(tmp_path: Path, gx_root: Path) -> None:
    daily, probes = make_tables()
    interim = write_interim(tmp_path / "interim", daily, probes)
    gate.check_and_publish(interim, tmp_path / "processed", gx_root, SETTINGS)
    committed = {k: v for k, v in tree_hashes(gx_root / "gx").items() if not k.startswith("uncommitted")}
    gate.check_and_publish(interim, tmp_path / "processed", gx_root, SETTINGS)
    again = {k: v for k, v in tree_hashes(gx_root / "gx").items() if not k.startswith("uncommitted")}
    assert again == committed
    assert {"expectations/daily.json", "expectations/probes.json", "expectations/coverage.json",
            "great_expectations.yml", ".gitignore"} <= set(committed)
    assert "uncommitted/" in (gx_root / "gx" / ".gitignore").read_text()


def test_committed_suites_match_params_yaml(tmp_path: Path) -> None:
    """expectations/gx/ in the repository is what the gate writes for the project's params.yaml."""
    from soilmoisture import config

    params = config.load(ROOT / "params.yaml")
    out = gate.write_suites(gx_copy(tmp_path / "expectations"), gate.settings_from_params(params))
    committed = ROOT / "expectations" / "gx"
    for rel in ("expectations/daily.json", "expectations/probes.json", "expectations/coverage.json",
                "checkpoints/quality_gate.json", "great_expectations.yml"):
        assert (out / rel).read_bytes() == (committed / rel).read_bytes(), \
            f"expectations/gx/{rel} is stale: regenerate with `python -m soilmoisture.quality.gate params.yaml`"


# --- failing: one corruption per expectation -----------------------------------------------------------
Corruption = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]


def _set(col: str, value, where: Callable[[pd.DataFrame], pd.Series] | None = None, table: str = "daily",
         n: int = 1) -> Corruption:
    def corrupt(daily: pd.DataFrame, probes: pd.DataFrame):
        df = daily if table == "daily" else probes
        rows = df.index[where(df)] if where else df.index
        df.loc[rows[:n], col] = value
        return daily, probes
    return corrupt


def _observed(df: pd.DataFrame) -> pd.Series:
    return df["ssm"].notna() & ~df["ssm_flag_gt50"]


def _frozen_with_ssm(daily, probes):
    daily.loc[daily.index[daily["frozen"]][:2], "ssm"] = 0.2
    return daily, probes


def _cold_unflagged_with_ssm(daily, probes):
    i = daily.index[_observed(daily)][10]   # frozen flag missing but TS_max says frozen
    daily.loc[i, ["ts_max", "frozen"]] = [-0.5, False]
    return daily, probes


def _many_questionable(daily, probes):
    rows = daily.index[_observed(daily)][::8]    # > 5 % of observed values above 0.5, all flagged
    daily.loc[rows, ["ssm", "ssm_flag_gt50"]] = [0.7, True]
    return daily, probes


def _drop_column(col: str, table: str = "daily") -> Corruption:
    def corrupt(daily, probes):
        return (daily.drop(columns=col), probes) if table == "daily" else (daily, probes.drop(columns=col))
    return corrupt


def _duplicate_row(daily, probes):
    return pd.concat([daily, daily.iloc[[30]]], ignore_index=True), probes


def _duplicate_probe(daily, probes):
    return daily, pd.concat([probes, probes.iloc[[0]]], ignore_index=True)


def _missing_landcover(daily, probes):
    probes["landcover_code"] = probes["landcover_code"].astype("Int64")
    probes.loc[1, "landcover_code"] = pd.NA
    return daily, probes


def _probe_not_in_probes_table(daily, probes):
    return daily, probes[probes["probe_id"] != "P2"].reset_index(drop=True)


def _row_outside_range(daily, probes):
    extra = daily.iloc[[len(daily) - 1]].copy()
    extra["date"] = pd.Timestamp(END) + pd.Timedelta(days=1)
    return pd.concat([daily, extra], ignore_index=True), probes


def _missing_day(daily, probes):
    return daily.drop(index=40).reset_index(drop=True), probes


CORRUPTIONS: dict[str, tuple[str, Corruption]] = {
    "missing_column": ("daily_required_columns", _drop_column("precip_mm")),
    "ssm_on_frozen_day": ("no_ssm_on_frozen_days", _frozen_with_ssm),
    "ssm_on_ts_max_below_zero": ("no_ssm_on_frozen_days", _cold_unflagged_with_ssm),
    "negative_ssm": ("ssm_within_0_1", _set("ssm", -0.05, _observed)),
    "ssm_above_one": ("ssm_within_0_1", _set("ssm", 1.2, _observed)),
    "unflagged_ssm_above_threshold": ("unflagged_ssm_at_most_threshold", _set("ssm", 0.6, _observed)),
    "flag_on_low_ssm": ("flagged_ssm_above_threshold", _set("ssm_flag_gt50", True, _observed)),
    "too_many_questionable_ssm": ("ssm_mostly_at_most_threshold", _many_questionable),
    "sigma0_above_max": ("sigma0_within_0_max", _set("sigma0_vv", 0.5, lambda d: d["sigma0_vv"].notna())),
    "sigma0_zero": ("sigma0_within_0_max", _set("sigma0_vv", 0.0, lambda d: d["sigma0_vv"].notna())),
    "ndvi_above_one": ("ndvi_within_minus1_1", _set("ndvi", 1.5)),
    "ndwi_below_minus_one": ("ndwi_within_minus1_1", _set("ndwi", -1.2)),
    "negative_precipitation": ("precip_non_negative", _set("precip_mm", -0.1)),
    "duplicate_probe_day": ("probe_date_unique", _duplicate_row),
    "ecv_sm_above_max": ("ecv_sm_within_0_max", _set("ecv_sm", 0.7, lambda d: d["ecv_sm"].notna())),
    "probes_missing_region_column": ("probes_required_columns", _drop_column("region", "probes")),
    "duplicate_probe": ("probe_id_unique", _duplicate_probe),
    "latitude_out_of_range": ("probe_lat_in_range", _set("lat", 95.0, table="probes")),
    "missing_latitude": ("probe_lat_present", _set("lat", np.nan, table="probes")),
    "longitude_out_of_range": ("probe_lon_in_range", _set("lon", -190.0, table="probes")),
    "missing_longitude": ("probe_lon_present", _set("lon", np.nan, table="probes")),
    "missing_landcover": ("probe_landcover_present", _missing_landcover),
    "missing_region": ("probe_region_present", _set("region", None, table="probes")),
    "probe_without_metadata": ("probe_in_probes_table", _probe_not_in_probes_table),
    "row_outside_daily_range": ("daily_rows_per_probe", _row_outside_range),
    "missing_day": ("daily_range_complete", _missing_day),
}


def test_every_expectation_has_a_corruption_case() -> None:
    assert {name for name, _ in CORRUPTIONS.values()} == {c.name for c in build_checks(SETTINGS)}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_gate_fails_closed_on_corrupted_data(case: str, tmp_path: Path, gx_root: Path, published: Path) -> None:
    expected, corrupt = CORRUPTIONS[case]
    daily, probes = make_tables()
    daily, probes = corrupt(daily.copy(), probes.copy())
    interim = write_interim(tmp_path / "interim", daily, probes)
    processed = tmp_path / "processed"
    shutil.copytree(published, processed)
    before = tree_hashes(processed)
    with pytest.raises(QualityGateError) as info:
        gate.check_and_publish(interim, processed, gx_root, SETTINGS)
    err = info.value
    failed = [line.split(" ", 1)[0] for line in err.failures]
    assert expected in failed, err.failures
    line = next(f for f in err.failures if f.startswith(expected))
    assert "unexpected" in line or "missing column" in line
    assert expected in str(err) and "data docs:" in str(err)
    assert err.docs_path and Path(err.docs_path).is_file()
    assert tree_hashes(processed) == before                    # previous processed/ untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".processed")]


def test_failure_message_names_counts_and_example_rows(tmp_path: Path, gx_root: Path) -> None:
    daily, probes = make_tables()
    daily.loc[[31, 32], "precip_mm"] = -3.0
    interim = write_interim(tmp_path / "interim", daily, probes)
    with pytest.raises(QualityGateError, match=r"precip_non_negative \[daily.precip_mm\]: 2 of 270 rows unexpected"
                                               r".*probe_id=P1, date=2017-02-01, precip_mm=-3.0"):
        gate.check_and_publish(interim, tmp_path / "processed", gx_root, SETTINGS)
    assert not (tmp_path / "processed").exists()


def test_missing_interim_table_names_the_file(tmp_path: Path, gx_root: Path) -> None:
    from soilmoisture.errors import DataError

    with pytest.raises(DataError, match=r"daily.parquet: interim table not found"):
        gate.check_and_publish(tmp_path / "interim", tmp_path / "processed", gx_root, SETTINGS)


# --- stage entry point: MLflow ---------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _own_mlflow_store(monkeypatch) -> None:
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which tracking.tracking_uri() then prefers:
    without this, a second test in the process would log into the first test's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def shared_mlflow_store(folder: Path) -> dict[str, str]:
    """Overrides pointing several tests at one MLflow store (creating a SQLite store costs seconds)."""
    return {"tracking.uri": f"sqlite:///{folder / 'mlflow.db'}", "tracking.artifact_root": str(folder / "artifacts")}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> dict[str, str]:
    return shared_mlflow_store(tmp_path_factory.mktemp("mlruns"))


def _params_with_interim(make_params, root: Path, daily: pd.DataFrame, probes: pd.DataFrame, store: dict):
    params = make_params({"data.start": START, "data.end": END, **store}, root=root)
    write_interim(params.path(params.paths.interim), daily, probes, {"frozen_days_removed": 12})
    return params


def test_stage_logs_a_quality_run_to_mlflow(tmp_path: Path, make_params, gx_root: Path, mlflow_store) -> None:
    import mlflow

    from soilmoisture import tracking

    params = _params_with_interim(make_params, tmp_path / "ok", *make_tables(), mlflow_store)
    summary = gate.run(params, context_root=gx_root)
    assert (params.path(params.paths.processed) / "daily.parquet").is_file()
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_KIND] == "quality"
    assert run.data.metrics["flagged_ssm_days"] == 3 and run.data.metrics["frozen_days_removed"] == 12
    assert run.data.metrics["expectations_failed"] == 0
    assert run.data.params["quality.ssm_flag_mostly"] == "0.95"
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "quality/data_docs")]
    assert "quality/data_docs/index.html" in arts
    config_art = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{tracking.ART_CONFIG}")
    assert config_art["quality"]["ssm_flag_threshold"] == 0.5


def test_stage_marks_a_failing_gate_run_failed(tmp_path: Path, make_params, gx_root: Path, mlflow_store) -> None:
    import mlflow

    from soilmoisture import tracking

    daily, probes = make_tables()
    daily.loc[3, "ndvi"] = 2.0
    params = _params_with_interim(make_params, tmp_path / "bad", daily, probes, mlflow_store)
    with pytest.raises(QualityGateError, match="ndvi_within_minus1_1"):
        gate.run(params, context_root=gx_root)
    assert not params.path(params.paths.processed).exists()
    exp = tracking.ensure_experiment(params, "quality")
    runs = mlflow.search_runs([exp], filter_string=f"tags.{tracking.TAG_KIND} = 'quality'", output_format="list",
                              order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.metrics["expectations_failed"] >= 1
    assert "ndvi_within_minus1_1" in runs[0].data.tags[tracking.TAG_FAILURE]


# --- real data --------------------------------------------------------------------------------------
def test_gate_passes_on_real_remedhus_export(shared_data: Path, tmp_path: Path, make_params, gx_root: Path,
                                             mlflow_store) -> None:
    pytest.importorskip("soilmoisture.harmonise", reason="harmonise.py (ingest) not written yet")
    from soilmoisture import stages

    params = make_params({**mlflow_store, "data.source": "remedhus",
                          "data.remedhus_csv": str(shared_data / "remedhus" / "SM_Data_REMEDHUS.csv"),
                          "data.start": "2017-04-01", "data.end": "2018-03-31"})
    stages.ingest(params)
    summary = gate.run(params, context_root=gx_root)
    assert summary["success"], summary["failures"]
    assert (params.path(params.paths.processed) / "daily.parquet").is_file()


def test_gate_passes_on_the_simulated_tiny_area(copy_area, mlflow_store) -> None:
    """The default pipeline (simulate -> ingest -> validate) publishes: the gate agrees with the data rules."""
    from soilmoisture import stages

    params = copy_area(mlflow_store)
    stages.ingest(params)
    summary = gate.run(params, context_root=gx_copy(params.root / "expectations"))
    assert summary["success"], summary["failures"]
    assert summary["frozen_days_removed"] > 0      # the simulated Nordic winters freeze


# --- data docs offline -------------------------------------------------------------------------------
def test_data_docs_index_lists_runs_offline_in_chromium(tmp_path: Path, chromium: str) -> None:
    from conftest import render_dom

    gx = gx_copy(tmp_path / "gx")
    daily, probes = make_tables()
    good = write_interim(tmp_path / "good", daily, probes)
    gate.check_and_publish(good, tmp_path / "processed", gx, SETTINGS)
    bad_daily = daily.copy()
    bad_daily.loc[bad_daily.index[5], "ssm"] = 1.7           # out of [0, 1]: the daily suite fails
    bad = write_interim(tmp_path / "bad", bad_daily, probes)
    with pytest.raises(QualityGateError) as err:
        gate.check_and_publish(bad, tmp_path / "processed2", gx, SETTINGS)
    index = gate.docs_index(gx)
    assert str(index) in str(err.value)                       # the error names the docs' index page
    site = index.parent
    for page in site.rglob("*.html"):                         # nothing is fetched from the network
        text = page.read_text()
        assert not re.search(r"<(script|link|img)\b[^>]*(src|href)\s*=\s*[\"']https?://", text), page
        assert "dataContextId" not in text, page
    dom = render_dom(chromium, index, tmp_path / "profile")
    rows = re.findall(r'<tr class="(ok|bad)">(.*?)</tr>', dom, re.S)
    assert len(rows) == 2 * 3                                 # two gate runs x three suites, newest first
    newest = dict(rows[:3])                                   # the failing run: only its daily suite failed
    assert [s for s, _ in rows[:3]].count("bad") == 1
    assert "daily" in newest["bad"] and "failed" in newest["bad"] and "ssm_within_0_1" in newest["bad"]
    assert all(s == "ok" for s, _ in rows[3:])                # the first (passing) run
    link = re.search(r'href="(validations/[^"]+\.html)"', dom).group(1)
    run_dom = render_dom(chromium, site / link, tmp_path / "profile")
    assert "fa-check-circle" in run_dom and "soilmoisture: offline" in run_dom  # icons get a visible glyph
