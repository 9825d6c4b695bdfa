"""What a campaign changes in Prefect's settings when it runs on the ephemeral server (the server starts
inside the block and takes the settings with it), and that it changes nothing with a real server or
against the user's own settings."""

from prefect.settings import get_current_settings, temporary_settings

from rlhf.flows.environment import EPHEMERAL_RECORDER, ephemeral_server_settings


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
            assert _recorder()["batch_size"] == 1 and _recorder()["flush_interval"] == 0.5


def test_with_a_prefect_server_nothing_changes():
    with temporary_settings(updates={"api.url": "http://prefect:4200/api", "flows.heartbeat_frequency": 30}):
        before = _recorder()
        with ephemeral_server_settings():
            assert get_current_settings().flows.heartbeat_frequency == 30 and _recorder() == before
