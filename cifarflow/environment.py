"""Process-wide defaults, set by importing this module before Prefect or TensorFlow is imported.

    import cifarflow.environment  # first, in a section of its own (ruff's isort keeps it there)

The one exception to "no work at import time": Prefect and TensorFlow read these variables when they
are first imported, so an entry point (a flow file, a benchmark, the tests' conftest) imports this
module before anything else, and the import sets them. ruff's import-order check (I001, configured in
pyproject.toml) flags a file that imports it after another import, so the order cannot drift, and no
file silences the "import not at top" check (E402) for it. A value the user set already is kept.

The Makefile runs the Prefect CLI through this module (`python -m cifarflow.environment prefect server
start`); `apply_defaults()` stays callable for code that clears the environment and sets it again.
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


apply_defaults()  # the import's side effect: see the module docstring

if __name__ == "__main__":  # run a command (e.g. the Prefect CLI) with the defaults applied
    if len(sys.argv) < 2:
        sys.exit("usage: python -m cifarflow.environment COMMAND [ARGS...]")
    os.execvp(sys.argv[1], sys.argv[1:])
