"""What Prefect recorded for the flow runs started after a moment (tests read them): task states, the
edges of each flow run's graph, artifacts and tags."""

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


def flow_runs(since: datetime) -> list:
    with get_client(sync_client=True) as client:
        started = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        return client.read_flow_runs(flow_run_filter=started, sort=FlowRunSort.START_TIME_ASC, limit=200)


def graph(flow_run_id) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """A flow run's task runs (name -> tags) and the edges its graph draws (upstream name, downstream name):
    every task-run input that points at another task run, whatever parameter carries it."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(
            any_=[flow_run_id])), sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    names = {run.id: run.name for run in runs}
    edges = {(names.get(getattr(i, "id", None), "?"), run.name) for run in runs
             for inputs in run.task_inputs.values() for i in inputs if getattr(i, "input_type", "") == "task_run"}
    return {run.name: sorted(run.tags) for run in runs}, edges


def artifacts(flow_run_id) -> list[dict]:
    """The artifacts a flow run published (``key``, ``type``, ``data``, ...). Asked over the REST API: the
    sync client's ``read_artifacts`` sends None for unset filters (422), and empty task-run / flow-run
    filters join away the artifacts of a flow run that no task made."""
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "KEY_ASC", "limit": 50, "offset": 0})
        return response.json()
