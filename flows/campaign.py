"""The campaign flow: SFT (iteration 0), then RLHF-V1..Vn as subflows, and the "next iteration" flow
that ``rlhf serve`` schedules.

A campaign is identified by its directory (``<campaign.root>/<campaign.name>``). Running it again
re-executes nothing that finished (every such step is Cached), resumes a failed training step from its
checkpoints, and runs only what a changed config touches. One run at a time per campaign (a lock).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

from prefect import flow, tags, task
from prefect.utilities.annotations import quote

from rlhf import storage
from rlhf.core.artifacts import code_version, prune_weights
from rlhf.core.errors import ConfigError
from rlhf.core.models import describe_machine
from rlhf.core.steps.outputs import DISTILL, GATT, PPO, RM_NAMES, TRAIN_POLICY, rm_outputs
from rlhf.record.finished import clear_stamp, write_stamp
from rlhf.record.layout import (
    CONFIG_FILE,
    SUMMARY_FILE,
    campaign_dir,
    iteration_dir,
    last_finished_iteration,
    local_root,
    read_summary,
    remove_leftovers,
    write_config,
    write_summary,
)
from rlhf.record.report import REPORT_DIR, write_report
from rlhf.record.summary import table
from rlhf.tasks import steps
from rlhf.tracking import (
    CAMPAIGN,
    KIND,
    RECORDER,
    Tracking,
    check_store,
    end_unfinished_runs,
    experiment_id,
    find_experiment,
    find_or_create_run,
    finish_run,
    flushed,
    is_remote,
    iteration_run,
    log_dir,
    log_outputs,
    log_params,
    register,
    run_link,
    tracking_uri,
)

from .config import compose_config, config_from_dict, to_dict, to_yaml
from .environment import prefect_api
from .fanout import make_task_runner
from .iteration import (
    CampaignState,
    Finished,
    Steps,
    TrackingIds,
    artifact_key,
    check_slots,
    iteration_flow,
    iteration_params,
)

log = logging.getLogger("rlhf")
TRAINING_STEPS = ("sft", "train_reward_models", "ablate_reward_models", "train_policy", "distill", "ppo", "gatt")
STEPS = ("sft", "seed_pairs", "collect_pairs", "annotate", "train_reward_models", "eval_reward_models",
         "ablate_reward_models",
         "search_temperature", "gatt_dialogues", "rejection_sample", "train_policy", "distill", "ppo", "gatt",
         "gatt_adherence", "evaluate", "evaluate_student")


def check_fault(spec: str | None) -> None:
    fault = steps.Fault.parse(spec)
    if fault is None:
        return
    shard = re.fullmatch(r"(\w+)-shard-(\d+)-of-(\d+)", fault.step)
    if shard and shard[1] in steps.SHARDED and int(shard[2]) < int(shard[3]):
        pass  # one shard of a sharded step (orchestration.shards), e.g. rejection_sample-shard-1-of-2
    elif fault.step not in STEPS:
        raise ConfigError("debug.fail_at", f"unknown step {fault.step!r}; one of {', '.join(STEPS)}, or a shard "
                                           "<step>-shard-<i>-of-<n> of " + ", ".join(steps.SHARDED))
    if fault.after_steps is not None and fault.step not in TRAINING_STEPS:
        raise ConfigError("debug.fail_at", f"{fault.step} has no training steps to count; use "
                                           f"debug.fail_at={fault.step} (fail at its start) or a training step "
                                           f"({', '.join(TRAINING_STEPS)})")


def open_tracking(cfg, home: Path) -> TrackingIds:
    """The campaign's experiment and run (found again on reruns), with the resolved config attached.
    Runs an earlier, killed run of the campaign left RUNNING are ended FAILED first."""
    root = local_root(cfg.campaign.root)
    uri = tracking_uri(cfg.tracking.uri, root)
    check_store(uri)
    # a server keeps artifacts in its own store unless tracking.artifact_root names one
    artifacts = cfg.tracking.artifact_root or (None if is_remote(uri) else root / "mlartifacts")
    experiment = experiment_id(uri, cfg.tracking.experiment or cfg.campaign.name, artifacts)
    if ended := end_unfinished_runs(uri, experiment, cfg.campaign.name, "FAILED"):
        log.info("MLflow: %d run(s) an interrupted run of %s left RUNNING are now FAILED", ended, cfg.campaign.name)
    run_id = find_or_create_run(uri, experiment, "campaign", {KIND: "campaign", CAMPAIGN: cfg.campaign.name})
    log_params(uri, run_id, to_dict(cfg) | {"code_version": code_version()})
    log_outputs(uri, run_id, home, [home / CONFIG_FILE])
    return TrackingIds(uri, experiment, run_id)


def iteration_zero(cfg, resolved: dict, ids: TrackingIds, fault: str | None) -> tuple[CampaignState, list]:
    """SFT of the base model and the RMs' seed pairs; with the two tasks' Prefect states (the iterations'
    upstream edges)."""
    run = RECORDER.submit(iteration_run, ids.uri, ids.experiment_id, cfg.campaign.name, ids.campaign_run_id, 0,
                          iteration_params(cfg, resolved, 0))
    tracking = Tracking(ids.uri, ids.experiment_id, cfg.campaign.name, run, 0)
    zero = Steps(tracking, cfg.orchestration, here=str(storage.iteration_location(cfg, 0)),
                 fault=steps.Fault.parse(fault))
    with tags(*run_tags(cfg.campaign.name, 0)):
        sft = zero.run(steps.sft, model=cfg.model, data=cfg.data, config=cfg.sft, launch=cfg.launch.for_step("sft"))
        seed = zero.run(steps.seed_pairs, reward=cfg.reward)
    RECORDER.submit(_record_zero, ids, tracking, cfg.campaign.name, sft, cfg.tracking.register_models)
    return CampaignState(sft=sft, seed=seed, policy=sft), [finished for _, finished in zero.done]


def _record_zero(ids: TrackingIds, tracking: Tracking, campaign: str, sft: dict, register_models: bool) -> None:
    if register_models:
        register(ids.uri, f"{campaign}-policy", sft, tracking.parent_run_id, 0)
    finish_run(ids.uri, tracking.parent_run_id)


@flow(name="rlhf-campaign", flow_run_name="{campaign_name}")
def campaign_flow(config: dict, campaign_name: str, upto: int | None = None) -> dict:
    """SFT -> RLHF-V1 -> ... -> RLHF-V<upto> (default ``campaign.iterations``); writes and returns the
    campaign's ``summary.json``."""
    cfg = config_from_dict(config)
    resolved = to_dict(cfg)
    check_slots(cfg)
    check_fault(cfg.debug.fail_at)
    home, last = campaign_dir(cfg), upto or cfg.campaign.iterations
    location = storage.campaign_location(cfg)  # home, or on object storage the URL home is a working copy of
    # MLflow writes run on the tracking thread, overlapping the steps and the next iterations; flushed
    # before the report, and on failure (flushed(), then the runs left open are ended FAILED or KILLED)
    with storage.campaign_lock(location, lease=cfg.campaign.lock_lease_seconds), \
            flushed(on_failure=partial(_end_runs, cfg)):
        # 0. What a killed run left (temp folders, runs shown as running), the resolved config (what
        # `rlhf resume` reruns) and the campaign's MLflow run.
        clear_stamp(home)  # before anything changes: only a run that finished leaves one (rlhf/record/finished.py)
        if removed := remove_leftovers(home):
            log.info("removed %d temporary folder(s) of interrupted runs in %s", removed, home)
        _end_stale_flow_runs(cfg.campaign.name)
        write_config(home, to_yaml(cfg))
        storage.publish_files(home, location, [CONFIG_FILE])
        ids = open_tracking(cfg, home)
        # 1. Iteration 0: SFT and the seed pairs.
        state, upstream = iteration_zero(cfg, resolved, ids, cfg.debug.fail_at)
        summary = {"campaign": cfg.campaign.name, "experiment": cfg.tracking.experiment or cfg.campaign.name,
                   "code_version": code_version(), "campaign_dir": str(location), "tracking_uri": ids.uri,
                   "mlflow_run_id": ids.campaign_run_id, "machine": describe_machine(cfg.model.precision),
                   "config": resolved,
                   "sft": {"policy_path": state.sft["path"], "metrics": state.sft["metrics"]}, "iterations": []}
        # 2. RLHF-V1..V<last>, each a subflow; the summary is rewritten after each.
        for n in range(1, last + 1):
            # quoted, with the edges declared: each iteration depends on SFT, the seed pairs and every earlier
            # iteration (their labelled pairs and candidates); Prefect's own guess matches dicts by id()
            with tags(*run_tags(cfg.campaign.name, n)):
                run = iteration_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(
                                     config=quote(resolved), iteration=n, state=quote(state.__dict__),
                                     ids=quote(ids.__dict__), campaign_name=cfg.campaign.name,
                                     fault=cfg.debug.fail_at, wait_for=upstream, return_state=True)
            out = run.result()
            upstream.append(Finished(run))
            state = CampaignState(**out["state"])
            summary["iterations"].append(out["entry"])
            write_summary(home, summary)
            storage.publish_files(home, location, [SUMMARY_FILE])
            if cfg.campaign.keep is not None:
                prune_models(cfg, summary, n)
        # 3. The summary, and the report attached to the campaign's MLflow run.
        if summary["iterations"]:
            summary["report"] = str(storage.join(location, REPORT_DIR, "report.md"))
        write_summary(home, summary)
        storage.publish_files(home, location, [SUMMARY_FILE])
        RECORDER.flush()  # every iteration's records are in MLflow before the report is attached
        log_outputs(ids.uri, ids.campaign_run_id, home, [home / SUMMARY_FILE])
        if summary["iterations"]:
            report(str(home))
            if storage.is_url(location):
                storage.upload_dir(home / REPORT_DIR, storage.join(location, REPORT_DIR))
            publish_campaign(cfg, summary, ids)
        finish_run(ids.uri, ids.campaign_run_id)
        if not storage.is_url(location):  # what lets `rlhf run` skip Prefect when nothing is left to do
            write_stamp(home, resolved, last)
    return summary


