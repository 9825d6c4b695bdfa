"""The RLHF-Vn iteration as one Prefect flow (docs/design.md#the-iteration-dag)::

    collect_pairs -> annotate -> train_reward_models -> eval_reward_models
                                        |
                 search_temperature <---+
                        |
                 rejection_sample (pool: best of all iterations) -> train_policy
                                                                      |
                 ppo (campaign.ppo_at) -> gatt (campaign.gatt_from) -> evaluate

Every step is a task of ``rlhf.tasks.steps``; this module only wires them: which output feeds which
step and what the iteration carries forward (its labelled pairs, its candidates for the pool, its
policy). Where each step writes is its output contract's business (``rlhf.core.steps.outputs``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from prefect import flow, pause_flow_run
from prefect.input import RunInput

from rlhf.core.annotators import AnnotatorConfig
from rlhf.core.errors import ConfigError
from rlhf.record.layout import finished, iteration_dir
from rlhf.record.summary import iteration_entry, progression_metrics
from rlhf.tasks import steps
from rlhf.tracking import (
    RECORDER,
    Tracking,
    fail_step,
    finish_run,
    iteration_run,
    log_metrics_once,
    record_step,
    register,
    start_step,
)

from .config import OrchestrationConfig, RootConfig, config_from_dict, ppo_eval_prompts


@dataclass
class CampaignState:
    """What one iteration hands the next: step references (``rlhf.tasks.steps.Ref``)."""

    sft: dict
    seed: dict
    policy: dict  # the latest policy (SFT before V1)
    labelled: list[dict] = field(default_factory=list)  # every iteration's annotated pairs
    candidates: list[dict] = field(default_factory=list)  # every iteration's rejection_sample output


@dataclass(frozen=True)
class TrackingIds:
    uri: str
    experiment_id: str
    campaign_run_id: str


log = logging.getLogger("rlhf")


class Labels(RunInput):
    """What a person types into the Prefect UI to resume a flow paused for labels."""

    labels_path: str


def call(task, tracking: Tracking, retries: OrchestrationConfig, **params):
    """Run ``task`` and record it in its MLflow run (on the tracking thread, overlapping what comes next):
    a RUNNING run while a step computes, then its params, metrics and artifacts, or FAILED. Failures on
    I/O are retried as ``orchestration.io_retries`` / ``retry_delay_seconds`` say.

    A cached result is trusted only if its outputs are on disk as their manifests recorded them, under
    the result's key: an output deleted, truncated or edited by hand, or replaced by a run with another
    config, is computed again (a log line says why)."""
    options = {"retries": retries.io_retries, "retry_delay_seconds": retries.retry_delay_seconds}
    missing = [d for d in steps.output_dirs(task.name, params) if not finished(d)]
    started = time.time()
    if missing:
        RECORDER.submit(start_step, tracking, task.name, started)
    try:
        result = task.with_options(**options, **({"refresh_cache": True} if missing else {}))(**params)
        if not missing and (problem := steps.untrusted(result)):
            log.info("%s: the cached result is not trusted (%s); computing it again", task.name, problem)
            RECORDER.submit(start_step, tracking, task.name, started)
            result = task.with_options(**options, refresh_cache=True)(**params)
    except BaseException:
        RECORDER.submit(fail_step, tracking, task.name, started, time.time())
        raise
    outputs = {task.name: result} if "path" in result else result
    RECORDER.submit(record_step, tracking, task.name, steps.tracked_params(task.name, params), outputs, started,
                    time.time())
    return result


def _per_iteration(path: str | None, iteration: int) -> str | None:
    return path.format(iteration=iteration) if path else path


def annotator_for(cfg: RootConfig, iteration: int, here: Path, pairs: dict) -> AnnotatorConfig:
    """The configured annotator for this iteration: ``{iteration}`` in its paths is filled in; with
    ``orchestration.pause_for_labels`` the flow pauses until someone gives the labels file's path."""
    annotator = cfg.annotator
    if annotator.name == "simulated":
        return annotator
    annotator = replace(annotator, labels_path=_per_iteration(annotator.labels_path, iteration),
                        export_path=_per_iteration(annotator.export_path, iteration)
                        or str(here / "to_label.jsonl"))
    if annotator.name == "human" and cfg.orchestration.pause_for_labels:
        from rlhf.core.annotators import FileAnnotator, read_pairs

        FileAnnotator(annotator.export_path).export(read_pairs(pairs["files"]["pairs"]), annotator.export_path)
        given = pause_flow_run(wait_for_input=Labels.with_initial_data(
            description=f"Label the pairs in {annotator.export_path}, then give the labels file's path.",
            labels_path=annotator.labels_path or ""), timeout=int(annotator.timeout_seconds))
        annotator = replace(annotator, name="file", labels_path=given.labels_path)
    return annotator


