"""What a campaign changes in Prefect's settings when it runs on the ephemeral server (the server starts
inside the block and takes the settings with it), and that it changes nothing with a real server or
against the user's own settings."""

import os
import time

from prefect.settings import get_current_settings, temporary_settings

from rlhf.flows.environment import (
    EPHEMERAL_RECORDER,
    STARTUP_TIMEOUT,
    ephemeral_server_settings,
    prefect_api,
    startup_timeout,
)


def _recorder():
    r = get_current_settings().server.services.task_run_recorder
    return {"batch_size": r.batch_size, "read_batch_size": r.read_batch_size, "flush_interval": r.flush_interval}


def test_on_the_ephemeral_server_no_heartbeats_and_batched_task_run_records():
    before = _recorder()
    with temporary_settings(restore_defaults={"api.url"}):
        with ephemeral_server_settings():
            assert get_current_settings().flows.heartbeat_frequency is None
            assert _recorder() == {k.rsplit(".", 1)[1]: v for k, v in EPHEMERAL_RECORDER.items()}
            # what the server subprocess is started with
            env = get_current_settings().to_environment_variables(exclude_unset=True)
            assert env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "100"
    assert _recorder() == before


def test_the_users_recorder_settings_win(monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "1")
    with temporary_settings(restore_defaults={"api.url"}):
        with ephemeral_server_settings():
            assert _recorder()["batch_size"] == 1 and _recorder()["flush_interval"] == 1


def test_with_a_prefect_server_nothing_changes():
    with temporary_settings(updates={"api.url": "http://prefect:4200/api", "flows.heartbeat_frequency": 30}):
        before = _recorder()
        with ephemeral_server_settings():
            assert get_current_settings().flows.heartbeat_frequency == 30 and _recorder() == before


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_the_temporary_server_idles_when_nothing_runs():
    """An idle server costs ~nothing. With the recorder's flush_interval at 0.5 s Prefect's flush loop
    became asyncio.sleep(0) in a loop and the server took 100 % of a core for every campaign."""
    with temporary_settings(restore_defaults={"api.url"}):
        with prefect_api():
            server = next(int(p) for p in os.listdir("/proc") if p.isdigit() and
                          "rlhf.flows.environment" in open(f"/proc/{p}/cmdline").read().replace("\0", " ")
                          and int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid())
            time.sleep(3)  # past start-up
            before = _cpu_seconds(server)
            time.sleep(5)
            assert _cpu_seconds(server) - before < 1.0  # spinning would be ~5 s
    assert not os.path.exists(f"/proc/{server}") or "State:\tZ" in open(f"/proc/{server}/status").read()


def test_the_temporary_server_gets_two_minutes_to_start_unless_the_user_says(monkeypatch):
    # Prefect's own default (20 s) is too short on 2 cores beside an MLflow server: CI failed on it.
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert get_current_settings().server.ephemeral.startup_timeout_seconds == 20
    assert startup_timeout() == STARTUP_TIMEOUT == 120
    with temporary_settings(updates={"server.ephemeral.startup_timeout_seconds": 300}):
        assert startup_timeout() == 300
    with temporary_settings(updates={"server.ephemeral.startup_timeout_seconds": 7}):  # shorter, if they say so
        assert startup_timeout() == 7
