"""The RLHF-Vn iteration as one Prefect flow (docs/design.md#the-iteration-dag)::

    collect_pairs -> annotate -> train_reward_models -> eval_reward_models (when configured),
                                        |                ablate_reward_models (reward.ablate)
                 search_temperature <---+
                        |
                 rejection_sample (pool: best of all iterations from rejection.pool_from) -> train_policy
                        |                  gatt_dialogues (gatt.mix_into=pool) ------------------^  |
                        |        ppo (campaign.ppo_at) -> gatt (campaign.gatt_from; or gatt_adherence) -> evaluate
                        |                                            | (the teacher)
                 distill (rejection.student) ---------------> evaluate_student

Every step is a task of ``rlhf.tasks.steps``; this module only wires them: which output feeds which
step and what the iteration carries forward (its labelled pairs, its candidates for the pool, its
policy). Where each step writes is its output contract's business (``rlhf.core.steps.outputs``).
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from prefect import flow, pause_flow_run
from prefect.futures import PrefectTaskRunFuture
from prefect.input import RunInput
from prefect.states import State
from prefect.utilities.annotations import quote

from rlhf.core.annotators import AnnotatorConfig
from rlhf.core.errors import ConfigError
from rlhf.core.shards import Shard
from rlhf.core.training import raise_if_interrupted
from rlhf.record.layout import iteration_dir
from rlhf.record.report import REPORT_DIR, plot_win_rates
from rlhf.record.summary import iteration_entry, iteration_markdown, progression_metrics
from rlhf.storage import campaign_location, check_root, fetch_ref, finished, iteration_location, join
from rlhf.tasks import steps
from rlhf.tracking import (
    RECORDER,
    Tracking,
    check_store,
    fail_step,
    finish_run,
    is_remote,
    iteration_run,
    log_file,
    log_metrics_once,
    record_step,
    register,
    run_link,
    start_step,
)

from .config import OrchestrationConfig, RootConfig, config_from_dict, ppo_eval_prompts
from .fanout import check_reachable, check_resources, shard_resources


@dataclass
class CampaignState:
    """What one iteration hands the next: step references (``rlhf.tasks.steps.Ref``)."""

    sft: dict
    seed: dict
    policy: dict  # the latest policy (SFT before V1)
    previous: dict | None = None  # the policy before it (None before V2: the base model came before SFT)
    student: dict | None = None  # the distilled student (rejection.student) after the latest iteration
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


def call(task, tracking: Tracking, retries: OrchestrationConfig, after: list[Finished] | tuple = (), **params):
    """Run ``task`` and record it in its MLflow run (on the tracking thread, overlapping what comes next):
    a RUNNING run while a step computes, then its params, metrics and artifacts, or FAILED. Failures on
    I/O are retried as ``orchestration.io_retries`` / ``retry_delay_seconds`` say. ``after``: the states of
    the steps whose outputs ``params`` carry (the edges Prefect draws; see :class:`Steps`).

    A cached result is trusted only if its outputs are on disk as their manifests recorded them, under
    the result's key: an output deleted, truncated or edited by hand, or replaced by a run with another
    config, is computed again (a log line says why)."""
    return _call(task, tracking, retries, after, **params)[0]


def _call(task, tracking: Tracking, retries: OrchestrationConfig, after, **params) -> tuple[dict, State]:
    raise_if_interrupted()  # a Ctrl-C or SIGTERM whose exception a finalizer dropped stops the run here
    options = {"retries": retries.io_retries, "retry_delay_seconds": retries.retry_delay_seconds}
    missing = [d for d in steps.output_dirs(task.name, params) if not finished(d)]
    # quoted: Prefect neither walks the inputs for edges (``after`` declares them) nor copies them
    inputs = {name: quote(value) for name, value in params.items()}
    started = time.time()
    if missing:
        RECORDER.submit(start_step, tracking, task.name, started)
    try:
        state = task.with_options(**options, **({"refresh_cache": True} if missing else {}))(
            **inputs, wait_for=list(after), return_state=True)
        result = state.result()
        if not missing and (problem := steps.untrusted(result)):
            log.info("%s: the cached result is not trusted (%s); computing it again", task.name, problem)
            RECORDER.submit(start_step, tracking, task.name, started)
            state = task.with_options(**options, refresh_cache=True)(**inputs, wait_for=list(after), return_state=True)
            result = state.result()
    except BaseException:
        RECORDER.submit(fail_step, tracking, task.name, started, time.time())
        raise
    outputs = {task.name: result} if "path" in result else result
    RECORDER.submit(record_step, tracking, task.name, steps.tracked_params(task.name, params), outputs, started,
                    time.time())
    return result, state


class Steps:
    """The steps of one flow run: ``run(task, **params)`` is :func:`call` with the run's common arguments,
    and tells Prefect exactly the edges the data makes: the earlier steps of this flow run whose results
    ``params`` carry. (Prefect's own inference matches plain dicts by ``id()``: recycled addresses and
    shared values drew false edges; the iteration graph had 17 edges, 6 of them data nobody passed.)"""

    def __init__(self, tracking: Tracking, retries: OrchestrationConfig, **common) -> None:
        self.tracking, self.retries, self.common = tracking, retries, common
        self.done: list[tuple[object, State]] = []

    def run(self, task, **params) -> dict:
        after = [state for result, state in self.done if _carries(params, result)]
        result, state = _call(task, self.tracking, self.retries, after, **self.common, **params)
        self.done.append((result, Finished(state)))
        return result

    def map(self, task, count: int, **params) -> list[dict]:
        """``count`` shards of a shard task (``rlhf.tasks.steps.shard_task``) submitted at once to the flow's
        task runner (``orchestration.task_runner``), each holding one shard's resources on Ray; their
        results in shard order. Every shard is waited for before a failure is raised, so the shards that
        finished are cached and a rerun computes only the failed ones. A shard's cached result is trusted as
        :func:`call`'s is. Shards are not tracked in MLflow: the step that merges them is."""
        after = [state for result, state in self.done if _carries(params, result)]
        options = {"retries": self.retries.io_retries, "retry_delay_seconds": self.retries.retry_delay_seconds}
        check_resources(self.retries)
        submitted = []
        with shard_resources(self.retries):
            for index in range(count):
                shard_params = {**self.common, **params, "shard": Shard(index, count)}
                missing = [d for d in steps.output_dirs(task.name, shard_params) if not finished(d)]
                # quoted as in call(); not for Ray or Dask, whose submit rebuilds the annotations as plain tuples
                inputs = {name: quote(value) if self.retries.task_runner == "thread" else value
                          for name, value in shard_params.items()}
                refresh = {"refresh_cache": True} if missing else {}
                submitted.append((inputs, task.with_options(**options, **refresh).submit(**inputs, wait_for=after)))
        for _, future in submitted:
            future.wait()
        for _, future in submitted:
            future.result()  # the first failure, raised once every shard has ended
        results = []
        for inputs, future in submitted:
            state, result = future.state, future.result()
            if problem := steps.untrusted(result):
                log.info("%s: the cached result is not trusted (%s); computing it again", task.name, problem)
                state = task.with_options(**options, refresh_cache=True)(**inputs, wait_for=after, return_state=True)
                result = state.result()
            self.done.append((result, Finished(state)))
            results.append(result)
        return results

    def sharded(self, task, shard_task, count: int, shard_params: dict, **params) -> dict:
        """The step ``task``, in ``count`` shards (``shard_task``, which takes ``shard_params``) merged by
        ``task``, or in one piece when ``count`` is 1 (docs/design.md#fan-out)."""
        if count == 1:
            return self.run(task, **shard_params, **params)
        return self.run(task, **shard_params, **params, shards=self.map(shard_task, count, **shard_params))


