"""Nothing stale is reused by a campaign rerun (real Prefect, real MLflow, the tiny model): an input file
edited in place, a config changed and changed back, a truncated output -- each reruns what it touches."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest
from prefect.testing.utilities import prefect_test_harness
from prefect_runs import task_states

from rlhf.core.artifacts import read_manifest, verify_output
from rlhf.core.assets import asset_path
from rlhf.flows.campaign import run_campaign
from rlhf.flows.config import compose_config


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # campaigns run 2-3 times each: `make test-slow`


def one_iteration(root, *extra):
    """The smoke experiment cut to SFT + RLHF-V1 without GAtt (PPO is off with one iteration)."""
    return compose_config(["experiment=smoke", f"campaign.root={root}", "campaign.name=c", "campaign.iterations=1",
                           "campaign.gatt_from=null", *extra])


def states_of(run) -> dict[str, list[str]]:
    since = datetime.now(timezone.utc)
    run()
    return task_states(since)


def test_an_sft_file_edited_in_place_reruns_sft_and_what_follows(tmp_path, caplog):
    data = tmp_path / "chats.jsonl"
    lines = asset_path("sft_demo.jsonl").read_text().splitlines()
    data.write_text("\n".join(lines[:40]) + "\n")
    cfg = one_iteration(tmp_path, f"data.path={data}")
    trained = run_campaign(cfg)["sft"]["metrics"]["n_conversations"]  # 40 less the held-out ones

    data.write_text("\n".join(lines[:30]) + "\n")  # same path, new content
    states = states_of(lambda: run_campaign(cfg))
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["sft"]["metrics"]["n_conversations"] == trained - 10
    assert states["sft"] == ["Completed"] and states["train_policy"] == ["Completed"]
    assert states["seed_pairs"] == ["Cached"]  # it does not read the SFT data


def test_config_a_then_b_then_a_leaves_a_outputs_under_a(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rlhf")
    a, b = (one_iteration(tmp_path, f"eval.n_bootstrap={n}") for n in (200, 100))
    run_campaign(a)
    run_campaign(b)
    states = states_of(lambda: run_campaign(a))  # Prefect still holds A's result for A's key
    evaluate = tmp_path / "c" / "iter-1" / "evaluate"
    assert read_manifest(evaluate)["config"]["eval"]["n_bootstrap"] == 200
    # Prefect's cached result for A was looked at, not trusted, and computed again
    assert states["evaluate"] == ["Cached", "Completed"] and states["train_policy"] == ["Cached"]
    assert "the cached result is not trusted" in caplog.text and "another config" in caplog.text
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["iterations"][0]["win_rate"] == read_manifest(evaluate)["metrics"]["win_rate"]


@pytest.mark.parametrize("step, file", [("train_policy", "model.safetensors"), ("rejection_sample", "pool.parquet"),
                                        ("collect_pairs", "manifest.json")])
def test_a_truncated_output_is_computed_again(tmp_path, caplog, step, file):
    caplog.set_level(logging.INFO, logger="rlhf")
    cfg = one_iteration(tmp_path)
    run_campaign(cfg)
    damaged = tmp_path / "c" / "iter-1" / step / file
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    states = states_of(lambda: run_campaign(cfg))
    assert states[step][-1] == "Completed"  # after a Cached result found damaged, or at once (no manifest)
    assert verify_output(damaged.parent)[1] is None  # whole again
    assert "computing it again" in caplog.text


@pytest.mark.parametrize("register", [False, True])
def test_campaign_keep_deletes_old_weights_and_the_campaign_stays_cached(tmp_path, register):
    from rlhf.core.errors import ConfigError
    from rlhf.core.models import ModelConfig, load_model

    cfg = compose_config(["experiment=smoke", f"campaign.root={tmp_path}", "campaign.name=c", "campaign.keep=1",
                          f"tracking.register_models={str(register).lower()}"])
    summary = run_campaign(cfg)
    v1, v2 = tmp_path / "c" / "iter-1", tmp_path / "c" / "iter-2"
    weights = lambda d: sorted(p.name for p in d.glob("*.safetensors"))  # noqa: E731
    assert weights(v1 / "train_policy") == []  # an intermediate (PPO followed): never registered
    assert (v1 / "train_policy" / "pruned.json").is_file()
    kept_v1 = weights(v1 / "ppo") != [] and weights(v1 / "rm-helpful") != []
    assert kept_v1 == register  # V1's policy and RMs are registered models: kept when registered
    assert weights(v2 / "gatt") and weights(v2 / "rm-helpful") and weights(tmp_path / "c" / "iter-0" / "sft")
    assert summary["iterations"][0]["policy_path"] == str(v1 / "ppo")

    states = states_of(lambda: run_campaign(cfg))  # pruned outputs are still valid results
    assert {state for runs in states.values() for state in runs} == {"Cached"}
    with pytest.raises(ConfigError, match="campaign.keep"):
        load_model(ModelConfig(name_or_path=str(v1 / "train_policy")))
