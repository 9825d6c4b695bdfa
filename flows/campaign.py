"""The campaign flow: SFT (iteration 0), then RLHF-V1..Vn as subflows, and the "next iteration" flow
that ``rlhf serve`` schedules.

A campaign is identified by its directory (``<campaign.root>/<campaign.name>``). Running it again
re-executes nothing that finished (every such step is Cached), resumes a failed training step from its
checkpoints, and runs only what a changed config touches. One run at a time per campaign (a lock).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from prefect import flow, task

from rlhf_core.artifacts import code_version
from rlhf_core.errors import ConfigError
from tasks import steps
from tasks import tracking as mlt

from .config import compose_config, config_from_dict, to_dict, to_yaml
from .iteration import CampaignState, TrackingIds, call, check_slots, iteration_flow
from .layout import (campaign_dir, campaign_lock, iteration_dir, last_finished_iteration, write_json_atomic)
from .report import REPORT_DIR, publish_report
from .summary import table

TRAINING_STEPS = ("sft", "train_reward_models", "train_policy", "ppo", "gatt")
STEPS = ("sft", "seed_pairs", "collect_pairs", "annotate", "train_reward_models", "eval_reward_models",
         "search_temperature", "rejection_sample", "train_policy", "ppo", "gatt", "evaluate")


def check_fault(spec: str | None) -> None:
    fault = steps.Fault.parse(spec)
    if fault is None:
        return
    if fault.step not in STEPS:
        raise ConfigError("debug.fail_at", f"unknown step {fault.step!r}; one of {', '.join(STEPS)}")
    if fault.after_steps is not None and fault.step not in TRAINING_STEPS:
        raise ConfigError("debug.fail_at", f"{fault.step} has no training steps to count; use "
                                           f"debug.fail_at={fault.step} (fail at its start) or a training step "
                                           f"({', '.join(TRAINING_STEPS)})")


def open_tracking(cfg, home: Path) -> TrackingIds:
    """The campaign's experiment and run (found again on reruns), with the resolved config attached."""
    root = Path(cfg.campaign.root).resolve()
    uri = mlt.tracking_uri(cfg.tracking.uri, root)
    artifacts = Path(cfg.tracking.artifact_root) if cfg.tracking.artifact_root else root / "mlartifacts"
    experiment = mlt.experiment_id(uri, cfg.tracking.experiment or cfg.campaign.name, artifacts)
    run_id = mlt.find_or_create_run(uri, experiment, "campaign", {mlt.KIND: "campaign", mlt.CAMPAIGN: cfg.campaign.name})
    mlt.log_params(uri, run_id, to_dict(cfg) | {"code_version": code_version()})
    mlt.log_outputs(uri, run_id, home, [home / "config.yaml"])
    return TrackingIds(uri, experiment, run_id)


def iteration_zero(cfg, ids: TrackingIds, fault: steps.Fault | None) -> CampaignState:
    """SFT of the base model and the RMs' seed pairs."""
    here = iteration_dir(cfg, 0)
    run = mlt.RECORDER.submit(mlt.iteration_run, ids.uri, ids.experiment_id, cfg.campaign.name, ids.campaign_run_id, 0)
    t = mlt.Tracking(ids.uri, ids.experiment_id, cfg.campaign.name, run, 0)
    sft = call(steps.sft, [here / "sft"], model=cfg.model, data=cfg.data, config=cfg.sft, out_dir=str(here / "sft"),
               tracking=t, fault=fault)
    seed = call(steps.seed_pairs, [here / "seed_pairs"], reward=cfg.reward, out_dir=str(here / "seed_pairs"),
                tracking=t, fault=fault)
    mlt.RECORDER.submit(_record_zero, ids, t, cfg.campaign.name, sft, cfg.tracking.register_models)
    return CampaignState(sft=sft, seed=seed, policy=sft)


def _record_zero(ids: TrackingIds, t: mlt.Tracking, campaign: str, sft: dict, register: bool) -> None:
    if register:
        mlt.register(ids.uri, f"{campaign}-policy", Path(sft["path"]), t.parent_run_id, 0)
    mlt.finish_run(ids.uri, t.parent_run_id)


