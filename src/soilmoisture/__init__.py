"""Satellite surface-soil-moisture estimation: Sentinel-1/2, weather and probes -> LSTM -> daily 10 m maps."""
from __future__ import annotations

import os as _os

# Offline platform: no telemetry from any of the stack's libraries (set before they are imported).
for _k, _v in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",   # no progress bars inside the CLI's log lines
}.items():
    _os.environ.setdefault(_k, _v)

__version__ = "0.1.0"