@flow(name="rlhf-iteration", flow_run_name="{campaign_name}-RLHF-V{iteration}")
def iteration_flow(config: dict, iteration: int, state: dict, ids: dict, campaign_name: str,
                   fault: str | None = None) -> dict:
    """RLHF-V<iteration>: new pairs labelled, RMs retrained on all pairs, temperature re-searched,
    rejection sampling into the all-iterations pool, the policy fine-tuned on it, win rates measured.
    Returns ``{"entry": summary entry, "state": CampaignState for the next iteration}``."""
    cfg = config_from_dict(config)
    carried, track_ids = CampaignState(**state), TrackingIds(**ids)
    here = iteration_dir(cfg, iteration)
    run = RECORDER.submit(iteration_run, track_ids.uri, track_ids.experiment_id, campaign_name,
                                    track_ids.campaign_run_id, iteration)
    tracking = Tracking(track_ids.uri, track_ids.experiment_id, campaign_name, run, iteration)
    common = {"tracking": tracking, "retries": cfg.orchestration, "here": str(here), "fault": steps.Fault.parse(fault)}
    rs_prompts = replace(cfg.prompts, n=cfg.rejection.n_prompts)
    # New prompts each iteration, after the rejection-sampling prompts (the paper's weekly batches).
    new_prompts = replace(cfg.prompts, n=cfg.collect.n_prompts,
                          offset=cfg.prompts.offset + cfg.rejection.n_prompts + (iteration - 1) * cfg.collect.n_prompts)
    refs: dict = {}

    # 1. Pairs from the current policy, labelled.
    refs["collect_pairs"] = call(steps.collect_pairs, policy=carried.policy, model=cfg.model, prompts=new_prompts,
                                 sampling=cfg.sampling, temperatures=cfg.collect.temperatures, iteration=iteration,
                                 **common)
    annotator = annotator_for(cfg, iteration, here, refs["collect_pairs"])
    refs["annotate"] = call(steps.annotate, pairs=refs["collect_pairs"], annotator=annotator, **common)
    labelled = carried.labelled + [refs["annotate"]]
    # 2. Reward models on the seed pairs + every labelled batch so far, from the SFT checkpoint.
    rms = refs["train_reward_models"] = call(steps.train_reward_models, init=carried.sft, model=cfg.model,
                                             reward=cfg.reward, seed=carried.seed, labelled=labelled, **common)
    refs["eval_reward_models"] = call(steps.eval_reward_models, rms=rms, model=cfg.model, reward=cfg.reward, **common)
    # 3. Temperature search, then rejection sampling at the chosen temperature into the pool.
    sampling = {"model": cfg.model, "sampling": cfg.sampling, "rejection": cfg.rejection, "scorer": cfg.scorer}
    refs["search_temperature"] = call(steps.search_temperature, policy=carried.policy, rms=rms, prompts=rs_prompts,
                                      **sampling, **common)
    refs["rejection_sample"] = call(steps.rejection_sample, policy=carried.policy, rms=rms,
                                    search=refs["search_temperature"], previous=carried.candidates,
                                    prompts=rs_prompts, iteration=iteration, **sampling, **common)
    # 4. The new policy: fine-tuned on the pool.
    policy = refs["train_policy"] = call(steps.train_policy, policy=carried.policy, pool=refs["rejection_sample"],
                                         model=cfg.model, config=cfg.train_policy, student=cfg.rejection.student,
                                         **common)
    # 5. PPO on the new policy (campaign.ppo_at), KL-anchored to it; its output becomes the iteration's policy.
    if runs_ppo(cfg, iteration):
        policy = refs["ppo"] = call(steps.ppo, policy=policy, rms=rms, model=cfg.model,
                                    prompts=replace(cfg.prompts, n=cfg.ppo.n_prompts),
                                    eval_prompts=ppo_eval_prompts(cfg), sampling=cfg.sampling, scorer=cfg.scorer,
                                    config=cfg.ppo, **common)
    # 6. Ghost Attention from campaign.gatt_from on: the policy learns to keep the system instruction.
    if runs_gatt(cfg, iteration):
        policy = refs["gatt"] = call(steps.gatt, policy=policy, model=cfg.model, config=cfg.gatt,
                                     train=cfg.gatt.train, sampling=cfg.sampling, **common)
    # 7. Win rates against the SFT model, the previous policy and any fixed references (eval.references).
    baselines = {"sft": carried.sft, "previous": carried.policy, **reference_refs(cfg)}
    refs["evaluate"] = call(steps.evaluate, policy=policy, baselines=baselines, rms=rms, model=cfg.model,
                            sampling=cfg.sampling, scorer=cfg.scorer, config=cfg.eval, **common)

    entry = iteration_entry(iteration, refs, tracking.parent_run_id)  # created on the tracking thread long since
    RECORDER.submit(record, track_ids, tracking, entry, refs, policy, cfg.tracking.register_models,
                              campaign_name)
    carried_out = CampaignState(sft=carried.sft, seed=carried.seed, policy=policy, labelled=labelled,
                                candidates=carried.candidates + [refs["rejection_sample"]])
    return {"entry": entry, "state": carried_out.__dict__}


