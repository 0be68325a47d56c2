"""Process-wide defaults the entry points set before Prefect or TensorFlow is imported.

The one place they are defined: flows and tests call `apply_defaults()`, and the Makefile runs the
Prefect CLI through this module (`python -m cifarflow.environment prefect server start`).
"""

from __future__ import annotations

import os
import sys

OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry DNS look-ups (machines may be offline)
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ start-up chatter off
}


def apply_defaults() -> None:
    """Set each default unless the user already chose a value."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)


if __name__ == "__main__":  # run a command (e.g. the Prefect CLI) with the defaults applied
    if len(sys.argv) < 2:
        sys.exit("usage: python -m cifarflow.environment COMMAND [ARGS...]")
    apply_defaults()
    os.execvp(sys.argv[1], sys.argv[1:])
