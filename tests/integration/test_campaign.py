"""The smoke campaign end to end on real Prefect (its test harness server) and a real MLflow store:
every task Completed and tracked; a rerun all Cached; a fault mid-training resumed from its checkpoint;
the campaign lock."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pandas as pd
import prefect_runs  # a helper module beside this file (pytest puts its folder on the path)
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.testing.utilities import prefect_test_harness

from rlhf.cli import main
from rlhf.core.training import InjectedFault
from rlhf.flows.campaign import STEPS, run_campaign
from rlhf.flows.config import compose_config
from rlhf.record.layout import CampaignLocked, campaign_lock

ITERATION_STEPS = {"collect_pairs", "annotate", "train_reward_models", "eval_reward_models", "search_temperature",
                   "rejection_sample", "train_policy", "evaluate"}  # and ablate_reward_models with reward.ablate


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


pytestmark = pytest.mark.usefixtures("one_thread")


def smoke(root, name="c", *extra):
    return compose_config(["experiment=smoke", f"campaign.root={root}", f"campaign.name={name}", *extra])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, prefect_server):
    """One smoke campaign shared by the tests that read it (the rerun test runs it again, all Cached)."""
    root = tmp_path_factory.mktemp("smoke")
    cfg = smoke(root)
    t0 = datetime.now(timezone.utc)
    summary = run_campaign(cfg)
    return {"root": root, "cfg": cfg, "summary": summary, "t0": t0}


def test_smoke_campaign_tracked_then_cached(smoke_run):
    tmp_path, cfg, summary, t0 = (smoke_run[k] for k in ("root", "cfg", "summary", "t0"))

    # Prefect: every step ran once per iteration, all Completed.
    states = prefect_runs.task_states(t0)
    assert set(states) == set(STEPS) - {"ablate_reward_models", "distill", "evaluate_student", "gatt_dialogues",
                                        "gatt_adherence"}  # off by default
    assert all(len(states[s]) == 2 for s in ITERATION_STEPS) and len(states["sft"]) == 1
    assert len(states["ppo"]) == 1  # campaign.ppo_at defaults to the iteration before the last: V1
    assert len(states["gatt"]) == 1  # smoke: campaign.gatt_from=2
    assert {s for v in states.values() for s in v} == {"Completed"}

    # Prefect's graphs: exactly the data dependencies; runs tagged; each iteration publishes its results.
    flows = {run.name: run for run in prefect_runs.flow_runs(t0)}
    assert set(flows) == {"c", "c-RLHF-V1", "c-RLHF-V2"}
    assert flows["c"].tags == ["campaign:c"]
    assert sorted(flows["c-RLHF-V2"].tags) == ["campaign:c", "iteration:2"]
    zero_tags, zero_edges = prefect_runs.graph(flows["c"].id)  # the iterations are its subflows' task runs
    assert zero_tags["sft"] == ["campaign:c", "iteration:0"]
    assert zero_edges == {("sft", "rlhf-iteration-0"), ("seed_pairs", "rlhf-iteration-0"), ("sft", "rlhf-iteration-1"),
                          ("seed_pairs", "rlhf-iteration-1"), ("rlhf-iteration-0", "rlhf-iteration-1")}
    v1_tags, v1_edges = prefect_runs.graph(flows["c-RLHF-V1"].id)
    rms_feed = {"eval_reward_models", "search_temperature", "rejection_sample", "ppo", "evaluate"}
    assert v1_edges == {("collect_pairs", "annotate"), ("annotate", "train_reward_models"),
                        *(("train_reward_models", s) for s in rms_feed), ("search_temperature", "rejection_sample"),
                        ("rejection_sample", "train_policy"), ("train_policy", "ppo"), ("ppo", "evaluate")}
    assert v1_tags["annotate"] == ["campaign:c", "iteration:1"]
    _, v2_edges = prefect_runs.graph(flows["c-RLHF-V2"].id)  # GAtt instead of PPO
    assert {("train_policy", "gatt"), ("gatt", "evaluate")} <= v2_edges and ("train_policy", "ppo") not in v2_edges
    published = prefect_runs.artifacts(flows["c-RLHF-V2"].id)
    assert [a["key"] for a in published] == ["c-rlhf-v2"] and published[0]["type"] == "markdown"
    assert "| win rate vs sft, judge gold |" in published[0]["data"] and "/#/experiments/" in published[0]["data"]
    assert [a["key"] for a in prefect_runs.artifacts(flows["c"].id)] == ["c-campaign"]

    # summary.json: the schema scripts rely on, filled.
    on_disk = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert on_disk["campaign"] == "c" and on_disk["config"]["model"]["name_or_path"] == "tiny"
    assert [it["iteration"] for it in on_disk["iterations"]] == [1, 2]
    # the evaluation answers are kept per model: V2's evaluation sampled V2 alone, the SFT model's and V1's
    # answers are V1's evaluation's (rlhf_core/steps/evaluate.py, _sampled)
    answers = sorted((tmp_path / "c" / "answers").glob("*/manifest.json"))
    assert len(answers) == 3  # SFT, V1, V2
    v1, v2 = (pd.read_parquet(tmp_path / "c" / f"iter-{i}" / "evaluate" / "answers.parquet") for i in (1, 2))
    assert list(v2[v2.model == "previous"].text) == list(v1[v1.model == "model"].text)
    for it in on_disk["iterations"]:
        assert (tmp_path / "c" / f"iter-{it['iteration']}" / "train_policy" / "model.safetensors").is_file()
        assert set(it["wall_seconds"]) >= ITERATION_STEPS
        # peak memory per step (issue 23): a tiny model's step holds torch and the flow, far below a GB per step
        assert set(it["peak_rss_mb"]) == set(it["wall_seconds"]) and all(100 < mb < 4096
                                                                        for mb in it["peak_rss_mb"].values())
        assert set(it["reward"]) == {"helpful", "safety"}
        labelled = pd.concat([pd.read_parquet(tmp_path / "c" / f"iter-{i}" / "annotate" / "pairs.parquet")
                              for i in range(1, it["iteration"] + 1)])
        # Table 8 on the labelled pairs held out so far, each RM on its axis: 4 of each batch's 8 pairs; the
        # Safety RM's are those of the 4 with a safety preference (adversarial prompts)
        helpful, safety = it["reward"]["helpful"], it["reward"]["safety"]
        assert helpful["n_test"] == 4 * it["iteration"] and helpful["axis"] == "helpfulness"
        assert safety["axis"] == "safety" and 0 < safety["n_test"] < helpful["n_test"]
        assert safety["n_test"] <= labelled["safety_prefers"].notna().sum()
        for rm in it["reward"].values():
            assert 0 <= rm["ci95"][0] <= rm["accuracy"] <= rm["ci95"][1] <= 1
            assert sum(rm["n_by_level"].values()) == rm["n_test"]
            assert set(rm["accuracy_by_level"]) == {"significantly_better", "better", "slightly_better",
                                                    "negligibly_better"}
            assert rm["synthetic"]["n_test"] == 16  # eval_reward_models: reward.n_eval_synthetic, apart
            assert rm["synthetic_seed"]["n_test"] == 4  # the seed pairs' held-out share, apart
            # the simulated rater's labels: their ceiling and the RM's agreement with the gold order
            assert 0.5 <= rm["label_ceiling"] <= 1 and 0 <= rm["gold_agreement"] <= 1
            assert rm["n_gold_ordered"] <= rm["n_test"]
        # each RM's ceiling is the mean p_agree of its own axis over its held-out pairs (eval.csv), and the Safety
        # RM's test pairs carry the safety axis' gold scores
        for name, gold in (("helpful", ("gold_chosen", "gold_rejected")),
                           ("safety", ("safety_gold_chosen", "safety_gold_rejected"))):
            scored = pd.read_csv(tmp_path / "c" / f"iter-{it['iteration']}" / f"rm-{name}" / "eval.csv")
            scored = scored[scored.test_set == "test"]
            assert scored["p_agree"].mean() == pytest.approx(it["reward"][name]["label_ceiling"])
            golds = {frozenset(p) for p in labelled[list(gold)].dropna().itertuples(index=False)}
            assert {frozenset(p) for p in scored[["gold_chosen", "gold_rejected"]].itertuples(index=False)} <= golds
        assert it["reward_ablation"] is None  # reward.ablate is off
        assert it["temperature"]["chosen"] in (0.7, 1.0) and set(it["temperature"]["curve"]) == {"0.7", "1.0"}
        assert it["rejection"]["k"] == 2 and it["rejection"]["pool_size"] == 8
        if it["iteration"] == 2:  # Ghost Attention ran: its output is V2's policy
            gatt = it["gatt"]
            assert set(gatt["adherence_by_turn"]) == {"before", "after"}
            assert set(gatt["adherence_by_turn"]["after"]) == {"1", "2"}
            assert set(gatt["zero_shot"]) == {"before", "after"}
            assert gatt["n_dialogues"] > 0 and it["policy_path"] == str(tmp_path / "c" / "iter-2" / "gatt")
        else:
            assert it["gatt"] is None
        if it["iteration"] == 1:  # PPO ran: V1's policy is its output, and the next iteration starts from it
            assert {"steps", "reward_start", "reward_end", "kl_end", "early_stopped"} <= set(it["ppo"])
            assert it["ppo"]["steps"] == 2 and it["policy_path"] == str(tmp_path / "c" / "iter-1" / "ppo")
            assert "ppo" in it["wall_seconds"]
        else:
            assert it["ppo"] is None
        for key in ("sft/gold", "sft/rm", "previous/gold", "previous/rm"):
            result = it["win_rate"][key]
            assert result["n"] == 8 and result["ci95"][0] <= result["win_rate"] <= result["ci95"][1]
            assert result["win"] + result["tie"] + result["loss"] == pytest.approx(1)
        # the same judgments on the helpfulness and the adversarial prompts apart, and each model's violations
        sets = it["win_rate_by_set"]["sft/gold"]
        assert sum(part["n"] for part in sets.values()) == 8
        adversarial = sets["safety"]["n"] if "safety" in sets else 0
        assert all((it["violation_rate"][m] or {"n": 0})["n"] == adversarial for m in ("model", "sft", "previous"))
    collect_v2 = json.loads((tmp_path / "c" / "iter-2" / "collect_pairs" / "manifest.json").read_text())
    assert collect_v2["inputs"]["model"]["path"] == str(tmp_path / "c" / "iter-1" / "ppo")  # V2 samples from PPO
    # the pool keeps the best answer per prompt across iterations: V2's pool draws on V1's candidates too
    assert sum(on_disk["iterations"][1]["rejection"]["pool_by_iteration"].values()) == 8

    # MLflow: campaign run -> iteration runs -> step runs, progression metrics by iteration, artifacts, registry.
    client = MlflowClient(on_disk["tracking_uri"])
    experiment = client.get_experiment_by_name("c")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    by_id = {r.info.run_id: r for r in runs}
    campaign = [r for r in runs if r.data.tags.get("rlhf.kind") == "campaign"]
    assert len(campaign) == 1 and campaign[0].info.status == "FINISHED"
    iterations = {r.info.run_name: r for r in runs if r.data.tags.get("rlhf.kind") == "iteration"}
    assert set(iterations) == {"SFT", "RLHF-V1", "RLHF-V2"}
    assert all(r.data.tags["mlflow.parentRunId"] == campaign[0].info.run_id for r in iterations.values())
    step_runs = [r for r in runs if r.data.tags.get("rlhf.kind") == "step"]
    assert len(step_runs) == 2 + 2 * len(ITERATION_STEPS) + 2  # + PPO in V1, GAtt in V2
    assert all(by_id[r.data.tags["mlflow.parentRunId"]].data.tags["rlhf.kind"] == "iteration" for r in step_runs)
    assert {r.info.status for r in step_runs} == {"FINISHED"}
    # each step's run has its peak memory (prefixed by output name where a step has several, e.g. the two RMs)
    assert all(any(k.endswith("peak_rss_mb") for k in r.data.metrics) for r in step_runs)
    history = client.get_metric_history(campaign[0].info.run_id, "3_temperature/chosen")
    assert sorted(m.step for m in history) == [1, 2]
    assert [m.step for m in client.get_metric_history(campaign[0].info.run_id, "2_rm/helpful/accuracy")] == [1, 2]
    assert client.get_metric_history(campaign[0].info.run_id, "1_win_rate/sft/gold")
    rm_step = next(r for r in step_runs if r.data.tags["rlhf.step"] == "train_reward_models")
    assert any(m.startswith("helpful/train/loss") for m in rm_step.data.metrics) or \
        client.get_metric_history(rm_step.info.run_id, "helpful/train/loss")
    artifacts = {a.path for a in client.list_artifacts(rm_step.info.run_id, "rm-helpful")}
    assert "rm-helpful/manifest.json" in artifacts
    assert "config.yaml" in {a.path.split("/")[-1] for a in client.list_artifacts(campaign[0].info.run_id, "c")}
    versions = client.search_model_versions("name = 'c-policy'")
    assert len(versions) == 3
    latest = client.get_model_version_by_alias("c-policy", "current")
    assert latest.tags["rlhf.label"] == "RLHF-V2" and latest.tags["latest"] == "true"
    assert client.get_model_version_by_alias("c-rm-helpful", "RLHF-V1").tags["rlhf.iteration"] == "1"

    # Rerun: nothing executes again, every step is Cached (how long a cached rerun takes is a benchmark's
    # business: benchmarks/campaign_overhead.py, not a timed assertion here).
    manifest = (tmp_path / "c" / "iter-2" / "train_policy" / "manifest.json").read_text()
    t1 = datetime.now(timezone.utc)
    again = run_campaign(cfg)
    states = prefect_runs.task_states(t1)
    assert {s for v in states.values() for s in v} == {"Cached"}, states
    assert (tmp_path / "c" / "iter-2" / "train_policy" / "manifest.json").read_text() == manifest
    assert again["iterations"] == summary["iterations"]
    assert len(client.search_runs([experiment.experiment_id], max_results=500)) == len(runs)  # same runs reused


@pytest.mark.slow
def test_fault_mid_training_then_resume(tmp_path):
    with pytest.raises(InjectedFault):
        run_campaign(smoke(tmp_path, "f", "debug.fail_at=train_policy:1", "rejection.pool_from=3"))
    work = tmp_path / "f" / "iter-1" / ".train_policy.work" / "checkpoints"
    assert [p.name for p in work.iterdir()] == ["step-1"]
    assert not (tmp_path / "f" / "iter-1" / "train_policy").exists()  # nothing half-written
    client = MlflowClient(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("f").experiment_id

    def train_policy_runs():
        return client.search_runs([experiment], "tags.`rlhf.step` = 'train_policy' and tags.`rlhf.iteration` = '1'")

    [failed] = train_policy_runs()  # recorded as FAILED before the error reached us
    assert failed.info.status == "FAILED" and not failed.data.metrics

    t0 = datetime.now(timezone.utc)
    assert main(["resume", f"campaign.root={tmp_path}", "campaign.name=f"]) == 0  # the stored config, minus the fault
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    states = prefect_runs.task_states(t0)
    before = ("sft", "seed_pairs", "collect_pairs", "annotate", "train_reward_models", "eval_reward_models",
              "search_temperature", "rejection_sample")
    assert all(states[s][0] == "Cached" for s in before), states  # iteration 1's (and 0's) finished steps
    manifest = json.loads((tmp_path / "f" / "iter-1" / "train_policy" / "manifest.json").read_text())
    assert manifest["metrics"]["resumed_from_step"] == 1 and manifest["metrics"]["steps"] == 2
    # the resumed output has the schema of one that ran straight through (iteration 2's)
    clean = json.loads((tmp_path / "f" / "iter-2" / "train_policy" / "manifest.json").read_text())
    assert clean["metrics"]["resumed_from_step"] == 0 and set(clean["metrics"]) == set(manifest["metrics"])
    assert sorted(p.name for p in (tmp_path / "f" / "iter-1" / "train_policy").iterdir()) == \
        sorted(p.name for p in (tmp_path / "f" / "iter-2" / "train_policy").iterdir())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2] and summary["config"]["debug"]["fail_at"] is None
    # rejection.pool_from=3 (kept by the stored config): V2's pool is its own best-of-K, not V1's candidates too
    assert summary["iterations"][1]["rejection"]["pool_by_iteration"] == {"2": 8}
    [resumed] = train_policy_runs()  # the failed attempt's run, finished by the resumed step
    assert resumed.info.run_id == failed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.metrics["resumed_from_step"] == 1 and resumed.data.tags["rlhf.key"]
    assert set(summary["iterations"][0]) >= {"iteration", "policy_path", "mlflow_run_id", "wall_seconds", "reward",
                                               "temperature", "rejection", "ppo", "gatt", "win_rate"}


@pytest.mark.slow
def test_human_labels_through_a_paused_flow_run(tmp_path):
    """annotator=human with orchestration.pause_for_labels: the iteration exports the pairs and pauses; a
    person labels them and resumes the run with the labels file's path (what the Prefect UI's resume form
    sends); the flow validates the labels and goes on."""
    export, labels = tmp_path / "to_label.jsonl", tmp_path / "labels.jsonl"
    cfg = smoke(tmp_path, "h", "annotator=human", f"annotator.export_path={export}",
                "orchestration.pause_for_labels=true", "annotator.timeout_seconds=300", "campaign.iterations=1",
                "campaign.gatt_from=null")
    outcome: dict = {}

    def campaign():
        try:
            outcome["summary"] = run_campaign(cfg)
        except BaseException as err:  # noqa: BLE001 -- handed to the test's thread
            outcome["error"] = err

    worker = threading.Thread(target=campaign, daemon=True)  # a failed test must not wait for the pause
    worker.start()
    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["h-RLHF-V1"])),
                                         sort=FlowRunSort.START_TIME_ASC, limit=10)
            paused = [r for r in runs if r.state is not None and r.state.is_paused()]
            if paused:
                break
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.5)
        assert not (tmp_path / "h" / "iter-1" / "train_reward_models").exists()  # nothing past annotate yet
        to_label = pd.read_json(export, lines=True)
        assert len(to_label) == cfg.collect.n_prompts and set(to_label["preferred"]) == {""}
        to_label.assign(preferred="a", level="better", safe_a="safe", safe_b="unsafe", safety_preferred="a",
                        safety_level="better").to_json(labels, orient="records", lines=True)
        client.resume_flow_run(paused[0].id, run_input={"labels_path": str(labels)})
    worker.join(timeout=300)
    assert "error" not in outcome, outcome
    assert [it["iteration"] for it in outcome["summary"]["iterations"]] == [1]
    labelled = pd.read_parquet(tmp_path / "h" / "iter-1" / "annotate" / "pairs.parquet")
    assert list(labelled["chosen"]) == list(to_label["response_a"]) and set(labelled["level"]) == {"better"}
    assert set(labelled["safety_prefers"]) == {"chosen"} and not labelled["rejected_safe"].any()


@pytest.mark.slow
def test_margin_ablation_and_pairs_from_two_variants(tmp_path):
    """reward.ablate=true: Table 28 as a step of the iteration, from the SFT model, on the Helpfulness RM's pairs
    and split, tested on its held-out labelled pairs; summary.json and the report carry it. The same one-iteration
    campaign samples each pair's answers from two models (collect.variants, in 2 shards): the policy (the SFT
    model at V1) and the base model it was fine-tuned from; and evaluates with a local pairwise judge and with and
    without a system prompt."""
    cfg = smoke(tmp_path, "abl", "reward.ablate=true", "campaign.iterations=1", "campaign.gatt_from=null",
                "collect.variants=[policy,base]", "orchestration.shards=2", "eval.judges=[gold,rm,pairwise]",
                "eval.pairwise.model=tiny", "eval.system_prompt='Be brief.'")
    entry = run_campaign(cfg)["iterations"][0]
    assert set(entry["win_rate"]) == set(entry["win_rate_with_system"]) >= {"sft/gold", "sft/pairwise"}
    assert {"win_rate_when_first", "win_rate_when_second", "unparsed"} <= set(entry["win_rate"]["sft/pairwise"])
    collect = json.loads((tmp_path / "abl" / "iter-1" / "collect_pairs" / "manifest.json").read_text())
    assert collect["inputs"]["model"]["path"] == str(tmp_path / "abl" / "iter-0" / "sft")
    assert collect["inputs"]["second_model"]["path"] == "tiny"  # smoke's model.name_or_path
    pairs = pd.read_parquet(tmp_path / "abl" / "iter-1" / "collect_pairs" / "pairs.parquet")
    assert set(pairs.variant_a) == {"policy"} and set(pairs.variant_b) == {"base"}
    assert (pairs.response_a != pairs.response_b).all()
    by_variant = entry["pairs"]["by_variant"]
    assert set(by_variant) == {"policy T0.7", "base T1.1"}
    assert all(v["n"] == len(pairs) for v in by_variant.values())
    assert by_variant["policy T0.7"]["preferred"] + by_variant["base T1.1"]["preferred"] == pytest.approx(1)
    ablation, helpful = entry["reward_ablation"], entry["reward"]["helpful"]
    assert ablation["test_set"] == "held-out labelled pairs" and set(ablation["variants"]) == {"none", "small", "large"}
    assert ablation["n_train"] == entry["reward_train"]["helpful"]["n_train"]
    for variant in ablation["variants"].values():
        assert variant["n_test"] == helpful["n_test"] == 4 and variant["n_by_level"] == helpful["n_by_level"]
    manifest = json.loads((tmp_path / "abl" / "iter-1" / "rm-ablation" / "manifest.json").read_text())
    assert manifest["inputs"]["model"]["path"] == str(tmp_path / "abl" / "iter-0" / "sft")
    report = (tmp_path / "abl" / "report" / "report.md").read_text()
    assert "Margin ablation (Table 28 layout), RLHF-V1" in report and "| none |" in report
    assert "| RLHF-V1 | policy T0.7 |" in report
    assert "without and with the system prompt `Be brief.`" in report and "| RLHF-V1 | sft/pairwise |" in report


@pytest.mark.slow
def test_distilled_student_learns_from_the_pool_while_the_policy_stays_the_teacher(tmp_path):
    """rejection.student: every iteration fine-tunes the student on the same pool as the policy, from its previous
    iteration's weights; the policy (the teacher) is what the next iteration samples from; the student is judged
    against the SFT model and the teacher, registered, and reported."""
    cfg = smoke(tmp_path, "ds", "rejection.student=tiny", "campaign.gatt_from=null")
    summary = run_campaign(cfg)
    home = tmp_path / "ds"

    def manifest(iteration, step):
        return json.loads((home / f"iter-{iteration}" / step / "manifest.json").read_text())

    assert manifest(1, "distill")["inputs"]["model"]["path"] == "tiny"  # V1: the student model itself
    assert manifest(2, "distill")["inputs"]["model"]["path"] == str(home / "iter-1" / "distill")
    assert manifest(2, "distill")["inputs"]["data"]["path"] == str(home / "iter-2" / "rejection_sample" /
                                                                    "pool_sft.jsonl")  # the teacher's pool
    teacher_v1 = summary["iterations"][0]["policy_path"]
    assert teacher_v1 == str(home / "iter-1" / "ppo")  # the policy stayed the teacher (and ran PPO in V1)
    assert manifest(2, "train_policy")["inputs"]["model"]["path"] == teacher_v1
    assert manifest(2, "collect_pairs")["inputs"]["model"]["path"] == teacher_v1
    for it in summary["iterations"]:
        student = it["student"]
        assert student["path"] == str(home / f"iter-{it['iteration']}" / "distill") and student["steps"] > 0
        assert {"sft/gold", "sft/rm", "teacher/gold", "teacher/rm"} <= set(student["win_rate"])
        assert {key.split("/")[0] for key in student["win_rate"]} == {"sft", "teacher"}
        assert all(r["n"] == 8 for r in student["win_rate"].values())
    judged = manifest(2, "evaluate-student")["inputs"]
    assert judged["model"]["path"] == str(home / "iter-2" / "distill")
    assert judged["baseline_teacher"]["path"] == summary["iterations"][1]["policy_path"]  # V2's final policy
    assert judged["baseline_sft"]["path"] == str(home / "iter-0" / "sft")
    client = MlflowClient(summary["tracking_uri"])
    assert len(client.search_model_versions("name = 'ds-student'")) == 2
    report = (home / "report" / "report.md").read_text()
    assert "## Distilled student" in report and "| RLHF-V2 | teacher/gold |" in report


def test_second_run_on_a_locked_campaign_refuses(tmp_path):
    cfg = smoke(tmp_path, "locked")
    with campaign_lock(tmp_path / "locked"):
        with pytest.raises(CampaignLocked, match="is being run by pid"):
            run_campaign(cfg)
    assert not (tmp_path / "locked" / "iter-0").exists()


def test_report_of_the_smoke_campaign(smoke_run):
    """Every section, the plots as real PNGs, numbers equal to summary.json and MLflow, attached to MLflow."""
    from rlhf.record.report import SECTIONS
    from rlhf.record.summary import progression_metrics

    home = smoke_run["root"] / "c"
    summary = json.loads((home / "summary.json").read_text())
    report = home / "report"
    assert summary["report"] == str(report / "report.md")
    md, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in md and f"<h2>{section}</h2>" in page, section
    plots = {p.name for p in (report / "plots").iterdir()}
    assert plots == {"win_rates.png", "helpful_vs_safety.png", "rm_accuracy.png", "temperature.png",
                     "best_of_k.png", "pool.png", "gatt_adherence.png"}
    assert "| RLHF-V2 | after GAtt |" in md and "| RLHF-V1 |" in md.split("## PPO")[1].split("##")[0]
    for name in plots:
        assert (report / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in md  # linked from the Markdown, inlined in the HTML
    assert 'src="plots/' not in page and page.count('src="data:image/png;base64,') == len(plots)
    # The numbers: each iteration's win rates as printed, and the same as MLflow's.
    client = MlflowClient(summary["tracking_uri"])
    for it in summary["iterations"]:
        for key, r in it["win_rate"].items():
            row = f"| RLHF-V{it['iteration']} | {key} | "
            assert f"{row}{100 * r['win']:.1f}% | {100 * r['tie']:.1f}% | {100 * r['loss']:.1f}% | " \
                   f"{100 * r['win_rate']:.1f}% |" in md, row
        logged = {m: client.get_metric_history(summary["mlflow_run_id"], m) for m in progression_metrics(it)}
        for name, value in progression_metrics(it).items():
            assert [h.value for h in logged[name] if h.step == it["iteration"]] == [pytest.approx(value)], name
    # The example answers are the evaluate step's, SFT and each iteration side by side.
    answers = __import__("pandas").read_parquet(home / "iter-2" / "evaluate" / "answers.parquet")
    first = answers[answers.model == "model"].iloc[0]
    assert first.prompt in md and "**RLHF-V2**" in md and "**SFT**" in md
    # The verdict is computed from the final iteration's CI.
    final = summary["iterations"][-1]["win_rate"]["sft/gold"]
    low, high = final["ci95"]
    word = "beats" if low > 0.5 else "is worse than" if high < 0.5 else "is not distinguishable"
    assert f"**RLHF-V2 {word}" in md
    attached = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "report")}
    assert {"report/report.md", "report/report.html", "report/plots"} <= attached


def test_io_failures_are_retried_as_orchestration_says(tmp_path, monkeypatch):
    """``orchestration.io_retries`` reaches the task: a step whose disk fails once succeeds on its retry,
    and with no retries the failure stands."""
    from prefect import flow

    from rlhf import tracking
    from rlhf.core.steps import pairs
    from rlhf.flows.config import OrchestrationConfig
    from rlhf.flows.iteration import call
    from rlhf.tasks import steps

    cfg = smoke(tmp_path)
    uri = tracking.tracking_uri(None, tmp_path)
    experiment = tracking.experiment_id(uri, "retries", tmp_path / "mlartifacts")
    parent = tracking.find_or_create_run(uri, experiment, "SFT", {tracking.KIND: "iteration"})
    where = tracking.Tracking(uri, experiment, "retries", parent, 0)
    real, attempts = pairs.seed_pairs_step, []

    def flaky(reward, out_dir):  # the injected fault: the disk fails on the first attempt only
        attempts.append(out_dir)
        if len(attempts) == 1:
            raise OSError("injected: disk hiccup")
        return real(reward, out_dir)

    monkeypatch.setattr(pairs, "seed_pairs_step", flaky)

    def run(io_retries: int, name: str) -> dict:
        retries = OrchestrationConfig(io_retries=io_retries, retry_delay_seconds=0)

        @flow(name=f"retries-{name}")
        def one_step() -> dict:
            return call(steps.seed_pairs, tracking=where, retries=retries, here=str(tmp_path / name),
                        reward=cfg.reward, fault=None)

        return one_step()

    ref = run(1, "retried")
    assert len(attempts) == 2 and ref["metrics"]["n_helpful"] > 0
    assert ref["files"]["helpful"] == str(tmp_path / "retried" / "seed_pairs" / "helpful.parquet")
    attempts.clear()
    with pytest.raises(OSError, match="injected"):
        run(0, "not-retried")
    assert len(attempts) == 1
    tracking.RECORDER.flush(raise_errors=False)


@pytest.mark.slow
@pytest.mark.processes
def test_smoke_campaign_with_every_training_step_on_two_processes(tmp_path, caplog):
    """``launch=ddp launch.num_processes=2``: SFT, the RMs, the policy's fine-tune, PPO and GAtt each run on
    2 launched processes; the campaign completes, records ``world_size`` in the manifests and as an MLflow
    param of the training steps' runs, and a rerun is all Cached without starting a process. One iteration
    with every step (PPO and GAtt in V1) keeps it to 6 launches."""
    cfg = smoke(tmp_path, "d", "launch=ddp", "launch.num_processes=2", "campaign.iterations=1",
                "campaign.ppo_at=[1]", "campaign.gatt_from=1")
    t0 = datetime.now(timezone.utc)
    run_campaign(cfg)
    states = prefect_runs.task_states(t0)
    assert {s for v in states.values() for s in v} == {"Completed"}, states
    home = tmp_path / "d"
    trained = {"iter-0/sft", "iter-1/rm-helpful", "iter-1/rm-safety", "iter-1/train_policy", "iter-1/ppo",
               "iter-1/gatt"}
    for step in trained | {"iter-1/evaluate", "iter-1/rejection_sample"}:
        manifest = json.loads((home / step / "manifest.json").read_text())
        assert manifest["world_size"] == (2 if step in trained else 1), step
    client = MlflowClient(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("d").experiment_id
    launched = client.search_runs([experiment], "params.world_size = '2'", max_results=100)
    assert sorted(r.info.run_name for r in launched) == ["gatt", "ppo", "sft", "train_policy", "train_reward_models"]

    caplog.clear()
    t1 = datetime.now(timezone.utc)
    with caplog.at_level("INFO", logger="rlhf"):
        run_campaign(cfg)
    assert {s for v in prefect_runs.task_states(t1).values() for s in v} == {"Cached"}
    assert "launching" not in caplog.text


@pytest.mark.slow
def test_ghost_attention_mixed_into_the_pool(tmp_path):
    """gatt.mix_into=pool: the GAtt dialogues, sampled from the policy the iteration starts from, join
    train_policy's data (their rows keep the loss on the last answer); no separate GAtt fine-tune runs, and the
    iteration's final policy's adherence is measured beside the starting policy's, read as GAtt's."""
    cfg = smoke(tmp_path, "mix", "campaign.iterations=1", "campaign.gatt_from=1", "campaign.ppo_at=[]",
                "gatt.mix_into=pool")
    entry = run_campaign(cfg)["iterations"][0]
    here = tmp_path / "mix" / "iter-1"
    assert not (here / "gatt").exists() and (here / "gatt_dialogues").is_dir() and (here / "gatt_adherence").is_dir()
    rows = [json.loads(line) for line in (here / "gatt_dialogues" / "gatt_sft.jsonl").read_text().splitlines()]
    assert rows and {row["loss_mode"] for row in rows} == {"last"}
    assert rows[0]["messages"][0]["role"] == "system"  # the instruction lives in the system message only
    trained = json.loads((here / "train_policy" / "manifest.json").read_text())
    assert trained["inputs"]["extra_0"]["path"] == str(here / "gatt_dialogues" / "gatt_sft.jsonl")
    assert trained["inputs"]["model"]["path"] == str(tmp_path / "mix" / "iter-0" / "sft")  # the iteration's start
    pool = pd.read_parquet(here / "rejection_sample" / "pool.parquet")
    m = trained["metrics"]
    assert m["n_conversations"] + m["n_dropped_overlong"] == len(pool) + len(rows)  # the pool's and GAtt's rows
    adherence = json.loads((here / "gatt_adherence" / "manifest.json").read_text())
    assert adherence["inputs"]["model"]["path"] == entry["policy_path"] == str(here / "train_policy")
    gatt = entry["gatt"]
    assert gatt["mix_into"] == "pool" and gatt["n_examples"] == len(rows)
    assert set(gatt["adherence_by_turn"]) == {"before", "after"} and gatt["adherence_by_turn"]["before"]
    report = (tmp_path / "mix" / "report" / "report.md").read_text()
    assert "| RLHF-V1 | after GAtt (mixed into the pool) |" in report and "gatt.mix_into=pool: the dialogues" in report
