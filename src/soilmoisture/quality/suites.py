"""The data-quality rules as Great Expectations suites, built from parameter values; results summarised.

Nothing here opens a file: :mod:`soilmoisture.quality.gate` does the IO. Each rule is a :class:`Check`
with a stable name (used in error messages, MLflow and the data docs) and a deterministic expectation id,
so rebuilding the suites with the same values writes byte-identical JSON into ``expectations/gx/``.

Three tables are validated: ``daily`` (the interim daily table), ``probes`` (one row per probe) and
``coverage`` (one row per probe, derived here from both: how many rows and in-range days each probe has),
because "every probe has every day exactly once" is a statement about groups, not about single rows.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# Suite names: one per table validated.
SUITE_DAILY = "daily"
SUITE_PROBES = "probes"
SUITE_COVERAGE = "coverage"
SUITES = (SUITE_DAILY, SUITE_PROBES, SUITE_COVERAGE)

# Columns the rules read (a subset of schema.DAILY_COLUMNS / PROBE_COLUMNS; the rest is not checked here).
DAILY_REQUIRED = ("probe_id", "date", "ssm", "ssm_flag_gt50", "frozen", "ts_max", "sigma0_vv", "ndvi", "ndwi",
                  "precip_mm", "ecv_sm")
PROBES_REQUIRED = ("probe_id", "lat", "lon", "landcover_code", "region")

_ID_NAMESPACE = uuid.UUID("5b1c7a52-6f0e-4c1e-9a53-0f1d2c3b4a59")
_EXAMPLES = 3          # example rows per failing check in the error message
_PARTIAL = 20          # unexpected values GX keeps per check (SUMMARY result format)


@dataclass(frozen=True)
class GateSettings:
    """Parameter values the gate needs (from ``data``, ``ingest`` and ``quality`` in params.yaml)."""

    start: str                    # first day of the daily range (YYYY-MM-DD)
    end: str                      # last day of the daily range (YYYY-MM-DD), inclusive
    sigma0_max: float             # linear sigma0 ceiling after outlier removal (thesis 3.2.2: 0.35)
    ssm_flag_threshold: float     # SSM above this (m3/m3) is questionable (flagged)
    ssm_flag_mostly: float        # share of SSM values that must be at or below the threshold
    ecv_sm_max: float             # ECV_SM ceiling (m3/m3)
    drop_flagged_ssm: bool = False

    @property
    def n_days(self) -> int:
        """Days in ``start..end``, both included."""
        return int((pd.Timestamp(self.end) - pd.Timestamp(self.start)).days) + 1


@dataclass(frozen=True)
class Check:
    """One rule: a GX expectation type (class name in ``great_expectations.expectations``) with its kwargs."""

    name: str
    suite: str
    expectation: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")

    @property
    def id(self) -> str:
        """Deterministic expectation id: re-runs do not churn the committed suite JSON."""
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.suite}/{self.name}"))


def build_checks(s: GateSettings) -> list[Check]:
    """Every rule of the gate for these settings, in the order they are reported."""
    thr = s.ssm_flag_threshold
    d, p, c = SUITE_DAILY, SUITE_PROBES, SUITE_COVERAGE
    between = "ExpectColumnValuesToBeBetween"
    not_null = "ExpectColumnValuesToNotBeNull"
    return [
        Check("daily_required_columns", d, "ExpectTableColumnsToMatchSet",
              {"column_set": list(DAILY_REQUIRED), "exact_match": False},
              "the daily table has every column the rules read"),
        # Thesis 3.2.1: days with TS_max <= 0 degC (frozen soil) are removed from the data set.
        Check("no_ssm_on_frozen_days", d, "ExpectColumnValuesToBeNull",
              {"column": "ssm", "row_condition": "frozen == True or ts_max <= 0", "condition_parser": "pandas"},
              "SSM is empty (NaN) on frozen days (frozen flag or TS_max <= 0 degC; thesis 3.2.1)"),
        Check("ssm_within_0_1", d, between, {"column": "ssm", "min_value": 0.0, "max_value": 1.0},
              "SSM is a volumetric fraction in [0, 1] m3/m3"),
        # DESIGN "data rules": SSM above 0.50 is questionable: flag it, report it, a parameter decides on dropping.
        Check("unflagged_ssm_at_most_threshold", d, between,
              {"column": "ssm", "max_value": thr, "row_condition": "ssm_flag_gt50 == False",
               "condition_parser": "pandas"},
              f"SSM above {thr} occurs only on rows flagged ssm_flag_gt50"),
        Check("flagged_ssm_above_threshold", d, between,
              {"column": "ssm", "min_value": thr, "strict_min": True, "row_condition": "ssm_flag_gt50 == True",
               "condition_parser": "pandas"},
              f"rows flagged ssm_flag_gt50 hold SSM above {thr} (or none)"),
        Check("ssm_mostly_at_most_threshold", d, between,
              {"column": "ssm", "max_value": thr, "mostly": s.ssm_flag_mostly},
              f"at least {s.ssm_flag_mostly:.0%} of observed SSM values are at or below {thr}; "
              "the flagged count is reported, nothing is dropped silently"),
        # Thesis 3.2.2: after z-score outlier removal the largest linear sigma0 was 0.35.
        Check("sigma0_within_0_max", d, between,
              {"column": "sigma0_vv", "min_value": 0.0, "strict_min": True, "max_value": s.sigma0_max},
              f"linear sigma0 VV in (0, {s.sigma0_max}] after outlier removal (thesis 3.2.2)"),
        Check("ndvi_within_minus1_1", d, between, {"column": "ndvi", "min_value": -1.0, "max_value": 1.0},
              "NDVI in [-1, 1]"),
        Check("ndwi_within_minus1_1", d, between, {"column": "ndwi", "min_value": -1.0, "max_value": 1.0},
              "NDWI in [-1, 1]"),
        Check("precip_non_negative", d, between, {"column": "precip_mm", "min_value": 0.0},
              "daily precipitation >= 0 mm"),
        Check("probe_date_unique", d, "ExpectCompoundColumnsToBeUnique", {"column_list": ["probe_id", "date"]},
              "one row per (probe_id, date)"),
        Check("ecv_sm_within_0_max", d, between, {"column": "ecv_sm", "min_value": 0.0, "max_value": s.ecv_sm_max},
              f"ECV_SM in [0, {s.ecv_sm_max}] m3/m3 where present"),
        Check("probes_required_columns", p, "ExpectTableColumnsToMatchSet",
              {"column_set": list(PROBES_REQUIRED), "exact_match": False},
              "the probes table has every column the rules read"),
        Check("probe_id_unique", p, "ExpectColumnValuesToBeUnique", {"column": "probe_id"},
              "one row per probe in the probes table"),
        Check("probe_lat_in_range", p, between, {"column": "lat", "min_value": -90.0, "max_value": 90.0},
              "latitude in [-90, 90] deg"),
        Check("probe_lat_present", p, not_null, {"column": "lat"}, "every probe has a latitude"),
        Check("probe_lon_in_range", p, between, {"column": "lon", "min_value": -180.0, "max_value": 180.0},
              "longitude in [-180, 180] deg"),
        Check("probe_lon_present", p, not_null, {"column": "lon"}, "every probe has a longitude"),
        Check("probe_landcover_present", p, not_null, {"column": "landcover_code"},
              "every probe has a CORINE land cover code"),
        Check("probe_region_present", p, not_null, {"column": "region"}, "every probe has a region"),
        Check("probe_in_probes_table", c, "ExpectColumnValuesToBeInSet",
              {"column": "in_probes_table", "value_set": [True]},
              "every probe of the daily table has a row in the probes table"),
        # Counted against the configured range in the coverage table, so the committed suite does not
        # depend on data.start/data.end (switching the data source must not rewrite it).
        Check("daily_rows_per_probe", c, between,
              {"column": "extra_rows", "min_value": 0, "max_value": 0},
              "every probe has exactly one daily row per day of data.start..data.end (extra_rows = rows - days)"),
        Check("daily_range_complete", c, between,
              {"column": "missing_days", "min_value": 0, "max_value": 0},
              "every probe has every day of data.start..data.end (missing_days = days - distinct days present)"),
    ]


def to_suites(checks: list[Check]) -> dict[str, Any]:
    """GX ``ExpectationSuite`` objects (name -> suite) for the checks; ids and meta are deterministic."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suites: dict[str, Any] = {}
    for name in SUITES:
        expectations = []
        for chk in (c for c in checks if c.suite == name):
            cls = getattr(gxe, chk.expectation)
            expectations.append((chk.id, cls(meta={"check": chk.name}, description=chk.description, **chk.kwargs)))
        suite = gx.ExpectationSuite(name=name, expectations=[e for _, e in expectations],
                                    meta={"generated_by": "soilmoisture.quality.suites"})
        # GX refuses expectations that already carry an id ("belong to another suite"), so the
        # deterministic ids are set after the suite adopted them; add_or_update then keeps them.
        for (eid, _), exp in zip(expectations, suite.expectations):
            exp.id = eid
        suites[name] = suite
    return suites


