"""The one place that decides whether a stage computes: a selected stage whose output for its key is whole on disk
(`StageSpec.find`) ends `Cached` carrying that output, otherwise its task runs; Prefect caches nothing."""

from __future__ import annotations

import functools
import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import State, Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from cifarflow.config import PipelineConfig
from cifarflow.errors import PipelineInputError, StageInputMissing
from cifarflow.orchestration.cache import KeyParts, StageSpec, explain_change, key_parts, last_state, record_stage
from cifarflow.orchestration.stages import SPECS, STAGES
from cifarflow.outputs import StageOutput

REUSE = inspect.Parameter("reuse", inspect.Parameter.KEYWORD_ONLY, default=None)


def _is_transient(task, task_run, state) -> bool:
    """Retry only what may succeed next time: not a bad archive, parameter or missing input."""
    return not isinstance(state.data, PipelineInputError)


def parse_stage_list(value: list[str] | str | None, what: str) -> list[str]:
    """Stage names from a comma-separated string or a list ("all": every stage); PipelineInputError if unknown."""
    names = value.split(",") if isinstance(value, str) else list(value or [])
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in STAGES and n != "all"]
    if unknown:
        raise PipelineInputError(f"unknown stage(s) in {what}: {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    return list(STAGES) if "all" in names else names


def stage_task(stage: str, *, retries: int, delay: float, **options: Any) -> Callable[[Callable], Task]:
    """Make `function(config, key, *upstream, *given)` the task of `stage`, plus a keyword `reuse` (an output found
    on disk: the run ends `Cached` without calling it). TypeError when the parameters differ from the spec's."""
    spec = SPECS[stage]

    def decorate(function: Callable) -> Task:
        signature = inspect.signature(function)
        found = tuple(signature.parameters)
        if found != spec.task_parameters:
            raise TypeError(
                f"the task of stage {stage!r} ({function.__module__}.{function.__qualname__}) takes "
                f"({', '.join(found)}), but its spec declares ({', '.join(spec.task_parameters)}): declare the "
                "input in cifarflow/orchestration/stages.py (upstream or given), or drop it from the task"
            )

        @functools.wraps(function)
        def run_or_reuse(*args: Any, reuse: StageOutput | None = None, **kwargs: Any) -> Any:
            if reuse is not None:
                return Completed(name="Cached", data=reuse, message="its output for this key is whole on disk")
            return function(*args, **kwargs)

        run_or_reuse.__signature__ = signature.replace(parameters=[*signature.parameters.values(), REUSE])
        return task(
            run_or_reuse,
            name=stage,
            cache_policy=NO_CACHE,
            persist_result=False,
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=delay),
            retry_jitter_factor=0.5,
            retry_condition_fn=_is_transient,
            **options,
        )

    return decorate


@dataclass(frozen=True)
class StageCall:
    """One selected stage of one run: its task, arguments (`reuse`: its output found whole on disk), key parts."""

    task: Task
    arguments: dict[str, Any]
    parts: KeyParts


class StageRunner:
    """Runs one configuration's stages, keeping each output by stage name in `outputs` (which may start with
    outputs computed elsewhere). `run(task, *upstream)` returns the stage's output: computed or `Cached` when
    `selected` (default all; `forced` ones always computed), read from disk when an unselected stage feeds a
    selected one, else None. `record`: write keys for `--plan`. On a task runner: `prepare`, `submit`, `keep`."""

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
        self.cached: set[str] = set()  # the selected stages whose output was reused

    def __call__(self, task: Task, *upstream: StageOutput | None, **options: Any) -> Any:
        """TypeError when `upstream` is not the outputs of the stage's declared upstream stages, in order."""
        spec = SPECS[task.name]
        declared = [self.outputs.get(name) for name in spec.upstream]
        if len(upstream) != len(declared) or any(given is not want for given, want in zip(upstream, declared)):
            raise TypeError(
                f"run({spec.name}, ...) must pass the outputs of ({', '.join(spec.upstream)}), in that order, "
                "as cifarflow/orchestration/stages.py declares: pass those, or change the declaration"
            )
        if spec.name in self.selected:
            call = self.prepare(task, **options)
            return self.keep(call, call.task(**call.arguments, return_state=True))
        if STAGES.index(spec.name) < self.last:
            self.outputs[spec.name] = self.from_disk(spec)
            return self.outputs[spec.name]
        return None

    def run_declared(self, task: Task, **options: Any) -> Any:
        """`self(task, ...)` with the declared upstream outputs."""
        return self(task, *(self.outputs.get(name) for name in SPECS[task.name].upstream), **options)

    def _find(self, spec: StageSpec, look: bool = True) -> tuple[dict[str, Any], KeyParts, StageOutput | None]:
        """The stage's task inputs, key parts, and (if `look`) its output if whole on disk."""
        inputs = spec.resolve_inputs(self.config, self.outputs)
        parts = key_parts(spec, self.config, inputs)
        return inputs, parts, spec.on_disk(self.config, parts.key, inputs) if look else None

    def from_disk(self, spec: StageSpec) -> StageOutput:
        """The output of an unselected stage, whole on disk, or StageInputMissing saying why there is none."""
        _, parts, found = self._find(spec)
        if found is None:
            raise StageInputMissing(
                f"stage {spec.name!r} has no output for this configuration yet "
                f"({explain_change(last_state(self.config.layout.stage_state, spec.name), parts)}); "
                f"run it first, e.g. add it to --stages or run without --stages"
            )
        return found

    def prepare(self, task: Task, **options: Any) -> StageCall:
        """The stage's call for this run (a forced stage's partial work, `spec.scratch`, is discarded first)."""
        spec = SPECS[task.name]
        inputs, parts, found = self._find(spec, look=spec.name not in self.forced)
        if spec.name in self.forced and spec.scratch is not None:
            shutil.rmtree(spec.scratch(self.config, parts.key), ignore_errors=True)
        arguments = {"config": self.config, "key": parts.key, **inputs, "reuse": found}
        return StageCall(task.with_options(**options) if options else task, arguments, parts)

    def keep(self, call: StageCall, state: State) -> Any:
        """The stage's output from its task's final state (raises what the task raised), kept; its key recorded."""
        output = state.result()
        self.outputs[call.task.name] = output
        if state.name == "Cached":
            self.cached.add(call.task.name)
        if self.record:
            record_stage(self.config.layout.stage_state, call.task.name, call.parts, output.fingerprint)
        return output

    def locations(self) -> dict[str, str]:
        """Where each stage's output lives, in pipeline order; RuntimeError when the flow skipped a stage."""
        skipped = [stage for stage in STAGES[: self.last + 1] if stage not in self.outputs]
        if skipped:
            raise RuntimeError(f"the flow never ran stage(s) {', '.join(skipped)}: add a line per stage to the flow")
        return {stage: str(self.outputs[stage].location) for stage in STAGES if stage in self.outputs}
