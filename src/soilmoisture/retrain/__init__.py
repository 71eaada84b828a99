"""Scheduled retraining: new Sentinel scenes -> quality gate -> challenger -> champion/challenger decision.

The steps the Prefect flow ``pipelines/retrain.py`` runs as tasks, in this order (docs/retrain.md); one module
per job: :mod:`.landing` (1), :mod:`.staging` (2-3), :mod:`.challenger` (4), :mod:`.decide` (5, 7),
:mod:`.commit` (6), :mod:`.record` (the MLflow run):

1. :func:`scan_landing` - complete scene files in ``paths.landing`` are accepted; a ``.part`` file, a file
   modified less than ``retrain.min_age_seconds`` ago or one that cannot be read to the end is left for the
   next run; a zero-filled Sentinel-1 scene is set aside alone (:func:`set_aside`).
2. :func:`stage` - a private copy of ``paths.raw`` (hard links) plus the accepted scenes, beside ``raw``.
3. :func:`ingest_and_gate` - ingest and the Great Expectations gate on the staged copy, with ``data.end``
   extended to the newest scene. A reader's DataError naming one of the new scenes sets that scene aside
   alone and ingests the rest again; any other bad data (a failed gate, an error not attributable to one
   new scene) -> :func:`reject` moves the batch to ``landing/rejected/<run>/``; nothing live has changed.
4. :func:`train_challenger` - the protocol (same params, same probes) on the staged processed data;
   its final model is registered as a new version (the ``champion`` alias does not move).
5. :func:`compare` - both models scored on the newly arrived days neither trained on (the champion's stored
   fold models or known-site model re-applied) and on the old days (:func:`split_scores`, :func:`matched_mae`);
   :func:`decide` applies ``retrain.margin_mae`` to the new-days score.
6. :func:`commit_data` - staged raw/interim/processed swapped in, ``data.end`` written to the parameter
   file, ``dvc commit -f <retrain.dvc_stages>``; any failure rolls all of it back.
7. :func:`promote` - alias ``champion`` moved to the challenger, only if the decision says so.

A failure before step 6 changes nothing live; the accepted scenes stay in the landing folder for the next run.
"""
from __future__ import annotations

from soilmoisture.retrain.challenger import (Champion, current_champion, model_name, registered_version,
                                             retrain_variant, train_challenger)
from soilmoisture.retrain.commit import commit_data, dvc_commit, set_yaml_scalar
from soilmoisture.retrain.decide import (Comparison, Decision, champion_new_predictions, compare, decide, matched_mae,
                                         promote, split_scores)
from soilmoisture.retrain.landing import (LandingFile, completeness, drop_duplicates, inspect, new_data_end,
                                          read_error, reject, scan_landing, set_aside)
from soilmoisture.retrain.record import finish_record, log_scenes, log_step, run_tag, start_record, tag_version
from soilmoisture.retrain.staging import (Busy, Staging, cleanup, exclusive, ingest_and_gate, remove_stale_staging,
                                          stage, staged_params, staged_scene, unstage)

__all__ = ["Busy", "Champion", "Comparison", "Decision", "LandingFile", "Staging", "champion_new_predictions",
           "cleanup", "commit_data", "split_scores",
           "compare", "completeness", "current_champion", "decide", "drop_duplicates", "dvc_commit", "exclusive",
           "finish_record", "ingest_and_gate", "inspect", "log_scenes", "log_step", "matched_mae", "model_name", "new_data_end",
           "promote", "read_error", "registered_version", "reject", "remove_stale_staging", "retrain_variant",
           "run_tag", "scan_landing", "set_aside", "set_yaml_scalar", "stage", "staged_params", "staged_scene",
           "start_record", "tag_version", "train_challenger", "unstage"]