@flow(name="rlhf-campaign", flow_run_name="{campaign_name}")
def campaign_flow(config: dict, campaign_name: str, upto: int | None = None) -> dict:
    """SFT -> RLHF-V1 -> ... -> RLHF-V<upto> (default ``campaign.iterations``); writes and returns the
    campaign's ``summary.json``."""
    cfg = config_from_dict(config)
    resolved = to_dict(cfg)
    check_slots(cfg)
    check_fault(cfg.debug.fail_at)
    home, last = campaign_dir(cfg), upto or cfg.campaign.iterations
    # MLflow writes run on the tracking thread, overlapping the steps and the next iterations; flushed
    # before the report, and on failure (flushed())
    with campaign_lock(home), mlt.flushed():
        # 0. The resolved config (what `rlhf resume` reruns) and the campaign's MLflow run.
        _write_config(cfg, home)
        ids = open_tracking(cfg, home)
        fault = steps.Fault.parse(cfg.debug.fail_at)
        # 1. Iteration 0: SFT and the seed pairs.
        state = iteration_zero(cfg, ids, fault)
        summary = {"campaign": cfg.campaign.name, "experiment": cfg.tracking.experiment or cfg.campaign.name,
                   "code_version": code_version(), "campaign_dir": str(home), "tracking_uri": ids.uri,
                   "mlflow_run_id": ids.campaign_run_id, "config": resolved,
                   "sft": {"policy_path": state.sft["path"], "metrics": state.sft["metrics"]}, "iterations": []}
        # 2. RLHF-V1..V<last>, each a subflow; the summary is rewritten after each.
        for n in range(1, last + 1):
            out = iteration_flow(config=resolved, iteration=n, state=state.__dict__, ids=ids.__dict__,
                                 campaign_name=cfg.campaign.name, fault=cfg.debug.fail_at)
            state = CampaignState(**out["state"])
            summary["iterations"].append(out["entry"])
            write_json_atomic(home / "summary.json", summary)
        if summary["iterations"]:
            summary["report"] = str(home / REPORT_DIR / "report.md")
        write_json_atomic(home / "summary.json", summary)
        mlt.RECORDER.flush()  # every iteration's records are in MLflow before the report is attached
        mlt.log_outputs(ids.uri, ids.campaign_run_id, home, [home / "summary.json"])
        if summary["iterations"]:
            report(str(home))
        mlt.finish_run(ids.uri, ids.campaign_run_id)
    return summary


@task(name="report", task_run_name="report")
def report(home: str) -> str:
    """The campaign report (rebuilt every run: it is cheap and reads only finished outputs)."""
    return str(publish_report(Path(home)))


def _write_config(cfg, home: Path) -> None:
    tmp = home / ".config.yaml.tmp"
    tmp.write_text(to_yaml(cfg))
    tmp.replace(home / "config.yaml")


def run_campaign(cfg, upto: int | None = None) -> dict:
    """Run (or rerun, or resume) the campaign ``cfg`` describes, up to iteration ``upto``."""
    with ephemeral_server_settings():
        return campaign_flow(config=to_dict(cfg), campaign_name=cfg.campaign.name, upto=upto)


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


def stored_config(root: str, name: str):
    """The resolved config a campaign last ran with, without its fault switch (``rlhf resume``)."""
    path = Path(root).resolve() / name / "config.yaml"
    if not path.is_file():
        raise ConfigError("campaign.name", f"no campaign {name!r} under {Path(root).resolve()} (no {path}); "
                                           "start it with `rlhf run campaign.name=...`")
    import yaml

    cfg = config_from_dict(yaml.safe_load(path.read_text()))
    return replace(cfg, debug=replace(cfg.debug, fail_at=None))


@flow(name="rlhf-next-iteration")
def next_iteration_flow(overrides: list[str]) -> dict:
    """The deployment ``rlhf serve`` schedules: the campaign's next iteration (1 + the last one whose
    evaluation finished), with everything before it cached. Composes its config in the flow body, so
    each scheduled run picks up the overrides it was deployed with."""
    cfg = compose_config(overrides)
    upto = last_finished_iteration(campaign_dir(cfg)) + 1
    return campaign_flow(config=to_dict(cfg), campaign_name=cfg.campaign.name, upto=upto)


def end_of_run_report(summary: dict) -> str:
    """The per-iteration table and where to look next."""
    home = summary["campaign_dir"]
    return (f"\n{table(summary)}\n\ncampaign directory: {home}\nsummary: {home}/summary.json\n"
            f"report: {summary.get('report', '-')} (and report.html beside it)\n"
            f"MLflow: `rlhf ui campaign.root={Path(home).parent}` (experiment {summary['experiment']!r})")
