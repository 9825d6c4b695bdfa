"""The smoke campaign tracked on a real ``mlflow server`` (PostgreSQL backend when the Debian package is
installed, else SQLite) with its own artifact store, as a team runs it: every artifact goes through the
server, the models are registered from run artifacts and load back as ``models:/<campaign>-policy@current``
in a teammate's process, nothing stays RUNNING, and the experiment reads as training runs in the UI."""

from __future__ import annotations

import json
import warnings

import mlflow
import pytest
import servers  # beside conftest.py
import torch
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.flows.campaign import run_campaign
from rlhf.flows.config import compose_config

# A live `mlflow server` (and PostgreSQL) in other processes: `make test-processes`.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow, pytest.mark.processes]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, the server's artifact folder, backend name)."""
    artifacts = tmp_path_factory.mktemp("server-artifacts")
    if servers.postgres_bin() is not None:
        with servers.postgres("mlflow") as pg, \
                servers.mlflow_server(f"postgresql+psycopg2://rlhf@{pg}/mlflow", artifacts) as url:
            yield url, artifacts, "postgresql"
    else:
        warnings.warn("PostgreSQL is not installed (apt-get install postgresql): the MLflow server runs on SQLite",
                      stacklevel=1)
        db = tmp_path_factory.mktemp("server-db") / "mlflow.db"
        with servers.mlflow_server(f"sqlite:///{db}", artifacts) as url:
            yield url, artifacts, "sqlite"


def test_smoke_campaign_on_an_mlflow_server(server, tmp_path):
    url, store, _backend = server
    cfg = compose_config(["experiment=smoke", f"campaign.root={tmp_path / 'runs'}", "campaign.name=team",
                          f"tracking.uri={url}"])
    summary = run_campaign(cfg)
    client = MlflowClient(url)

    # The experiment: artifacts in the server's store, opened on training runs (not GenAI traces).
    experiment = client.get_experiment_by_name("team")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert not (tmp_path / "runs" / "mlartifacts").exists()

    # Nothing left RUNNING; iteration runs carry their effective config, so V1 vs V2 shows the diff.
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    assert {r.info.status for r in runs} == {"FINISHED"}
    iterations = {r.info.run_name: r for r in runs if r.data.tags.get("rlhf.kind") == "iteration"}
    v1, v2 = iterations["RLHF-V1"].data.params, iterations["RLHF-V2"].data.params
    assert v1["rejection.k"] == v2["rejection.k"] == "2"
    assert (v1["iteration.runs_ppo"], v2["iteration.runs_ppo"]) == ("true", "false")
    assert (v1["iteration.runs_gatt"], v2["iteration.runs_gatt"]) == ("false", "true")
    assert int(v2["iteration.collect_offset"]) - int(v1["iteration.collect_offset"]) == 8  # collect.n_prompts
    assert iterations["SFT"].data.params["iteration.number"] == "0"

    # Artifacts went through the server into its store: step files, each iteration's win-rate plot, the
    # report with its plots inlined (it renders in MLflow's artifact viewer).
    assert "win_rates.png" in {a.path for a in client.list_artifacts(iterations["RLHF-V2"].info.run_id)}
    stored = {p.name for p in store.rglob("*") if p.is_file()}
    assert {"manifest.json", "win_rates.png", "report.html", "summary.json"} <= stored
    html = next(store.rglob("report.html")).read_text()
    assert 'src="plots/' not in html and html.count('src="data:image/png;base64,') >= 5

    # Registry: sources the server accepted (run artifacts), aliases, and a teammate loads and generates.
    versions = client.search_model_versions("name = 'team-policy'")
    assert len(versions) == 3 and all(v.source.startswith("runs:/") for v in versions)
    assert client.get_model_version_by_alias("team-policy", "current").tags["rlhf.label"] == "RLHF-V2"
    assert len(client.search_model_versions("name = 'team-rm-safety'")) == 2
    mlflow.set_tracking_uri(url)
    local = mlflow.artifacts.download_artifacts("models:/team-policy@current", dst_path=str(tmp_path / "teammate"))
    assert json.loads((tmp_path / "teammate" / "manifest.json").read_text())["key"] == \
        json.loads((tmp_path / "runs" / "team" / "iter-2" / "gatt" / "manifest.json").read_text())["key"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(local), AutoTokenizer.from_pretrained(local)
    prompt = tokenizer("hello", return_tensors="pt")
    with torch.no_grad():
        # min_new_tokens: the tiny random policy may put its end-of-turn token first
        out = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4

    # A cached rerun records nothing twice: same runs, same versions, every run FINISHED again.
    again = run_campaign(cfg)
    assert again["iterations"] == summary["iterations"]
    runs_again = client.search_runs([experiment.experiment_id], max_results=500)
    assert len(runs_again) == len(runs) and {r.info.status for r in runs_again} == {"FINISHED"}
    assert len(client.search_model_versions("name = 'team-policy'")) == 3
