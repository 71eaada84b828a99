"""MLflow names and URIs: one store per project root, the user's MLFLOW_TRACKING_URI respected."""
from __future__ import annotations

import os

from soilmoisture import tracking


def test_configuring_one_store_does_not_pin_the_next_project_to_it(make_params, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a = make_params(root=tmp_path / "a")
    b = make_params(root=tmp_path / "b")
    ua = tracking.configure(a)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    ub = tracking.configure(b)
    assert ua != ub and str(tmp_path / "b") in ub
    assert tracking.ensure_experiment(b) != "" and str(tmp_path / "b") in tracking.tracking_uri(b)


def test_user_environment_overrides_params(make_params, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.configure(make_params()) == uri
    assert os.environ["MLFLOW_TRACKING_URI"] == uri


def test_passwords_are_masked_in_urls():
    assert tracking.mask_url("postgresql://sm:s3cret@db:5432/mlflow") == "postgresql://sm:***@db:5432/mlflow"
    assert tracking.mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