class Finished(PrefectTaskRunFuture):
    """A finished run as an explicit upstream (``wait_for``): Prefect draws its edge from the task run id
    and walks nothing else (it walks a State field by field, its data included, back into its id()
    matching). Works for a subflow's state too (its parent task run)."""

    def __init__(self, state: State) -> None:
        super().__init__(state.state_details.task_run_id)
        self._final_state = state

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self, timeout: float | None = None, raise_on_failure: bool = True):
        return self._final_state.result(raise_on_failure=raise_on_failure)

    def add_done_callback(self, fn) -> None:
        fn(self)


def _carries(value, result) -> bool:
    """Whether ``value`` is ``result`` or holds it (in dicts, lists and tuples)."""
    if value is result:
        return True
    if isinstance(value, dict):
        return any(_carries(v, result) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_carries(v, result) for v in value)
    return False


# Config sections about how a campaign is run, not what an iteration computes: left out of the iteration
# run's params (the campaign run has them), so resuming without debug.fail_at, or a moved campaign.root,
# logs into the same iteration run. What campaign.* means for an iteration is in iteration.*.
NOT_COMPUTED = ("campaign", "tracking", "orchestration", "debug", "io")


def iteration_params(cfg: RootConfig, resolved: dict, iteration: int) -> dict:
    """The iteration run's params: the resolved config's sections that decide what it computes, and what
    the campaign's settings mean for this iteration (whether PPO and Ghost Attention run, where its new
    prompts start), so comparing iteration runs in MLflow shows what differed."""
    computed = {key: value for key, value in resolved.items() if key not in NOT_COMPUTED}
    if iteration == 0:
        return computed | {"iteration": {"number": 0}}
    return computed | {"iteration": {
        "number": iteration, "runs_ppo": runs_ppo(cfg, iteration), "runs_gatt": runs_gatt(cfg, iteration),
        "collect_offset": collect_offset(cfg, iteration)}}


