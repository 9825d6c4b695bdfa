"""What Prefect recorded: the task states of the flow runs started after a moment (tests read them)."""

from __future__ import annotations

from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime, TaskRunFilter, TaskRunFilterFlowRunId
from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

from rlhf.flows.campaign import STEPS


def task_states(since: datetime) -> dict[str, list[str]]:
    """Step name -> state names of the task runs of every flow run started after ``since``."""
    with get_client(sync_client=True) as client:
        started = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        flow_runs = client.read_flow_runs(flow_run_filter=started, sort=FlowRunSort.START_TIME_ASC, limit=200)
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in flow_runs])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    states: dict[str, list[str]] = {}
    for run in runs:
        if run.name in STEPS:
            states.setdefault(run.name, []).append(run.state.name)
    return states
