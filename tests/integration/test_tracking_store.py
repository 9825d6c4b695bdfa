"""The tracking store's edges, on real MLflow stores: the default SQLite store moves with its campaign
root, a tracking server that does not answer is a clear error before anything runs, and a write that
fails at the very end still ends the runs it left open."""

from __future__ import annotations

import shutil
import time

import mlflow
import pytest
import servers  # beside conftest.py
from mlflow import MlflowClient

from rlhf import tracking
from rlhf.core.errors import RLHFError
from rlhf.flows.campaign import run_campaign
from rlhf.flows.config import compose_config


def _model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_a_copied_campaign_root_opens_with_its_artifacts_and_models(tmp_path):
    old = tmp_path / "old"
    uri = tracking.tracking_uri(None, old.mkdir() or old)
    experiment = tracking.experiment_id(uri, "moved", old / "mlartifacts")
    client = MlflowClient(uri)
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.create_run(experiment).info.run_id
    (old / "note.json").write_text("{}")
    client.log_artifact(run, str(old / "note.json"))
    model = {"path": str(_model_dir(old / "moved" / "iter-1" / "train_policy")), "key": "k1"}
    assert tracking.register(uri, "moved-policy", model, run, 1) == "1"
    assert tracking.register(uri, "moved-policy", model, run, 1) == "1"  # idempotent

    new = tmp_path / "elsewhere" / "new"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    uri = tracking.tracking_uri(None, new)
    client = MlflowClient(uri)
    assert client.get_experiment(experiment).artifact_location == (new / "mlartifacts" / "moved").as_uri()
    assert client.get_run(run).info.artifact_uri.startswith((new / "mlartifacts").as_uri() + "/")
    got = client.download_artifacts(run, "note.json", str(tmp_path / "dl"))
    assert open(got).read() == "{}"
    version = client.get_model_version_by_alias("moved-policy", "current")
    assert version.source == (new / "moved" / "iter-1" / "train_policy").as_uri()
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.artifacts.download_artifacts("models:/moved-policy@current", dst_path=str(tmp_path / "m"))
    assert open(f"{loaded}/model.safetensors", "rb").read() == b"weights"
    assert tracking.relocate(new / "mlflow.db", new) == 0  # opened again in place: nothing to rewrite
    # and a store that never moved is left alone
    assert tracking.relocate(new / "mlflow.db", new.resolve()) == 0


def test_a_server_that_does_not_answer_is_a_clear_error_before_any_step(tmp_path):
    port = servers.free_port()  # nothing listens there
    cfg = compose_config(["experiment=smoke", f"campaign.root={tmp_path}", "campaign.name=offline",
                          f"tracking.uri=http://127.0.0.1:{port}"])
    started = time.monotonic()
    with pytest.raises(RLHFError, match=r"tracking.uri=http://127.0.0.1:\d+ does not answer.*start it, or fix"):
        run_campaign(cfg)
    assert time.monotonic() - started < 90  # no minutes of client retries
    assert not (tmp_path / "offline" / "iter-0").exists()  # nothing computed


def test_a_tracking_failure_at_the_end_ends_the_open_runs(tmp_path):
    ended = []

    def broken_write():
        raise OSError("the store went away")

    with pytest.raises(tracking.TrackingError, match="the store went away.*rerun the campaign"):
        with tracking.flushed(on_failure=ended.append):
            tracking.RECORDER.submit(broken_write)
    assert len(ended) == 1 and isinstance(ended[0], tracking.TrackingError)