def variant_model(cfg: RootConfig, carried: CampaignState, name: str) -> dict:
    """The model a ``collect.variants`` entry names, as a step reference (or ``{"path": ...}`` for a model no
    step wrote): policy, previous (the base model before V2), sft, base, or a model path / hub id."""
    base = {"path": cfg.model.name_or_path}
    named = {"policy": carried.policy, "previous": carried.previous or base, "sft": carried.sft, "base": base}
    return named.get(name, {"path": name})


def pool_history(cfg: RootConfig, iteration: int, candidates: list) -> list:
    """The earlier iterations' candidates the pool chooses among besides this iteration's: all of them from
    ``rejection.pool_from`` on, none before (the paper's schedule: the latest round's samples only up to V2)."""
    return list(candidates) if iteration >= cfg.rejection.pool_from else []


def collect_offset(cfg: RootConfig, iteration: int) -> int:
    """Where this iteration's new prompts start: after the rejection-sampling prompts and every earlier
    iteration's new ones (the paper's weekly batches)."""
    return cfg.prompts.offset + cfg.rejection.n_prompts + (iteration - 1) * cfg.collect.n_prompts


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

        FileAnnotator(annotator.export_path).export(read_pairs(fetch_ref(pairs)["files"]["pairs"]),
                                                    annotator.export_path)
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
                          track_ids.campaign_run_id, iteration, iteration_params(cfg, config, iteration))
    tracking = Tracking(track_ids.uri, track_ids.experiment_id, campaign_name, run, iteration)
    flow_steps = Steps(tracking, cfg.orchestration, here=str(iteration_location(cfg, iteration)),
                       fault=steps.Fault.parse(fault))
    step, shards = flow_steps.run, cfg.orchestration.shards
    rs_prompts = replace(cfg.prompts, n=cfg.rejection.n_prompts)
    new_prompts = replace(cfg.prompts, n=cfg.collect.n_prompts, offset=collect_offset(cfg, iteration),
                          unsafe_share=cfg.prompts.unsafe_share if cfg.collect.unsafe_share is None
                          else cfg.collect.unsafe_share)
    refs: dict = {}

    # 1. Pairs from the two models of collect.variants (default the current policy twice), labelled (the
    #    sampling steps in orchestration.shards shards each).
    first, second = (variant_model(cfg, carried, name) for name in cfg.collect.variants)
    refs["collect_pairs"] = flow_steps.sharded(
        steps.collect_pairs, steps.collect_pairs_shard, shards, dict(
            policy=first, model=cfg.model, prompts=new_prompts, sampling=cfg.sampling,
            temperatures=cfg.collect.temperatures, second=None if second["path"] == first["path"] else second,
            variants=list(cfg.collect.variants)), iteration=iteration)
    annotator = annotator_for(cfg, iteration, here, refs["collect_pairs"])
    # a person's labels are one file: only the simulated rater's labelling is sharded
    refs["annotate"] = flow_steps.sharded(steps.annotate, steps.annotate_shard,
                                          shards if annotator.name == "simulated" else 1,
                                          dict(pairs=refs["collect_pairs"], annotator=annotator))
    labelled = carried.labelled + [refs["annotate"]]
    # 2. Reward models on the seed pairs + every labelled batch so far, from the SFT checkpoint.
    rms = refs["train_reward_models"] = step(steps.train_reward_models, init=carried.sft, model=cfg.model,
                                             reward=cfg.reward, seed=carried.seed, labelled=labelled,
                                             launch=cfg.launch.for_step("train_reward_models"))
    if cfg.reward.eval_data or cfg.reward.n_eval_synthetic:  # beside the labelled pairs' Table 8, when configured
        refs["eval_reward_models"] = step(steps.eval_reward_models, rms=rms, model=cfg.model, reward=cfg.reward)
    if runs_ablation(cfg, iteration):  # Table 28 on this campaign's SFT model and labelled pairs
        refs["ablate_reward_models"] = step(steps.ablate_reward_models, init=carried.sft, model=cfg.model,
                                            reward=cfg.reward, seed=carried.seed, labelled=labelled)
    # 3. Temperature search, then rejection sampling at the chosen temperature into the pool.
    sampling = {"model": cfg.model, "sampling": cfg.sampling, "rejection": cfg.rejection, "scorer": cfg.scorer}
    refs["search_temperature"] = flow_steps.sharded(steps.search_temperature, steps.search_temperature_shard, shards,
                                                    dict(policy=carried.policy, rms=rms, prompts=rs_prompts,
                                                         **sampling))
    refs["rejection_sample"] = flow_steps.sharded(
        steps.rejection_sample, steps.rejection_sample_shard, shards,
        dict(policy=carried.policy, rms=rms, search=refs["search_temperature"], prompts=rs_prompts, **sampling),
        previous=pool_history(cfg, iteration, carried.candidates), iteration=iteration)
    # 4. The new policy: fine-tuned on the pool (with gatt.mix_into=pool, and on GAtt dialogues sampled from the
    #    policy the iteration starts from, as the paper mixed them into the RLHF data).
    mixed = runs_gatt(cfg, iteration) and cfg.gatt.mix_into == "pool"
    if mixed:
        refs["gatt_dialogues"] = step(steps.gatt_dialogues, policy=carried.policy, model=cfg.model, config=cfg.gatt,
                                      sampling=cfg.sampling)
    policy = refs["train_policy"] = step(steps.train_policy, policy=carried.policy, pool=refs["rejection_sample"],
                                         model=cfg.model, config=cfg.train_policy,
                                         launch=cfg.launch.for_step("train_policy"), gatt=refs.get("gatt_dialogues"))
    # 4b. Distillation (rejection.student): the student learns from the same pool; the policy stays the teacher.
    if cfg.rejection.student:
        refs["distill"] = step(steps.distill, student=carried.student, initial=cfg.rejection.student,
                               pool=refs["rejection_sample"], model=cfg.model, config=cfg.train_policy,
                               launch=cfg.launch.for_step("train_policy"))  # the same fine-tune, so its launch
    # 5. PPO on the new policy (campaign.ppo_at), KL-anchored to it; its output becomes the iteration's policy.
    if runs_ppo(cfg, iteration):
        policy = refs["ppo"] = step(steps.ppo, policy=policy, rms=rms, model=cfg.model,
                                    prompts=replace(cfg.prompts, n=cfg.ppo.n_prompts),
                                    eval_prompts=ppo_eval_prompts(cfg), sampling=cfg.sampling, scorer=cfg.scorer,
                                    config=cfg.ppo, launch=cfg.launch.for_step("ppo"))
    # 6. Ghost Attention from campaign.gatt_from on: the policy learns to keep the system instruction (in a
    #    fine-tune of its own; mixed into the pool, only its adherence is measured here).
    if mixed:
        refs["gatt_adherence"] = step(steps.gatt_adherence, policy=policy, dialogues=refs["gatt_dialogues"],
                                      model=cfg.model, config=cfg.gatt, sampling=cfg.sampling)
    elif runs_gatt(cfg, iteration):
        policy = refs["gatt"] = step(steps.gatt, policy=policy, model=cfg.model, config=cfg.gatt,
                                     train=cfg.gatt.train, sampling=cfg.sampling, launch=cfg.launch.for_step("gatt"))
    # 7. Win rates against the SFT model, the previous policy and any fixed references (eval.references).
    baselines = {"sft": carried.sft, "previous": carried.policy, **reference_refs(cfg)}
    refs["evaluate"] = flow_steps.sharded(steps.evaluate, steps.evaluate_shard, shards, dict(
        policy=policy, baselines=baselines, rms=rms, model=cfg.model, sampling=cfg.sampling, scorer=cfg.scorer,
        config=cfg.eval))

    if "distill" in refs:  # the student judged as the policy is: against the SFT model and its teacher
        refs["evaluate_student"] = step(steps.evaluate_student, student=refs["distill"],
                                        baselines={"sft": carried.sft, "teacher": policy}, rms=rms, model=cfg.model,
                                        sampling=cfg.sampling, scorer=cfg.scorer, config=cfg.eval)

    entry = iteration_entry(iteration, refs, tracking.parent_run_id)  # created on the tracking thread long since
    publish_results(cfg, entry, track_ids)
    RECORDER.submit(record, track_ids, tracking, entry, refs, policy, cfg.tracking.register_models, campaign_name)
    carried_out = CampaignState(sft=carried.sft, seed=carried.seed, policy=policy, previous=carried.policy,
                                student=refs.get("distill"), labelled=labelled,
                                candidates=carried.candidates + [refs["rejection_sample"]])
    return {"entry": entry, "state": carried_out.__dict__}


