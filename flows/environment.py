"""Prefect's environment for this platform, in one place: where its home is, what it logs, and the
settings of the ephemeral server a run starts when no Prefect server is configured.

:func:`prepare` must run before Prefect is imported (the CLI calls it first); nothing here imports
Prefect at module level.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def prepare(cfg) -> None:
    """A project-local PREFECT_HOME (its database and cached results) under ``campaign.root`` unless
    ``orchestration.prefect_home`` or the environment says otherwise (e.g. PREFECT_API_URL of a server),
    and the platform's log lines in Prefect's logs."""
    home = cfg.orchestration.prefect_home or str(Path(cfg.campaign.root).resolve() / ".prefect")
    os.environ.setdefault("PREFECT_HOME", home)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its SQLite file needs the directory
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rlhf")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # rlhf lines outside a flow run
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from a local server
    # The first start in a fresh PREFECT_HOME creates its database: allow more than the default 20 s on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if os.environ.get("PREFECT_API_URL") == "":
        del os.environ["PREFECT_API_URL"]  # an empty URL is not "unset" to Prefect: it fails to connect


# The ephemeral server's task-run recorder writes task runs from the client's events in batches (every
# 0.5 s or 100 events) instead of one SQLite transaction per event. Per event, its commits kept landing
# inside the server's creation of a subflow's parent task run, a read-then-write transaction that SQLite
# then fails at once ("database is locked", not covered by busy_timeout); the server answers 503 and the
# client backs off 2 s or more: cached reruns of the smoke campaign took 3.4-10.8 s instead of ~2 s
# (benchmarks/README.md). Defaults only: PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_* set by the user win.
EPHEMERAL_RECORDER = {"server.services.task_run_recorder.batch_size": 100,
                      "server.services.task_run_recorder.read_batch_size": 100,
                      "server.services.task_run_recorder.flush_interval": 0.5}


@contextmanager
def ephemeral_server_settings() -> Iterator[None]:
    """Settings for Prefect's ephemeral server, which starts inside this block on the first flow run (a
    server already running keeps its own). Flow-run heartbeats let a Prefect server notice runs whose
    worker died; the ephemeral server lives and dies with this process, so there they only cost a wait of
    up to 1 s at the end of every flow run (the heartbeat thread sleeps in 1 s steps and is joined): most
    of an iteration's orchestration overhead on small steps. The task-run recorder batches its writes
    (``EPHEMERAL_RECORDER``). With a server (PREFECT_API_URL set) nothing changes."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}, set_defaults=EPHEMERAL_RECORDER):
        yield
