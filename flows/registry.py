"""Deprecated name of `flows/registry_flow.py`; kept for now, with a one-line notice."""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    print("note: flows/registry.py is now flows/registry_flow.py; the old name will be removed", file=sys.stderr)
    runpy.run_path(str(Path(__file__).with_name("registry_flow.py")), run_name="__main__")