def publish_campaign(cfg, summary: dict, ids: TrackingIds) -> None:
    """The campaign's per-iteration table as a Prefect artifact of its flow run, with its report and MLflow run."""
    from prefect.artifacts import create_markdown_artifact

    link = run_link(ids.uri, ids.experiment_id, ids.campaign_run_id)
    report_html = Path(summary["report"]).with_suffix(".html")
    create_markdown_artifact(
        key=artifact_key(cfg.campaign.name, None), description=f"{cfg.campaign.name}: results per iteration",
        markdown=f"```\n{table(summary)}\n```\n\nReport: `{report_html}` (also attached to the MLflow run)\n\n"
                 f"MLflow campaign run: [{link}]({link})")


def prune_models(cfg, summary: dict, last: int) -> int:
    """After iteration ``last`` succeeded (``campaign.keep``): delete the model weights of iterations up to
    ``last - keep``, keeping the SFT model and, when models are registered, every registered one (each
    iteration's policy, RMs and student: the registry points at them). Returns the bytes freed."""
    keep = cfg.campaign.keep
    protected = {summary["sft"]["policy_path"]}
    if cfg.tracking.register_models:
        for entry in summary["iterations"]:
            protected |= {entry["policy_path"], *entry["reward_model_paths"].values()}
            if entry.get("student"):
                protected.add(entry["student"]["path"])
    freed = 0
    for n in range(1, last - keep + 1):
        for contract in (TRAIN_POLICY, DISTILL, PPO, GATT, *(rm_outputs(name) for name in RM_NAMES)):
            out_dir = contract.dir(iteration_dir(cfg, n))
            if str(out_dir) not in protected and out_dir.is_dir():
                freed += prune_weights(out_dir)
    if freed:
        log.info("campaign.keep=%d: deleted %.2f GB of model weights of iterations up to %d", keep, freed / 1e9,
                 last - keep)
    return freed