# A task runner that ships tasks to other processes (Ray) sends the running flow along, in the context its
# tasks are run in, with cloudpickle. That pickles a function by value unless the module attribute of its
# name *is* the function -- here the name holds the Flow -- and by value the function drags the module's
# globals with it (the tracking thread's locks, which cannot be pickled). Under an alias of its own it goes
# by reference: the worker imports this module.
_iteration_flow_fn = iteration_flow.fn
_iteration_flow_fn.__qualname__ = "_iteration_flow_fn"


def publish_results(cfg: RootConfig, entry: dict, ids: TrackingIds) -> None:
    """The iteration's results as a Prefect artifact of its flow run: a table, and where to read more (its
    MLflow run, the campaign report). Keyed per campaign and iteration, so reruns show as its versions."""
    from prefect.artifacts import create_markdown_artifact

    home = campaign_location(cfg)
    link = run_link(ids.uri, ids.experiment_id, entry["mlflow_run_id"])
    where = f"MLflow run: [{link}]({link})" + ("" if is_remote(ids.uri) else
                                              f" (start the UI with `rlhf ui campaign.root={cfg.campaign.root}`)")
    create_markdown_artifact(
        key=artifact_key(cfg.campaign.name, entry["iteration"]),
        description=f"{cfg.campaign.name} RLHF-V{entry['iteration']}: results",
        markdown="\n\n".join([iteration_markdown(entry), where, "Campaign report (rebuilt when the campaign run "
                               f"ends): `{join(home, REPORT_DIR, 'report.html')}`"]))


