"""Run the flow in-process and read back what Prefect recorded for its task runs."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.cifar_flow import cifar_pipeline


def run_flow(config, **kwargs):
    """Run the pipeline; return (flow state, {stage: task-run state name})."""
    state = cifar_pipeline(config=config, return_state=True, **kwargs)
    return state, task_states(state.state_details.flow_run_id)


def task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.split("-")[0]: run.state.name for run in runs}
