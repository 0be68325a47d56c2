"""Run or reuse the stages of one flow run: the one place that decides whether a stage computes.

The runner keeps every stage's output by name and feeds each task exactly the inputs its spec
declares (`cifarflow.orchestration.stages`); `stage_task` refuses a task that takes others. For a
stage that is selected, the runner computes its key once, looks for its output on disk
(`StageSpec.find`, which verifies it), and calls the stage's task with that key. Prefect's cache
record then makes a reused stage show as `Cached`, and the runner hands on the output it found on
disk, at the data dir's current location, not the one Prefect pickled (see `settle`): a data dir
works as before after it is moved, copied or restored elsewhere. An output that is missing or no
longer whole refreshes the cache and the stage runs again. A stage that is not selected
(`--stages`) but feeds one that is, is taken from disk or the run stops with a clear error.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import State, Task, task
from prefect.tasks import exponential_backoff

from cifarflow.config import PipelineConfig
from cifarflow.errors import PipelineInputError, StageInputMissing
from cifarflow.orchestration.cache import (
    KeyParts,
    StageKey,
    StageSpec,
    explain_change,
    key_parts,
    last_state,
    record_stage,
)
from cifarflow.orchestration.stages import SPECS, STAGES
from cifarflow.outputs import StageOutput


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


def stage_task(stage: str, *, retries: int, delay: float, **options: Any) -> Callable[[Callable], Task]:
    """Make `function` the Prefect task of `stage`, with the options every stage shares. Refuses (at
    import) a function whose parameters are not `config`, `key` and the stage's declared inputs, in
    the spec's order: an input passed but not declared would be used without entering the key."""

    def decorate(function: Callable) -> Task:
        check_task_parameters(SPECS[stage], function)
        return task(function, **stage_options(stage, retries, delay), **options)

    return decorate


def check_task_parameters(spec: StageSpec, function: Callable) -> None:
    found = tuple(inspect.signature(function).parameters)
    if found != spec.task_parameters:
        raise TypeError(
            f"the task of stage {spec.name!r} ({function.__module__}.{function.__qualname__}) takes "
            f"({', '.join(found)}), but its spec declares ({', '.join(spec.task_parameters)}): declare the "
            "input in cifarflow/orchestration/stages.py (upstream or given), or drop it from the task"
        )


@dataclass(frozen=True)
class PreparedStage:
    """One stage of one run, ready to call or submit: its task (set to reuse its cached result only
    if its output is still whole on disk), exactly its declared inputs, its key parts, and its output
    as found on disk (None: it runs)."""

    task: Task
    inputs: dict[str, Any]
    parts: KeyParts
    found: StageOutput | None

    @property
    def stage(self) -> str:
        return self.task.name


def reuse(stage: str, config: PipelineConfig, inputs: dict[str, Any]) -> Any:
    """The output of `stage` for this configuration, already on disk, for a run that skips it."""
    parts = key_parts(SPECS[stage], config, inputs)
    found = SPECS[stage].find(config, parts.key, inputs)
    if found is None:
        raise StageInputMissing(
            f"stage {stage!r} has no output for this configuration yet "
            f"({explain_change(last_state(config.layout.stage_state, stage), parts)}); "
            f"run it first, e.g. add it to --stages or run without --stages"
        )
    return found


def settle(state: State, found: Any) -> Any:
    """The stage's output from its task's final state. Prefect's result of a `Cached` run is the object
    pickled when it was computed, holding the absolute paths of the data dir *then*; when the data
    dir has moved, been copied or restored elsewhere since, those paths are wrong (or another copy's).
    So a `Cached` stage returns `found`, the output verified at the data dir's current location."""
    result = state.result()  # raises what the task raised
    return found if found is not None and state.name == "Cached" else result


class StageRunner:
    """Runs one configuration's stages in order, keeping each output by stage name and feeding every
    task exactly the inputs its spec declares (`StageSpec.resolve_inputs`).

    Calling it with a stage's task returns the stage's output: computed or `Cached` when selected
    (`selected`, default all; `forced` stages ignore their cache), read from disk when an unselected
    stage feeds a selected one, and None for stages after the last selected one (the run stops there).
    `outputs` starts it with outputs computed elsewhere (a sweep's trials share the data stages);
    `record` writes each stage's key for `--plan` (a sweep's trials do not: they are not the pipeline's
    last run). `prepare`, then `task.submit`, then `accept` run a stage on another task runner."""

    def __init__(
        self,
        config: PipelineConfig,
        selected: list[str] | None = None,
        forced: list[str] | None = None,
        outputs: dict[str, StageOutput] | None = None,
        record: bool = True,
    ):
        self.config = config
        self.selected = set(selected or STAGES)
        self.forced = set(forced or ())
        self.last = max(STAGES.index(stage) for stage in self.selected)
        self.outputs: dict[str, StageOutput] = dict(outputs or {})
        self.record = record
        self.cached: set[str] = set()  # the selected stages whose output was reused (`Cached`)

    def __call__(self, task: Task, **options: Any) -> Any:
        stage = task.name
        if stage in self.selected:
            prepared = self.prepare(task, **options)
            return self.accept(prepared, prepared.task(**self.arguments(prepared), return_state=True))
        if STAGES.index(stage) < self.last:
            self.outputs[stage] = reuse(stage, self.config, SPECS[stage].resolve_inputs(self.config, self.outputs))
            return self.outputs[stage]
        return None

    def prepare(self, task: Task, **options: Any) -> PreparedStage:
        """The stage's task and inputs for this run; call or submit it with `arguments(prepared)`."""
        spec = SPECS[task.name]
        inputs = spec.resolve_inputs(self.config, self.outputs)
        parts = key_parts(spec, self.config, inputs)
        force = spec.name in self.forced
        if force and spec.scratch is not None:  # a forced run starts over instead of resuming old partial work
            shutil.rmtree(spec.scratch(self.config, parts.key), ignore_errors=True)
        found = None if force else spec.find(self.config, parts.key, inputs)
        prepared = task.with_options(
            refresh_cache=found is None, result_storage=self.config.layout.prefect_results, **options
        )
        return PreparedStage(prepared, inputs, parts, found)

    def arguments(self, prepared: PreparedStage) -> dict[str, Any]:
        return {"config": self.config, "key": prepared.parts.key, **prepared.inputs}

    def accept(self, prepared: PreparedStage, state: State) -> Any:
        """The stage's output from its task's final state (raises what the task raised), kept for the
        stages that read it, and its key recorded for `--plan`."""
        result = settle(state, prepared.found)
        self.outputs[prepared.stage] = result
        if state.name == "Cached":
            self.cached.add(prepared.stage)
        if self.record:
            record_stage(
                self.config.layout.stage_state, prepared.stage, prepared.parts, {"fingerprint": result.fingerprint}
            )
        return result

    def locations(self) -> dict[str, str]:
        """Where each stage's output of this run lives, in pipeline order. RuntimeError when the flow
        never called a stage it had to (one declared in the specs but missing from the flow)."""
        skipped = [stage for stage in STAGES[: self.last + 1] if stage not in self.outputs]
        if skipped:
            raise RuntimeError(f"the flow never ran stage(s) {', '.join(skipped)}: add a line per stage to the flow")
        return {stage: str(self.outputs[stage].location) for stage in STAGES if stage in self.outputs}