def artifact_key(campaign: str, iteration: int | None) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) for a campaign's iteration, or for
    the campaign itself (``iteration=None``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", campaign.lower()).strip("-") or "campaign"
    return f"{slug}-campaign" if iteration is None else f"{slug}-rlhf-v{iteration}"


def record(ids: TrackingIds, tracking: Tracking, entry: dict, refs: dict, policy: dict, register_models: bool,
           campaign: str) -> None:
    """Progression metrics on the campaign and iteration runs (``step=iteration``), the iteration's win
    rates with their 95 % CIs as a plot (MLflow's charts draw no bands), the models in the registry, and the
    iteration run closed."""
    metrics = progression_metrics(entry)
    for run in (ids.campaign_run_id, tracking.parent_run_id):
        log_metrics_once(tracking.uri, run, metrics, step=tracking.iteration)
    with tempfile.TemporaryDirectory() as tmp:
        plot_win_rates([entry], Path(tmp) / "win_rates.png")
        log_file(tracking.uri, tracking.parent_run_id, Path(tmp) / "win_rates.png")
    if register_models:
        register(tracking.uri, f"{campaign}-policy", policy, tracking.parent_run_id, tracking.iteration)
        for name, ref in refs["train_reward_models"].items():
            register(tracking.uri, f"{campaign}-rm-{name}", ref, tracking.parent_run_id, tracking.iteration)
        if "distill" in refs:
            register(tracking.uri, f"{campaign}-student", refs["distill"], tracking.parent_run_id, tracking.iteration)
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


def runs_ablation(cfg: RootConfig, iteration: int) -> bool:
    at = cfg.campaign.ablate_at
    return cfg.reward.ablate and (at is None or iteration in at)


def runs_gatt(cfg: RootConfig, iteration: int) -> bool:
    return cfg.campaign.gatt_from is not None and iteration >= cfg.campaign.gatt_from


def check_slots(cfg: RootConfig) -> None:
    """Config mistakes the DAG would meet late, found before anything runs (among them a campaign root on
    object storage, a task runner's address or a tracking store that does not answer)."""
    reference_refs(cfg)
    check_root(cfg.campaign.root)
    check_reachable(cfg.orchestration)
    if cfg.tracking.uri:  # a server or database that is not there (the default SQLite file always is)
        check_store(cfg.tracking.uri)
    cfg.ppo.validate()
    outside = [n for n in cfg.campaign.ppo_iterations() if not 1 <= n <= cfg.campaign.iterations]
    if cfg.ppo.enabled and outside:
        raise ConfigError("campaign.ppo_at", f"iterations {outside} are outside 1..{cfg.campaign.iterations} "
                                             "(campaign.iterations)")
    outside = [n for n in cfg.campaign.ablate_at or [] if not 1 <= n <= cfg.campaign.iterations]
    if cfg.reward.ablate and outside:
        raise ConfigError("campaign.ablate_at", f"iterations {outside} are outside 1..{cfg.campaign.iterations} "
                                                "(campaign.iterations)")
    if "pairwise" in cfg.eval.judges:  # an endpoint or a local model, before hours of training
        cfg.eval.pairwise.validate()
    cfg.gatt.validate()
    if cfg.campaign.gatt_from is not None and not 1 <= cfg.campaign.gatt_from <= cfg.campaign.iterations:
        raise ConfigError("campaign.gatt_from", f"{cfg.campaign.gatt_from} is outside 1..{cfg.campaign.iterations} "
                                                "(campaign.iterations): no iteration would run Ghost Attention")