def _end_runs(cfg, error: BaseException) -> None:
    """After a failure: the campaign's MLflow runs still RUNNING end KILLED (an interrupt) or FAILED."""
    root = local_root(cfg.campaign.root)
    uri = tracking_uri(cfg.tracking.uri, root)
    status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
    check_store(uri, timeout=5)  # a server that is gone: say so now, not after minutes of the client's retries
    experiment = find_experiment(uri, cfg.tracking.experiment or cfg.campaign.name)
    if experiment is not None:  # none yet: the run failed before it opened its MLflow runs
        end_unfinished_runs(uri, experiment, cfg.campaign.name, status)


STALE_AFTER_SECONDS = 30


def _end_stale_flow_runs(campaign: str) -> None:
    """Flow runs of this campaign still RUNNING in Prefect belong to a run whose process died (the lock is
    held, so no other live run of it has got past the lock): they are set Crashed, Prefect's state for
    exactly that -- with the runs it was a subflow of (the campaign run, a deployment's
    ``<campaign>-next-iteration``). Campaign runs that started in the last ``STALE_AFTER_SECONDS`` are left
    alone: a run triggered together with this one is RUNNING while it asks for the lock it will be refused."""
    from prefect import runtime
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Crashed

    mine = {str(m) for m in (runtime.flow_run.id, runtime.flow_run.parent_flow_run_id) if m}
    # A campaign run that started moments ago may be one triggered with this one that is about to be refused
    # the lock (it asks for it within seconds of starting), not a dead one. An iteration's run exists only
    # once its campaign run got past the lock.
    settled = datetime.now(timezone.utc) - timedelta(seconds=STALE_AFTER_SECONDS)
    running = FlowRunFilter(name=FlowRunFilterName(like_=campaign),
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    marked: set[str] = set()
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=running, sort=FlowRunSort.START_TIME_DESC, limit=200):
            if str(run.id) not in mine and (run.name.startswith(f"{campaign}-RLHF-V") or (
                    run.name == campaign and run.start_time and run.start_time < settled)):
                stale = [run]
                while stale[-1].parent_task_run_id:  # the runs it was a subflow of: campaign, deployment
                    parent = client.read_flow_run(client.read_task_run(stale[-1].parent_task_run_id).flow_run_id)
                    if parent.state_type != StateType.RUNNING or str(parent.id) in mine:
                        break
                    stale.append(parent)
                for dead in stale:
                    if str(dead.id) in marked:
                        continue
                    marked.add(str(dead.id))
                    client.set_flow_run_state(dead.id, Crashed(message="the process running it died; marked by "
                                                                       "the next run of the campaign"), force=True)
                    log.info("Prefect: flow run %s (%s) of a killed run marked Crashed", dead.name, dead.id)


