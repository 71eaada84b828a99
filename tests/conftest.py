"""Shared fixtures: isolated parameters on a tiny simulated area, real data location, offline env."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["conftest_prefect", "conftest_postgres"]  # one temporary Prefect API per session
# (tests/conftest_prefect.py); PostgreSQL URL and per-test databases (tests/conftest_postgres.py)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MLFLOW_TRACKING_URI", None)

# A tiny area: every stage runs for real, in seconds.
TINY = {
    "simulate.probes_per_region": {"denmark": 3, "finland": 2, "spain": 3, "sweden": 2},
    "simulate.tile_px": {"default": 16, "bench": 500},
    "simulate.patch_px": 16,
    "simulate.start": "2017-01-01",
    "simulate.end": "2017-12-31",
    "data.start": "2017-01-01",
    "data.end": "2017-12-31",
    "model.epochs": 2,
    "protocol.repeats": 1,
    "simulate.hold_back_days": 0,   # tests that need held-back scenes set it themselves
}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless Chromium. Missing: fails under CI (``.ci/run`` installs it) and when
    ``SOILMOISTURE_REQUIRE_BROWSER`` is set, else skips."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI") or os.environ.get("SOILMOISTURE_REQUIRE_BROWSER"):
            pytest.fail("chromium is missing (apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    return path


def render_dom(browser: str, page: Path, profile: Path) -> str:
    """The DOM of ``page`` after headless Chromium ran its scripts, with every network lookup refused."""
    import subprocess

    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                          "--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (read-only). Missing data fails under CI instead of skipping."""
    path = Path(os.environ.get("SOILMOISTURE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data folder {path} is missing (set SOILMOISTURE_SHARED_DATA)")
        pytest.skip(f"real data folder {path} is missing")
    return path


def write_params(root: Path, overrides: dict | None = None) -> Path:
    """A copy of the project's params.yaml in ``root`` with dotted ``overrides`` applied; all paths under root."""
    from soilmoisture.config import apply_override

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["uri"] = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    raw["tracking"]["artifact_root"] = str(root / "mlruns" / "artifacts")
    raw["tune"]["storage"] = f"sqlite:///{root / 'optuna' / 'optuna.db'}"
    raw["data"]["remedhus_csv"] = str(ROOT.parent / "shared" / "data" / "remedhus" / "SM_Data_REMEDHUS.csv")
    for k, v in {**TINY, **(overrides or {})}.items():
        apply_override(raw, k, v)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def make_params(tmp_path: Path):
    """``make_params(**dotted_overrides)`` -> Params rooted in a fresh temporary folder."""
    from soilmoisture import config

    def _make(overrides: dict | None = None, root: Path | None = None):
        r = root or tmp_path
        r.mkdir(parents=True, exist_ok=True)
        return config.load(write_params(r, overrides))

    return _make


@pytest.fixture(scope="session")
def tiny_area(tmp_path_factory) -> Path:
    """The tiny simulated area, generated once per test session; returns its project root.

    Tests must not modify it: copy it (``copy_area``) before corrupting anything.
    """
    from soilmoisture import config
    from soilmoisture.simulate import run

    root = tmp_path_factory.mktemp("tiny_area")
    params = config.load(write_params(root))
    run(params)
    return root


@pytest.fixture
def copy_area(tiny_area: Path, tmp_path: Path):
    """A private copy of the tiny area (params.yaml rewritten for the new root)."""

    def _copy(overrides: dict | None = None):
        from soilmoisture import config

        dst = tmp_path / "area"
        shutil.copytree(tiny_area, dst, ignore=shutil.ignore_patterns("mlruns", "optuna"))
        return config.load(write_params(dst, overrides))

    return _copy
