"""Champion vs challenger is decided on the newly arrived days that neither trained on (docs/retrain.md)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from test_retrain import OVERRIDES, base, project  # noqa: F401 - module fixtures: the retraining project


def _rows(dates, pred, repeat=0, probe="A"):
    return pd.DataFrame({"probe_id": probe, "repeat": repeat, "date": dates, "ssm_pred": pred})


def test_new_and_old_days_are_scored_apart() -> None:
    from soilmoisture.retrain import split_scores

    dates = pd.date_range("2017-06-01", periods=60)
    obs = np.full(60, 0.2)
    champ_old = _rows(dates[:30], np.full(30, 0.25))            # the champion's protocol predictions (old days)
    champ_new = _rows(dates[30:], np.full(30, 0.21))            # its stored models on the new days
    chal = _rows(dates, np.full(60, 0.22)).assign(ssm=obs)
    s = split_scores(champ_new, champ_old, chal, "2017-06-30")
    assert s["new_days"] == pytest.approx({"champion_mae": 0.01, "challenger_mae": 0.02, "n_probes": 1, "n_days": 30})
    assert s["old_days"] == pytest.approx({"champion_mae": 0.05, "challenger_mae": 0.02, "n_probes": 1, "n_days": 30})
    # only the new days' observations change: only the new-days score moves
    chal2 = chal.assign(ssm=np.where(chal["date"] > "2017-06-30", 0.3, obs))
    s2 = split_scores(champ_new, champ_old, chal2, "2017-06-30")
    assert s2["new_days"]["champion_mae"] == pytest.approx(0.09) and s2["old_days"] == s["old_days"]
    # without stored champion models there is nothing new to decide on
    assert split_scores(None, champ_old, chal, "2017-06-30")["new_days"]["n_days"] == 0


def test_the_decision_score_changes_when_only_the_new_in_situ_days_change(project) -> None:  # noqa: F811
    """Two real rounds up to the comparison on the same delivered days: in the second the new days' readings are
    0.05 m3/m3 wetter (a sensor drift after data.end), the old days untouched. The champion's new-days score
    moves, its old-days score does not."""
    from soilmoisture import retrain, stages
    from soilmoisture.outputs import publish
    from soilmoisture.simulate import deliver

    deliver.run(project, 30)
    files = [f for f in retrain.scan_landing(project.path(project.paths.landing), project.path(project.paths.raw), 0)
             if f.status == "accepted"]
    end = retrain.new_data_end(project.data.end, files)
    champion = retrain.current_champion(project)
    comps = []
    for tag, drift in (("a", 0.0), ("b", 0.05)):
        st = retrain.stage(project, files, tag)
        try:
            sp = retrain.staged_params(project, st, end)
            stages.ingest(sp)
            interim = sp.path(sp.paths.interim)
            daily = pd.read_parquet(interim / "daily.parquet")
            new = daily["date"] > pd.Timestamp(project.data.end)
            daily.loc[new, "ssm"] = daily.loc[new, "ssm"] + drift
            report = json.loads((interim / "ingest_report.json").read_text())
            report.pop("outputs", None)       # the drifted table is published with its own manifest
            publish(interim, {"daily.parquet": daily, "probes.parquet": pd.read_parquet(interim / "probes.parquet")},
                    "ingest_report.json", report)
            stages.validate(sp)
            comps.append(retrain.compare(project, champion, retrain.train_challenger(sp, project.data.end), sp))
        finally:
            retrain.cleanup(st)
    a, b = comps
    assert a.n_days > 0 and a.n_days == b.n_days and "new days" in a.note
    assert np.isfinite(a.champion_mae) and np.isfinite(a.challenger_mae) and a.old_days["n_days"] > 0
    assert abs(b.champion_mae - a.champion_mae) > 0.01          # the decision's number follows the new days
    assert b.old_days["champion_mae"] == pytest.approx(a.old_days["champion_mae"], abs=1e-9)
    assert b.old_days["n_days"] == a.old_days["n_days"]


def _client(params):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    tracking.configure(params)
    return MlflowClient(tracking.tracking_uri(params))


def _predictions(params, run_id):
    from soilmoisture.retrain.decide import _predictions as p

    return p(_client(params), run_id)
