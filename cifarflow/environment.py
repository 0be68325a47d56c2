"""Offline defaults for Prefect and TensorFlow, which read them when first imported: an entry point imports this
module first (`import cifarflow.environment`; ruff's isort keeps it in a section of its own). A value the user set
is kept. `python -m cifarflow.environment COMMAND …` runs a command with them (the Makefile's Prefect server)."""

from __future__ import annotations

import os
import sys

OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry DNS look-ups (machines may be offline)
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ start-up chatter off
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow reads DO_NOT_TRACK only as "true", not "1"
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # a tracking server that is down costs seconds, not minutes (default 7)
}


for name, value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(name, value)

if __name__ == "__main__":  # run a command (e.g. the Prefect CLI) with the defaults applied
    if len(sys.argv) < 2:
        sys.exit("usage: python -m cifarflow.environment COMMAND [ARGS...]")
    os.execvp(sys.argv[1], sys.argv[1:])