def record(ids: TrackingIds, tracking: Tracking, entry: dict, refs: dict, policy: dict, register_models: bool,
           campaign: str) -> None:
    """Progression metrics on the campaign and iteration runs (``step=iteration``), the models in the
    registry, and the iteration run closed."""
    metrics = progression_metrics(entry)
    for run in (ids.campaign_run_id, tracking.parent_run_id):
        log_metrics_once(tracking.uri, run, metrics, step=tracking.iteration)
    if register_models:
        register(tracking.uri, f"{campaign}-policy", Path(policy["path"]), tracking.parent_run_id,
                           tracking.iteration)
        for name, ref in refs["train_reward_models"].items():
            register(tracking.uri, f"{campaign}-rm-{name}", Path(ref["path"]), tracking.parent_run_id,
                               tracking.iteration)
    finish_run(tracking.uri, tracking.parent_run_id)


def reference_refs(cfg: RootConfig) -> dict[str, dict]:
    """``eval.references`` as step references (keyed by the model's name: a reference is a fixed model)."""
    clash = sorted(set(cfg.eval.references) & {"sft", "previous", "model"})
    if clash:
        raise ConfigError("eval.references", f"{clash} are built-in baseline names; name the reference otherwise")
    return {name: {"step": "reference", "path": path, "key": f"reference:{path}", "metrics": {}, "files": {}}
            for name, path in cfg.eval.references.items()}


def runs_ppo(cfg: RootConfig, iteration: int) -> bool:
    return cfg.ppo.enabled and iteration in cfg.campaign.ppo_iterations()


def runs_gatt(cfg: RootConfig, iteration: int) -> bool:
    return cfg.campaign.gatt_from is not None and iteration >= cfg.campaign.gatt_from


def check_slots(cfg: RootConfig) -> None:
    """Config mistakes the DAG would meet late, found before anything runs."""
    reference_refs(cfg)
    cfg.ppo.validate()
    outside = [n for n in cfg.campaign.ppo_iterations() if not 1 <= n <= cfg.campaign.iterations]
    if cfg.ppo.enabled and outside:
        raise ConfigError("campaign.ppo_at", f"iterations {outside} are outside 1..{cfg.campaign.iterations} "
                                             "(campaign.iterations)")
    cfg.gatt.validate()
    if cfg.campaign.gatt_from is not None and not 1 <= cfg.campaign.gatt_from <= cfg.campaign.iterations:
        raise ConfigError("campaign.gatt_from", f"{cfg.campaign.gatt_from} is outside 1..{cfg.campaign.iterations} "
                                                "(campaign.iterations): no iteration would run Ghost Attention")
