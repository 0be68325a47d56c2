"""Run or reuse the stages of one flow run: the one place that decides whether a stage computes.

For a stage that is selected, the runner computes its key once, looks for its output on disk
(`StageSpec.find`, which verifies it), and calls the stage's task with that key. Prefect's cache
record then makes a reused stage show as `Cached`, and the runner hands on the output it found on
disk, at the data dir's current location, not the one Prefect pickled (see `settle`): a data dir
works as before after it is moved, copied or restored elsewhere. An output that is missing or no
longer whole refreshes the cache and the stage runs again. A stage that is not selected
(`--stages`) but feeds one that is, is taken from disk or the run stops with a clear error.
"""

from __future__ import annotations

import shutil
from typing import Any

from prefect import State, Task
from prefect.tasks import exponential_backoff

from cifarflow.config import PipelineConfig
from cifarflow.errors import PipelineInputError, StageInputMissing
from cifarflow.orchestration.cache import KeyParts, StageKey, explain_change, key_parts, last_state, record_stage
from cifarflow.orchestration.stages import SPECS, STAGES


def _is_transient(task, task_run, state) -> bool:
    """Retry only what may succeed next time: not a bad archive, parameter or missing input."""
    return not isinstance(state.data, PipelineInputError)


def stage_options(stage: str, retries: int, delay: float) -> dict[str, Any]:
    """The `@task` options every stage shares: its cache key from the runner, retries with backoff."""
    return {
        "name": stage,
        "cache_policy": StageKey(stage=stage),
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=delay),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": _is_transient,
        "persist_result": True,
    }


def parse_stage_list(value: list[str] | str | None, what: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value or [])
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in STAGES and n != "all"]
    if unknown:
        raise PipelineInputError(f"unknown stage(s) in {what}: {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    return list(STAGES) if "all" in names else names


def reuse(stage: str, config: PipelineConfig, upstream: dict[str, Any], parts: KeyParts | None = None) -> Any:
    """The output of `stage` for this configuration, already on disk, for a run that skips it."""
    parts = parts or key_parts(SPECS[stage], config, upstream)
    found = SPECS[stage].find(config, parts.key, upstream)
    if found is None:
        raise StageInputMissing(
            f"stage {stage!r} has no output for this configuration yet "
            f"({explain_change(last_state(config.layout.stage_state, stage), parts)}); "
            f"run it first, e.g. add it to --stages or run without --stages"
        )
    return found


def prepare_stage(
    task: Task, config: PipelineConfig, upstream: dict[str, Any], force: bool = False, **options
) -> tuple[Task, KeyParts, Any]:
    """The stage's task, set to reuse its cached result only if its output is still whole on disk; its
    key parts (call the task with `key=parts.key`); and that output as found on disk (None: it runs).
    A `Cached` result may name the paths of another location of the data dir: `settle(state, found)`
    gives the output found here."""
    spec = SPECS[task.name]
    parts = key_parts(spec, config, upstream)
    if force and spec.scratch is not None:  # a forced run starts over instead of resuming old partial work
        shutil.rmtree(spec.scratch(config, parts.key), ignore_errors=True)
    found = None if force else spec.find(config, parts.key, upstream)
    prepared = task.with_options(refresh_cache=found is None, result_storage=config.layout.prefect_results, **options)
    return prepared, parts, found


def settle(state: State, found: Any) -> Any:
    """The stage's output from its task's final state. Prefect's result of a `Cached` run is the object
    pickled when it was computed, holding the absolute paths of the data dir *then*; when the data
    dir has moved, been copied or restored elsewhere since, those paths are wrong (or another copy's).
    So a `Cached` stage returns `found`, the output verified at the data dir's current location."""
    result = state.result()  # raises what the task raised
    return found if found is not None and state.name == "Cached" else result


def run_stage(task: Task, config: PipelineConfig, upstream: dict[str, Any], force: bool = False, **options) -> Any:
    """Run (or reuse) one stage's task inside a flow, and record its key for `--plan` and `--stages`."""
    prepared, parts, found = prepare_stage(task, config, upstream, force, **options)
    state = prepared(config=config, key=parts.key, return_state=True, **upstream)
    result = settle(state, found)
    record_stage(config.layout.stage_state, task.name, parts, {"fingerprint": result.fingerprint})
    return result


class StageRunner:
    """Runs the flow's stages in order for `selected` (default all); forced stages ignore their cache.

    Calling it with a stage's task and its upstream outputs returns the stage's output: computed or
    `Cached` when selected, read from disk when an unselected stage feeds a selected one, and None
    for stages after the last selected one (the run stops there)."""

    def __init__(self, config: PipelineConfig, selected: list[str] | None = None, forced: list[str] | None = None):
        self.config = config
        self.selected = set(selected or STAGES)
        self.forced = set(forced or ())
        self.last = max(STAGES.index(stage) for stage in self.selected)

    def __call__(self, task: Task, **upstream: Any) -> Any:
        stage = task.name
        if stage in self.selected:
            return run_stage(task, self.config, upstream, force=stage in self.forced)
        if STAGES.index(stage) < self.last:
            return reuse(stage, self.config, upstream)
        return None
