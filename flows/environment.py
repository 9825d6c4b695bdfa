"""Prefect's environment for this platform, in one place: where its home is, what it logs, and the
temporary local server a run starts when no Prefect server is configured.

:func:`prepare` must run before Prefect is imported (the CLI calls it first); nothing here imports
Prefect at module level.

The temporary server is this platform's own, not Prefect's ephemeral one: Prefect starts that one as a
plain child process, so a run killed with SIGKILL (or SIGTERM, which skips Python's exit handlers) left
it running and spinning at ~100 % of a core. Ours watches its parent and stops within a second of the
run's process going away, however it went.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

log = logging.getLogger("rlhf")


def prepare(cfg) -> None:
    """A project-local PREFECT_HOME (its database and cached results) under ``campaign.root`` unless
    ``orchestration.prefect_home`` or the environment says otherwise (e.g. PREFECT_API_URL of a server),
    and the platform's log lines in Prefect's logs."""
    from rlhf.record.layout import local_root

    home = cfg.orchestration.prefect_home or str(local_root(cfg.campaign.root) / ".prefect")
    os.environ.setdefault("PREFECT_HOME", home)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its SQLite file needs the directory
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rlhf")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # rlhf lines outside a flow run
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from a local server
    # Prefect's own ephemeral server, where one starts (a worker, `prefect` commands), gets the same time as ours.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(STARTUP_TIMEOUT)))
    if os.environ.get("PREFECT_API_URL") == "":
        del os.environ["PREFECT_API_URL"]  # an empty URL is not "unset" to Prefect: it fails to connect
    name_finished_lines()


# Prefect's task and flow engines end every run with "Finished in state Completed()" on the
# prefect.task_runs / prefect.flow_runs loggers. The run's name is only in the record's extras: Prefect's own
# console format shows it, the CLI's (and any plain "%(message)s" one) did not, so a campaign printed a
# column of unnamed lines. A filter on those two loggers puts the name and the run's duration in the
# message itself, for every handler (console, Prefect's API): "sft: Finished in state Completed() after 41.2 s".
RUN_LOGGERS = {"prefect.task_runs": ("task_run_name", "task_run_id", "task_run"),
               "prefect.flow_runs": ("flow_run_name", "flow_run_id", "flow_run")}
FINISHED = "Finished in state "


class NameFinishedLines(logging.Filter):
    """Rewrites a run's "Finished in state ..." line to start with the run's name and end (its first
    line) with how long the run took; other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        name_field, id_field, run_field = RUN_LOGGERS.get(record.name, (None, None, None))
        name = getattr(record, name_field, None) if name_field else None
        if name and isinstance(record.msg, str) and record.msg.startswith(FINISHED) and not record.args:
            first, newline, rest = record.msg.partition("\n")
            seconds = _run_seconds(record, getattr(record, id_field, None), run_field)
            took = "" if seconds is None else f" after {seconds:.1f} s"
            record.msg = f"{name}: {first}{took}{newline}{rest}"
        return True


def _run_seconds(record: logging.LogRecord, run_id, run_field: str) -> float | None:
    """How long the run logging ``record`` took (start to end, or to now while it is ending), read from
    the engine that logs it -- the record carries the run's id, not its times. None if not found."""
    try:
        frame = sys._getframe(2)
        for _ in range(12):  # the engine's method is a few calls up (Logger.log, the adapter, Logger._log)
            if frame is None:
                return None
            run = getattr(frame.f_locals.get("self"), run_field, None)
            if run is not None and run_id is not None and str(run.id) == str(run_id) and run.start_time:
                end = run.end_time or datetime.fromtimestamp(record.created, timezone.utc)
                return max(0.0, (end - run.start_time).total_seconds())
            frame = frame.f_back
    except Exception:  # a Prefect whose engine looks different: the line just has no duration
        return None
    return None