def coverage_table(daily: pd.DataFrame, probes: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    """One row per probe of either table: rows in ``daily``, distinct days within ``start..end``, presence.

    Columns: probe_id, n_rows, n_days_in_range, extra_rows (n_rows - days in range), missing_days
    (days in range - n_days_in_range), in_probes_table, in_daily_table.
    """
    ids = pd.Index(pd.concat([daily.get("probe_id", pd.Series(dtype=str)),
                              probes.get("probe_id", pd.Series(dtype=str))]).dropna().unique(), name="probe_id")
    daily = daily.reset_index(drop=True)
    if "probe_id" in daily and "date" in daily:
        dates = pd.to_datetime(daily["date"])
        in_range = dates.between(pd.Timestamp(start), pd.Timestamp(end))
        n_rows = daily.groupby("probe_id", sort=False).size()
        n_in = dates[in_range].groupby(daily.loc[in_range, "probe_id"], sort=False).nunique()
    else:
        n_rows = n_in = pd.Series(dtype="int64")
    out = pd.DataFrame(index=ids)
    out["n_rows"] = n_rows.reindex(ids).fillna(0).astype("int64")
    out["n_days_in_range"] = n_in.reindex(ids).fillna(0).astype("int64")
    n_expected = len(pd.date_range(start, end, freq="D"))
    out["extra_rows"] = out["n_rows"] - n_expected
    out["missing_days"] = n_expected - out["n_days_in_range"]
    out["in_probes_table"] = ids.isin(probes["probe_id"]) if "probe_id" in probes else False
    out["in_daily_table"] = ids.isin(daily["probe_id"]) if "probe_id" in daily else False
    return out.reset_index()


def frames_to_validate(daily: pd.DataFrame, probes: pd.DataFrame, s: GateSettings) -> dict[str, pd.DataFrame]:
    """The three tables, each with a fresh 0..n-1 index so GX's unexpected row indices locate example rows."""
    return {
        SUITE_DAILY: daily.reset_index(drop=True),
        SUITE_PROBES: probes.reset_index(drop=True),
        SUITE_COVERAGE: coverage_table(daily, probes, s.start, s.end),
    }


def _examples(frame: pd.DataFrame, chk: Check, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Up to a few offending rows (key columns + the checked column) as plain dicts."""
    idx = list(result.get("partial_unexpected_index_list") or [])[:_EXAMPLES]
    if not idx:  # e.g. compound uniqueness reports values, not indices
        return [v if isinstance(v, dict) else {chk.column or "value": v}
                for v in list(result.get("partial_unexpected_list") or [])[:_EXAMPLES]]
    cols = [c for c in ("probe_id", "date") if c in frame.columns]
    cols += [c for c in (chk.kwargs.get("column_list") or [chk.column]) if c and c in frame.columns and c not in cols]
    rows = frame.loc[[i for i in idx if i in frame.index], cols]
    out = []
    for rec in rows.to_dict(orient="records"):
        out.append({k: (v.date().isoformat() if isinstance(v, pd.Timestamp) else
                        (None if v is None or (isinstance(v, float) and pd.isna(v)) else
                         (v.item() if hasattr(v, "item") else v)))
                    for k, v in rec.items()})
    return out


def summarise(checks: list[Check], raw: dict[str, dict[str, Any]], frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Plain-data summary of one validation.

    ``raw`` maps check name -> {"success", "result", "exception"} (from GX results); ``frames`` are the tables
    validated (for example rows). Returns {"success", "expectations_passed", "expectations_failed", "checks": [...],
    "failures": [...]}
    where each failure is a one-line message naming the check, table/column, counts and example rows.
    """
    items, failures = [], []
    for chk in checks:
        r = raw.get(chk.name)
        if r is None:
            r = {"success": False, "result": {}, "exception": "expectation was not evaluated"}
        res = r.get("result") or {}
        item = {"check": chk.name, "table": chk.suite, "column": chk.column, "success": bool(r["success"]),
                "description": chk.description, "unexpected_count": res.get("unexpected_count"),
                "element_count": res.get("element_count"), "unexpected_percent": res.get("unexpected_percent"),
                "examples": [], "exception": r.get("exception")}
        if not item["success"]:
            item["examples"] = _examples(frames.get(chk.suite, pd.DataFrame()), chk, res)
            failures.append(_failure_message(chk, item, res))
        items.append(item)
    n_failed = sum(not i["success"] for i in items)
    return {"success": n_failed == 0, "expectations_passed": len(items) - n_failed, "expectations_failed": n_failed,
            "checks": items, "failures": failures}


def _failure_message(chk: Check, item: dict[str, Any], res: dict[str, Any]) -> str:
    where = f"{chk.suite}.{chk.column}" if chk.column else chk.suite
    head = f"{chk.name} [{where}]"
    if item["exception"]:
        return f"{head}: could not be evaluated: {item['exception']}"
    if chk.expectation == "ExpectTableColumnsToMatchSet":
        observed = set(res.get("observed_value") or [])
        missing = [c for c in chk.kwargs["column_set"] if c not in observed]
        return f"{head}: missing column(s) {', '.join(missing) or '?'}"
    n, total = item["unexpected_count"], item["element_count"]
    msg = f"{head}: {n} of {total} rows unexpected ({chk.description})"
    if "mostly" in chk.kwargs:
        pct = item["unexpected_percent"] or 0.0
        msg += f"; {pct:.1f}% above, at most {100 * (1 - chk.kwargs['mostly']):.1f}% allowed"
    if item["examples"]:
        msg += "; e.g. " + " | ".join(", ".join(f"{k}={v}" for k, v in ex.items()) for ex in item["examples"])
    return msg
