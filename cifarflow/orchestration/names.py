"""Flow run names, short and meaningful in the UI's run list: never an absolute path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePath


def last_part(value: object) -> str:
    """The last part of a path or name, without a `.keras` suffix: `/srv/data` → `data`, `m/best.keras` → `best`."""
    return PurePath(str(value)).name.removesuffix(".keras") or str(value)


def run_name(prefix: str, parameter: str, default: str) -> Callable[[], str]:
    """A flow's `flow_run_name`: `<prefix>-<last part of the run's parameter or default>` (`predict-v2`)."""

    def name() -> str:
        from prefect.runtime import flow_run

        return f"{prefix}-{last_part(flow_run.parameters.get(parameter) or default)}"

    name.__name__ = f"{prefix}_run_name"
    return name