def name_finished_lines() -> None:
    """Install :class:`NameFinishedLines` on Prefect's run loggers (once). Prefect's logging set-up at
    import keeps a logger's filters, so this may run before Prefect is imported."""
    for logger_name in RUN_LOGGERS:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, NameFinishedLines) for f in logger.filters):
            logger.addFilter(NameFinishedLines())


# The ephemeral server's task-run recorder writes task runs from the client's events in batches (every
# 1 s or 100 events) instead of one SQLite transaction per event. Per event, its commits kept landing
# inside the server's creation of a subflow's parent task run, a read-then-write transaction that SQLite
# then fails at once ("database is locked", not covered by busy_timeout); the server answers 503 and the
# client backs off 2 s or more: cached reruns of the smoke campaign took 3.4-10.8 s instead of ~2 s
# (benchmarks/README.md). Defaults only: PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_* set by the user win.
# The interval must be a whole number of seconds: Prefect 3.8 passes int(flush_interval) to the recorder's
# flush loop, so 0.5 became asyncio.sleep(0) in a `while True`, and the server spun at 100 % of a core
# for as long as it ran (and, orphaned, long after).
EPHEMERAL_RECORDER = {"server.services.task_run_recorder.batch_size": 100,
                      "server.services.task_run_recorder.read_batch_size": 100,
                      "server.services.task_run_recorder.flush_interval": 1}


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


@contextmanager
def prefect_api() -> Iterator[None]:
    """The Prefect API a run talks to: the configured server when PREFECT_API_URL is set (nothing
    changes), else a temporary server on 127.0.0.1 with :func:`ephemeral_server_settings`, started here
    and stopped when the block ends -- or when this process dies, whatever kills it."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with ephemeral_server_settings():
        process, url = _start_server(get_current_settings().to_environment_variables(exclude_unset=True))
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                try:
                    yield
                finally:
                    _drain()
        finally:
            _stop(process)


def _drain() -> None:
    """Send the logs and events Prefect still holds while the server is up: its workers would otherwise
    retry against a stopped server when the process exits, for minutes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except RuntimeError:  # never started
            pass


# How long the temporary server may take to answer unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS says
# otherwise. Prefect's default, 20 s, is too short on a 2-core machine: on an idle AVX2 EPYC a test's set-up of an
# S3 server and Prefect's test server took 25 s, and CI failed on 20 s with an MLflow server and PostgreSQL
# beside the run. Whoever starts the run -- the CLI or a script calling ``run_campaign`` -- gets this.
STARTUP_TIMEOUT = 120.0


def startup_timeout() -> float:
    """Seconds the temporary server may take to start: the user's setting if they made one, else
    :data:`STARTUP_TIMEOUT`."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in settings.to_environment_variables(exclude_unset=True):
        return float(settings.server.ephemeral.startup_timeout_seconds)
    return STARTUP_TIMEOUT


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(settings: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start the server child and wait until it answers (:func:`startup_timeout`)."""
    import httpx

    port = _free_port()
    env = {**os.environ, **settings, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1", "RLHF_SERVER_PARENT": str(os.getpid())}
    env.pop("PREFECT_API_URL", None)
    # Its own session: a Ctrl-C in the terminal reaches the run, which then stops the server in order.
    process = subprocess.Popen([sys.executable, "-m", "rlhf.flows.environment", str(port)], env=env,
                               start_new_session=True, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    timeout = startup_timeout()
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited at start (code {process.returncode}); "
                                   "see its output above")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    log.info("Prefect: temporary server on %s (pid %d), stopped with this run", url, process.pid)
                    return process, url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s: raise "
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or point PREFECT_API_URL at a server")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve_until_the_parent_dies(port: int) -> None:
    """The server child: Prefect's API under uvicorn, and a thread that stops it (SIGTERM, which uvicorn
    handles by shutting down cleanly) as soon as the process that started it is gone."""
    parent = int(os.environ["RLHF_SERVER_PARENT"])

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rlhf-parent-watch", daemon=True).start()
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    _serve_until_the_parent_dies(int(sys.argv[1]))
