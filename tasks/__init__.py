"""Prefect tasks: thin wrappers over `cifarflow`; a stage's task is `tasks/<stage>.py`'s function `<stage>`."""

from __future__ import annotations

import importlib

from prefect import Task

from cifarflow.orchestration.stages import STAGES


def stage_tasks() -> dict[str, Task]:
    """Every declared stage's task by stage name, in pipeline order (what a sweep runs by name)."""
    return {stage: getattr(importlib.import_module(f"tasks.{stage}"), stage) for stage in STAGES}
