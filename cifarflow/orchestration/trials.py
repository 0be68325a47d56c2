"""A sweep's trials through the pipeline's own runner and stage declarations: the data stages once
for the sweep, the stages from train up to the report on the cluster, the report in the sweep's process."""

from __future__ import annotations

from typing import Any

from prefect import State, Task
from prefect.futures import PrefectFuture

from cifarflow.orchestration.runner import StageCall, StageRunner
from cifarflow.orchestration.stages import STAGES

DATA_STAGES = STAGES[: STAGES.index("train")]  # once for the sweep, shared by its trials
TRIAL_STAGES = STAGES[STAGES.index("train") : STAGES.index("report")]  # on the cluster, per trial
REPORT_STAGES = STAGES[STAGES.index("report") : STAGES.index("promote")]  # in the sweep's process


def failure_message(state: State) -> str:
    """The failure's own message (the exception's), not Prefect's wrapper text."""
    error = state.result(raise_on_failure=False)
    return f"{type(error).__name__}: {error}" if isinstance(error, Exception) else state.message or state.name


def submit_trials(runners: list[StageRunner], names: list[str], tasks: dict[str, Task]) -> list[dict[str, Any]]:
    """`TRIAL_STAGES` of every trial on the flow's task runner, each stage once the one before it is done (its key
    holds that output's fingerprint). Returns per trial `states` (stage → state name, `NotRun` after a failure),
    `error` (the failure's message, or None) and `outputs` (of the completed stages). Never raises."""
    submitted: list[list[tuple[StageCall, PrefectFuture]]] = [[] for _ in runners]
    for stage in TRIAL_STAGES:
        for runner, name, calls in zip(runners, names, submitted):
            if not calls or _finished(runner, *calls[-1]):
                call = runner.prepare(tasks[stage], task_run_name=f"{stage}-{name}")
                calls.append((call, call.task.submit(**call.arguments)))
    results = []
    for runner, calls in zip(runners, submitted):
        error = None if _finished(runner, *calls[-1]) else failure_message(calls[-1][1].state)
        states = dict.fromkeys(TRIAL_STAGES, "NotRun") | {call.task.name: future.state.name for call, future in calls}
        outputs = {stage: runner.outputs[stage] for stage in TRIAL_STAGES if stage in runner.outputs}
        results.append({"states": states, "error": error, "outputs": outputs})
    return results


def _finished(runner: StageRunner, call: StageCall, future: PrefectFuture) -> bool:
    """Wait for the stage; keep its output in the trial's runner if it completed."""
    future.wait()
    if future.state.is_completed() and call.task.name not in runner.outputs:
        runner.keep(call, future.state)
    return future.state.is_completed()
