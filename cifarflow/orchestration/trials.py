"""A sweep's trials through the pipeline's own runner and stage declarations.

Which stages a trial runs comes from the declared graph: the data stages (ingest → preprocess) once
for the sweep, the stages from train up to the report on the cluster, one runner per trial, and the
report stages in the sweep's process. A stage added to the graph between train and the report
therefore runs in every trial without a change here.
"""

from __future__ import annotations

from typing import Any

from prefect import State, Task

from cifarflow.orchestration.runner import PreparedStage, StageRunner
from cifarflow.orchestration.stages import STAGES

DATA_STAGES = STAGES[: STAGES.index("train")]  # once for the sweep, shared by its trials
TRIAL_STAGES = STAGES[STAGES.index("train") : STAGES.index("report")]  # on the cluster, per trial
REPORT_STAGES = STAGES[STAGES.index("report") : STAGES.index("promote")]  # in the sweep's process


def failure_message(state: State) -> str:
    """The failure's own message (the exception's), not Prefect's wrapper text."""
    try:
        state.result(raise_on_failure=True)
    except Exception as error:  # the trial's exception, re-raised from its state
        return f"{type(error).__name__}: {error}"
    return state.message or state.name


def submit_trials(runners: list[StageRunner], names: list[str], tasks: dict[str, Task]) -> list[dict[str, Any]]:
    """Run `TRIAL_STAGES` for every trial on the flow's task runner: every trial's first stage is
    submitted at once, each next stage as soon as the one before it is done (its key includes that
    output's fingerprint, so it is known only then). `tasks` maps stage names to their tasks.

    Returns, per trial: `trial` (its name), `states` (stage → Prefect state name, `NotRun` after a
    failure) and either `outputs` (stage → output) or `error` (the failure's message); never raises
    for a failed trial."""
    running: list[dict[str, tuple[PreparedStage, Any]]] = [{} for _ in runners]
    for stage in TRIAL_STAGES:
        for runner, name, submitted in zip(runners, names, running):
            if submitted and not _finished(runner, submitted):
                continue  # the stage it reads failed: the trial stops there
            prepared = runner.prepare(tasks[stage], task_run_name=f"{stage}-{name}")
            submitted[stage] = (prepared, prepared.task.submit(**runner.arguments(prepared)))
    results = []
    for runner, name, submitted in zip(runners, names, running):
        finished = _finished(runner, submitted)
        states = {stage: submitted[stage][1].state.name if stage in submitted else "NotRun" for stage in TRIAL_STAGES}
        result: dict[str, Any] = {"trial": name, "states": states}
        if finished:
            result["outputs"] = {stage: runner.outputs[stage] for stage in TRIAL_STAGES}
        else:
            failed = next(future.state for _, future in submitted.values() if not future.state.is_completed())
            result["error"] = failure_message(failed)
        results.append(result)
    return results


def _finished(runner: StageRunner, submitted: dict[str, tuple[PreparedStage, Any]]) -> bool:
    """Wait for the trial's last submitted stage; keep its output in the trial's runner if it completed."""
    stage = next(reversed(submitted))
    prepared, future = submitted[stage]
    future.wait()
    if not future.state.is_completed():
        return False
    if stage not in runner.outputs:
        runner.accept(prepared, future.state)
    return True


def report_trial(runner: StageRunner, name: str, tasks: dict[str, Task]) -> tuple[dict[str, str], str | None]:
    """Run `REPORT_STAGES` for one finished trial in this process, through its runner (which holds
    its data and trial stages' outputs). Returns their states, and the failure's message or None."""
    states = {}
    for stage in REPORT_STAGES:
        prepared = runner.prepare(tasks[stage], task_run_name=f"{stage}-{name}")
        state = prepared.task(**runner.arguments(prepared), return_state=True)
        states[stage] = state.name
        if not state.is_completed():
            return states, failure_message(state)
        runner.accept(prepared, state)
    return states, None
