"""Run the flow in-process and read back what Prefect recorded for its task runs."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from cifarflow.orchestration.stages import STAGES, downstream
from flows.cifar_flow import cifar_pipeline


def rerun_states(*changed: str) -> dict[str, str]:
    """The task-run states a rerun should show when the output of each `changed` stage changes (or it
    is refreshed): those stages and every stage reading them, per the declared stage graph, run
    (`Completed`); the rest are reused (`Cached`). No argument: everything is reused."""
    reran = {stage for name in changed for stage in downstream(name)}
    return {stage: "Completed" if stage in reran else "Cached" for stage in STAGES}


def run_flow(config, **kwargs):
    """Run the pipeline; return (flow state, {stage: task-run state name})."""
    state = cifar_pipeline(config=config, return_state=True, **kwargs)
    return state, task_states(state.state_details.flow_run_id)


def task_states(flow_run_id, timeout_s: float = 60.0) -> dict[str, str]:
    """Task-run states reach the server as events, recorded asynchronously: on a loaded machine a
    task run can briefly be there without its state, or with an earlier one (`Pending` while the
    server's SQLite database is busy), so wait for every run's final state to be recorded."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(run.state is not None and run.state.is_final() for run in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return {run.name.split("-")[0]: run.state.name if run.state else "(no state recorded)" for run in runs}