@task(name="report", task_run_name="report")
def report(home: str) -> str:
    """The campaign report (rebuilt every run: it is cheap and reads only finished outputs)."""
    return str(publish_report(Path(home)))


def publish_report(home: Path) -> Path:
    """Write the campaign's report and attach it to the campaign's MLflow run (artifacts under
    ``report/``); returns the path of ``report.md``."""
    path = write_report(home)
    summary = read_summary(home)
    if summary.get("tracking_uri") and summary.get("mlflow_run_id"):
        # the default store is found beside the campaign (which may have moved since the summary was written)
        uri = tracking_uri(summary.get("config", {}).get("tracking", {}).get("uri"), Path(home).resolve().parent)
        log_dir(uri, summary["mlflow_run_id"], path.parent, REPORT_DIR)
    return path


def run_tags(campaign: str, iteration: int | None = None) -> list[str]:
    """Prefect tags of a campaign's runs (filter by them in the UI): ``campaign:<name>``, ``iteration:<n>``."""
    return [f"campaign:{campaign}"] + ([f"iteration:{iteration}"] if iteration is not None else [])


def run_campaign(cfg, upto: int | None = None) -> dict:
    """Run (or rerun, or resume) the campaign ``cfg`` describes, up to iteration ``upto``."""
    with prefect_api(), tags(*run_tags(cfg.campaign.name)):
        return campaign_flow(config=to_dict(cfg), campaign_name=cfg.campaign.name, upto=upto)


def next_iteration_name(campaign: str) -> str:
    return f"{campaign}-next-iteration"


def _next_iteration_run_name() -> str:
    """``<campaign>-next-iteration``: a deployment's run is named after its campaign (not Prefect's random
    words), so the campaign's next run finds it among the runs a killed worker left RUNNING."""
    from prefect.runtime import flow_run

    try:
        return next_iteration_name(compose_config(flow_run.parameters.get("overrides", [])).campaign.name)
    except Exception:  # a bad override: the flow body reports it; the run still needs a name
        return "next-iteration"


@flow(name="rlhf-next-iteration", flow_run_name=_next_iteration_run_name)
def next_iteration_flow(overrides: list[str]) -> dict:
    """The deployment ``rlhf serve`` schedules: the campaign's next iteration (1 + the last one whose
    evaluation finished), with everything before it cached. Composes its config in the flow body, so
    each scheduled run picks up the overrides it was deployed with."""
    cfg = compose_config(overrides)
    storage.pull_files(storage.campaign_location(cfg), campaign_dir(cfg), [SUMMARY_FILE])  # a worker's first run
    upto = last_finished_iteration(campaign_dir(cfg)) + 1
    with tags(*run_tags(cfg.campaign.name)):
        return campaign_flow(config=to_dict(cfg), campaign_name=cfg.campaign.name, upto=upto)
