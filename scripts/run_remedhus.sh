#!/usr/bin/env bash
# The protocol on the real REMEDHUS export (5 probes): the numbers in docs/results.md come from this.
#   scripts/run_remedhus.sh [repeats]
# Data go to data/remedhus/ and reports/remedhus/ (git-ignored), runs to the project's MLflow store
# (experiment soilmoisture/remedhus/protocol). Needs ../shared/data/remedhus/SM_Data_REMEDHUS.csv
# (or set data.remedhus_csv in params.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-10}"
sm=".venv/bin/soilmoisture"
common=(--set data.source=remedhus --set data.start=2017-03-28 --set data.end=2019-12-31
        --set paths.interim=data/remedhus/interim --set paths.processed=data/remedhus/processed
        --set paths.reports=reports/remedhus --set protocol.repeats="$repeats")
"$sm" ingest "${common[@]}"
"$sm" validate "${common[@]}"
"$sm" train "${common[@]}" --set protocol.mode=unseen_site
"$sm" evaluate "${common[@]}" --set protocol.mode=unseen_site
# Known site, new period: train on 2017-2018, predict 2019 (the export has no 2020 rows on purpose).
"$sm" train "${common[@]}" --set protocol.mode=known_site --set protocol.split_date=2019-01-01
.venv/bin/python scripts/remedhus_table.py
