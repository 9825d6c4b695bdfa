"""One Prefect task per step of an RLHF iteration: thin adapters over ``rlhf.core.steps``.

Each task takes config dataclasses, the iteration's directory (``here``) and the *references* of its
upstream outputs, runs the core step (which writes its output directory, named by the step's contract
in ``rlhf.core.steps.outputs``, atomically with a ``manifest.json``) and returns a reference to it::

    {"step": name, "path": "/abs/out/dir", "key": "<manifest key>", "metrics": {...},
     "files": {"<name>": "/abs/out/dir/<file>", ...}}

Tracking is not done here: the flow that calls a task (``rlhf.flows.iteration.call``) records it in
MLflow on the tracking thread (``rlhf.tracking.Recorder``), so it overlaps the next step's compute.

Caching (docs/design.md#caching-and-resume): the Prefect cache key hashes the task's name, its
parameters (config sections and upstream references, whose ``key`` pins their own inputs), the core's
code version and this module's source -- but not the fault switch, which changes when a run stops, not
what it produces. So a rerun of a campaign finds every finished step Cached, and a changed config
reruns only what depends on it. A failed training step resumes from its checkpoints in
``.<step>.work`` (the core step does that). Retries: only on I/O errors (``OSError``), as many as the
flow asks for (``orchestration.io_retries``); a bug or bad data fails at once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from prefect import task

from rlhf import storage
from rlhf.core.annotators import AnnotatorConfig
from rlhf.core.artifacts import code_version, source_digest, stable_hash, verify_output
from rlhf.core.digests import with_input_digests
from rlhf.core.errors import ConfigError
from rlhf.core.evaluation import EvalConfig
from rlhf.core.gatt import GAttConfig
from rlhf.core.launch import LaunchConfig
from rlhf.core.models import ModelConfig
from rlhf.core.ppo import PPOConfig
from rlhf.core.prompt_sets import PromptsConfig
from rlhf.core.rejection import RejectionConfig
from rlhf.core.reward.train import RewardSection, RMDataConfig
from rlhf.core.sampling import SamplingConfig
from rlhf.core.scorers import ScorerConfig
from rlhf.core.sft import SFTConfig
from rlhf.core.shards import Shard
from rlhf.core.steps.outputs import (
    ANNOTATE,
    COLLECT_PAIRS,
    DISTILL,
    EVALUATE,
    EVALUATE_STUDENT,
    GATT,
    GATT_ADHERENCE,
    GATT_DIALOGUES,
    PPO,
    REJECTION_SAMPLE,
    RM_ABLATION,
    SEARCH_TEMPERATURE,
    SEED_PAIRS,
    SFT,
    TRAIN_POLICY,
    Outputs,
    answers_cache,
    rm_eval_outputs,
    rm_names,
    rm_outputs,
    shard_outputs,
)
from rlhf.core.steps.sft import DataConfig
from rlhf.core.training import InjectedFault

Ref = dict  # {"step", "path", "key", "metrics", "files"}: what a task returns
NOT_KEYED = {"fault"}  # parameters left out of the cache key
TASK_CODE = source_digest(Path(__file__))  # this module decides what reaches the core: part of every key


@dataclass(frozen=True)
class Fault:
    """``debug.fail_at``: raise at the start of ``step`` or, with ``after_steps``, after that many of its
    optimizer steps (the checkpoints written so far stay; the rerun resumes from them)."""

    step: str
    after_steps: int | None = None

    @classmethod
    def parse(cls, spec: str | None) -> "Fault | None":
        if not spec:
            return None
        step, _, after = spec.partition(":")
        if after and not after.isdigit():
            raise ConfigError("debug.fail_at", f"{spec!r}: after the ':' comes how many optimizer steps to run before "
                                               "failing, a whole number >= 0 (e.g. debug.fail_at=sft:2)")
        return cls(step, int(after) if after else None)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def _is_ref(value) -> bool:
    return isinstance(value, dict) and {"step", "path", "key"} <= value.keys()


def _identity(value, field: str = ""):
    """What a parameter contributes to a cache key: config values as they are, and after every value
    that names an existing local file or directory, that input's content digest (so editing a data file
    in place reruns what reads it); an upstream reference by its output's path and key only (the key
    pins its content; its metrics describe the run, its files follow from its path)."""
    return with_input_digests(value, field, lambda v: {"path": v["path"], "key": v["key"]} if _is_ref(v) else None)


def _holds_refs(value) -> bool:
    if isinstance(value, dict):
        return _is_ref(value) or (bool(value) and all(map(_holds_refs, value.values())))
    return isinstance(value, list) and all(map(_holds_refs, value))


def tracked_params(step: str, parameters: dict) -> dict:
    """What a step's MLflow run shows as params: the config sections and values the task was called with
    (``config`` named after the step); upstream references (in the step's manifest), the iteration
    directory and the fault switch are left out."""
    params = {step if name == "config" else name: _plain(value) for name, value in parameters.items()
              if name not in NOT_KEYED | {"here"} and not _holds_refs(value)}
    if isinstance(parameters.get("launch"), LaunchConfig):  # the steps that can run on several processes
        params["world_size"] = parameters["launch"].num_processes
    if step in SHARDED:
        params["shards"] = len(parameters.get("shards") or ()) or 1
    return params


def cache_key(context, parameters: dict) -> str:
    keyed = {k: _identity(v, k) for k, v in parameters.items() if k not in NOT_KEYED}
    return f"{context.task.name}-{stable_hash({'params': keyed, 'code': code_version(), 'task': TASK_CODE})}"


def io_only(task_, task_run, state) -> bool:
    """Retry a failed step only when it failed on I/O (a full disk, a network file system hiccup)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError)


def step_task(name: str):
    """A step's task. Its retries on I/O errors are set by the flow that calls it, from
    ``orchestration.io_retries`` / ``retry_delay_seconds`` (``with_options``); none by default."""
    def decorate(fn):
        return task(placed(name, fn), name=name, task_run_name=name, cache_key_fn=cache_key, persist_result=True,
                    retry_condition_fn=io_only)

    return decorate


def placed(name: str, fn: Callable) -> Callable:
    """The task function ``fn`` for a campaign on object storage (its ``here`` a URL; docs/design.md#object-
    storage): its upstream outputs fetched into this machine's cache (once), an output already finished
    there staged in the working copy (so the step finds it cached), the step run into the working copy, its
    outputs uploaded (``manifest.json`` last), and references naming the URLs returned. A local ``here``:
    ``fn`` as it is. The cache key sees the call's own arguments, so it is the same on every machine."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        params = signature.bind(*args, **kwargs)
        params.apply_defaults()
        params = dict(params.arguments)
        here = params["here"]
        if not storage.is_url(here):
            return fn(**params)
        local = {key: _fetched(value) for key, value in params.items()} | {"here": str(storage.staging(here))}
        for location in output_dirs(name, params):
            storage.stage_finished(str(location))
        result = fn(**local)
        return _published(result, here)

    return run


def _fetched(value):
    """``value`` with every step reference in it made local (:func:`rlhf.storage.fetch_ref`)."""
    if _is_ref(value):
        return storage.fetch_ref(value)
    if isinstance(value, dict):
        return {k: _fetched(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fetched(v) for v in value)
    return value


def _published(result: Ref | dict[str, Ref], here: str) -> Ref | dict[str, Ref]:
    """Upload each output a task wrote into the working copy; its reference, naming the URL."""
    def one(ref: Ref) -> Ref:
        url = storage.join(here, Path(ref["path"]).name)
        storage.publish_output(Path(ref["path"]), url)
        return storage.ref_at(ref, url)

    return one(result) if _is_ref(result) else {name: one(ref) for name, ref in result.items()}


# Shards (docs/design.md#fan-out): the sampling steps below each have a shard task, ``<step>_shard``, that
# computes one shard's rows into ``<step>-shard-<i>-of-<n>``; the step's own task, given the shards'
# references (``shards``), merges them into its usual output instead of computing it.
SHARD_SUFFIX = "_shard"
SHARDED = ("collect_pairs", "annotate", "search_temperature", "rejection_sample", "evaluate")


def shard_task(step: str):
    """A shard task of ``step``: cached like a step task (its key holds the shard), each shard on its own, so
    a failed shard reruns alone; its task run is named after its output (``rejection_sample-shard-1-of-2``)."""
    def decorate(fn):
        return task(placed(step + SHARD_SUFFIX, fn), name=step + SHARD_SUFFIX,
                    task_run_name=step + "-shard-{shard.index}-of-{shard.count}", cache_key_fn=cache_key,
                    persist_result=True, retry_condition_fn=io_only)

    return decorate


def _shard(shard: Shard, step: str, here: str, fault: Fault | None, run: Callable[[Path], dict]) -> Ref:
    contract = shard_outputs(step, shard.index, shard.count)
    return _one(contract.dirname, contract, here, fault, lambda out, f: run(out))


def _rows(shards: list[Ref]) -> list[str]:
    """The shards' rows files, in shard order (what a merging step reads)."""
    return [ref["files"]["rows"] for ref in shards]


def contracts(step: str, parameters: dict) -> list[Outputs]:
    """The output contracts a call of the task ``step`` with ``parameters`` writes (how many RMs depends
    on the config; a shard task's, on its shard)."""
    if step.endswith(SHARD_SUFFIX):
        shard = parameters["shard"]
        return [shard_outputs(step.removesuffix(SHARD_SUFFIX), shard.index, shard.count)]
    if step == "train_reward_models":
        return [rm_outputs(name) for name in rm_names(parameters["reward"].train_safety)]
    if step == "eval_reward_models":
        return [rm_eval_outputs(name) for name in parameters["rms"]]
    return [CONTRACTS[step]]


def output_dirs(step: str, parameters: dict) -> list[Path | str]:
    """Where a call of the task ``step`` writes (each contract's directory in ``parameters["here"]``: a
    folder, or a URL on object storage)."""
    return [storage.join(parameters["here"], contract.dirname) for contract in contracts(step, parameters)]


def untrusted(result: Ref | dict[str, Ref]) -> str | None:
    """Why a task's (cached) result cannot be trusted, or None: each output must still be on disk as its
    manifest recorded it, under the key the result names (another config's rerun may have replaced it,
    a file may have been truncated or edited). On object storage, its manifest must name that key (its
    files are checked against it when a step fetches them)."""
    for ref in ([result] if _is_ref(result) else result.values()):
        if storage.is_url(ref["path"]):
            manifest = storage.remote_manifest(ref["path"])
            problem = ("no finished output there" if manifest is None else
                       "another version of the output is there" if manifest["key"] != ref["key"] else None)
        else:
            _, problem = verify_output(ref["path"], ref["key"])
        if problem:
            return f"{ref['path']}: {problem}"
    return None


def _outputs(step: str, fault: Fault | None,
             body: Callable[[Fault | None], dict[str, tuple[Outputs, Path, dict]]]) -> dict[str, Ref]:
    """Run ``body(fault) -> {name: (contract, out_dir, manifest)}`` and return its outputs' references.
    The fault applies when it names this step (a shard by its directory's name, e.g.
    ``rejection_sample-shard-1-of-2``): at the start, or handed to the body to stop training."""
    mine = fault if fault is not None and fault.step == step else None
    if mine is not None and mine.after_steps is None:
        raise InjectedFault(f"{step}: injected fault (debug.fail_at={step}); rerun without it to continue")
    return {name: {"step": step, "path": str(out_dir), "key": manifest["key"], "metrics": manifest["metrics"],
                   "files": contract.paths(out_dir)}
            for name, (contract, out_dir, manifest) in body(mine).items()}


def _one(step: str, contract: Outputs, here: str, fault: Fault | None,
         run: Callable[[Path, Fault | None], dict]) -> Ref:
    """``_outputs`` for a step with one output: ``run(out_dir, fault) -> manifest``."""
    out_dir = contract.dir(here)
    return _outputs(step, fault, lambda f: {step: (contract, out_dir, run(out_dir, f))})[step]


def _failing(cfg: SFTConfig, fault: Fault | None) -> SFTConfig:
    return replace(cfg, fail_after_steps=fault.after_steps) if fault is not None else cfg


def _model(base: ModelConfig, ref: Ref) -> ModelConfig:
    return replace(base, name_or_path=ref["path"])


def _models(base: ModelConfig, refs: dict[str, Ref]) -> dict[str, ModelConfig]:
    return {name: _model(base, ref) for name, ref in refs.items()}


def scorer_for(base: ScorerConfig, rms: dict[str, Ref]) -> ScorerConfig:
    """The configured scorer with this iteration's RM directories filled in."""
    return replace(base, helpful=rms["helpful"]["path"], safety=rms["safety"]["path"] if "safety" in rms else None)


# --------------------------------------------------------------------------------------------------
# iteration 0


@step_task("sft")
def sft(model: ModelConfig, data: DataConfig, config: SFTConfig, here: str, fault: Fault | None = None,
        launch: LaunchConfig | None = None) -> Ref:
    """SFT of the base model; on ``launch.num_processes`` processes when that is more than one."""
    from rlhf.core.steps.sft import sft_step

    return _one("sft", SFT, here, fault, lambda out, f: sft_step(model, data, _failing(config, f), out,
                                                                  launch=launch))


@step_task("seed_pairs")
def seed_pairs(reward: RewardSection, here: str, fault: Fault | None = None) -> Ref:
    from rlhf.core.steps.pairs import seed_pairs_step

    return _one("seed_pairs", SEED_PAIRS, here, fault, lambda out, f: seed_pairs_step(reward, out))


# --------------------------------------------------------------------------------------------------
# iteration n


@step_task("collect_pairs")
def collect_pairs(policy: Ref, model: ModelConfig, prompts: PromptsConfig, sampling: SamplingConfig,
                  temperatures: list[float], iteration: int, here: str, fault: Fault | None = None,
                  shards: list[Ref] = (), second: Ref | None = None,
                  variants: list[str] = ("policy", "policy")) -> Ref:
    """Two answers per new prompt, answer a from ``policy``, answer b from ``second`` (default the same model);
    ``variants`` name them (``collect.variants``). With ``shards``, merged from the shard tasks' answers."""
    from rlhf.core.steps.rejection import collect_pairs_step

    return _one("collect_pairs", COLLECT_PAIRS, here, fault, lambda out, f: collect_pairs_step(
        _model(model, policy), prompts, sampling, temperatures, iteration, out, _rows(shards),
        _model(model, second) if second else None, variants))


@shard_task("collect_pairs")
def collect_pairs_shard(policy: Ref, model: ModelConfig, prompts: PromptsConfig, sampling: SamplingConfig,
                        temperatures: list[float], shard: Shard, here: str, fault: Fault | None = None,
                        second: Ref | None = None, variants: list[str] = ("policy", "policy")) -> Ref:
    from rlhf.core.steps.rejection import collect_pairs_shard_step

    return _shard(shard, "collect_pairs", here, fault, lambda out: collect_pairs_shard_step(
        _model(model, policy), prompts, sampling, temperatures, shard, out,
        _model(model, second) if second else None, variants))


@step_task("annotate")
def annotate(pairs: Ref, annotator: AnnotatorConfig, here: str, fault: Fault | None = None,
             shards: list[Ref] = ()) -> Ref:
    """The iteration's pairs labelled; with ``shards`` (simulated annotator only), merged from theirs."""
    from rlhf.core.steps.pairs import annotate_step

    return _one("annotate", ANNOTATE, here, fault,
                lambda out, f: annotate_step(pairs["files"]["pairs"], annotator, out, _rows(shards)))


@shard_task("annotate")
def annotate_shard(pairs: Ref, annotator: AnnotatorConfig, shard: Shard, here: str,
                   fault: Fault | None = None) -> Ref:
    from rlhf.core.steps.pairs import annotate_shard_step

    return _shard(shard, "annotate", here, fault,
                  lambda out: annotate_shard_step(pairs["files"]["pairs"], annotator, shard, out))


def rm_data(reward: RewardSection, name: str, seed: Ref, labelled: list[Ref]) -> RMDataConfig:
    """RM ``name``'s pairs: its seed pairs plus every labelled batch so far (§3.2.2: the RMs are retrained
    on all the data at each iteration), each labelled batch read on the RM's axis with the other axis mixed in
    (``reward.<name>.axis``, ``mix``)."""
    files = [seed["files"][name]] + [ref["files"]["pairs"] for ref in labelled]
    return replace(getattr(reward, name), data=files)


@step_task("train_reward_models")
def train_reward_models(init: Ref, model: ModelConfig, reward: RewardSection, seed: Ref, labelled: list[Ref],
                        here: str, fault: Fault | None = None, launch: LaunchConfig | None = None) -> dict[str, Ref]:
    """The Helpfulness and (unless ``reward.train_safety`` is off) Safety RMs, from the SFT checkpoint; each
    on ``launch.num_processes`` processes when that is more than one."""
    from rlhf.core.steps.reward import rm_train_step

    def body(f: Fault | None) -> dict:
        return {name: (rm_outputs(name), rm_outputs(name).dir(here), rm_train_step(
            _model(model, init), rm_data(reward, name, seed, labelled), _failing(reward.train, f),
            rm_outputs(name).dir(here), name=name, launch=launch)) for name in rm_names(reward.train_safety)}

    return _outputs("train_reward_models", fault, body)


@step_task("eval_reward_models")
def eval_reward_models(rms: dict[str, Ref], model: ModelConfig, reward: RewardSection, here: str,
                       fault: Fault | None = None) -> dict[str, Ref]:
    """Each RM's accuracy per preference level on held-out pairs (``reward.eval_data``, or simulated-rater
    pairs on the held-out prompt phrasings)."""
    from rlhf.core.steps.reward import rm_eval_step

    def body(f: Fault | None) -> dict:
        out = {}
        for name, ref in rms.items():
            synthetic = replace(getattr(reward, name), n_synthetic=reward.n_eval_synthetic, data=None)
            out_dir = rm_eval_outputs(name).dir(here)
            out[name] = (rm_eval_outputs(name), out_dir, rm_eval_step(ref["path"], reward.eval_data, out_dir,
                                                              reward.train.eval_batch_size, model.precision,
                                                              synthetic))
        return out

    return _outputs("eval_reward_models", fault, body)


@step_task("ablate_reward_models")
def ablate_reward_models(init: Ref, model: ModelConfig, reward: RewardSection, seed: Ref, labelled: list[Ref],
                         here: str, fault: Fault | None = None) -> Ref:
    """Table 28 (``reward.ablate``): one Helpfulness RM per margin variant from the SFT checkpoint, on the same
    pairs and split as ``train_reward_models``' Helpfulness RM, tested on its held-out labelled pairs."""
    from rlhf.core.steps.reward import rm_ablate_step

    return _one("ablate_reward_models", RM_ABLATION, here, fault, lambda out, f: rm_ablate_step(
        _model(model, init), rm_data(reward, "helpful", seed, labelled), _failing(reward.train, f), out,
        reward.ablation))


@step_task("search_temperature")
def search_temperature(policy: Ref, rms: dict[str, Ref], model: ModelConfig, prompts: PromptsConfig,
                       sampling: SamplingConfig, rejection: RejectionConfig, scorer: ScorerConfig, here: str,
                       fault: Fault | None = None, shards: list[Ref] = ()) -> Ref:
    from rlhf.core.steps.rejection import search_temperature_step

    return _one("search_temperature", SEARCH_TEMPERATURE, here, fault, lambda out, f: search_temperature_step(
        _model(model, policy), prompts, sampling, rejection, scorer_for(scorer, rms), out, _rows(shards)))


@shard_task("search_temperature")
def search_temperature_shard(policy: Ref, rms: dict[str, Ref], model: ModelConfig, prompts: PromptsConfig,
                             sampling: SamplingConfig, rejection: RejectionConfig, scorer: ScorerConfig,
                             shard: Shard, here: str, fault: Fault | None = None) -> Ref:
    from rlhf.core.steps.rejection import search_temperature_shard_step

    return _shard(shard, "search_temperature", here, fault, lambda out: search_temperature_shard_step(
        _model(model, policy), prompts, sampling, rejection, scorer_for(scorer, rms), shard, out))


@step_task("rejection_sample")
def rejection_sample(policy: Ref, rms: dict[str, Ref], search: Ref, previous: list[Ref], model: ModelConfig,
                     prompts: PromptsConfig, sampling: SamplingConfig, rejection: RejectionConfig,
                     scorer: ScorerConfig, iteration: int, here: str, fault: Fault | None = None,
                     shards: list[Ref] = ()) -> Ref:
    """K samples per prompt at the temperature the search chose (with ``shards``: theirs); the pool over all
    iterations."""
    from rlhf.core.steps.rejection import rejection_sample_step

    chosen = replace(sampling, temperature=search["metrics"]["chosen"])
    history = [ref["files"]["candidates"] for ref in previous]
    return _one("rejection_sample", REJECTION_SAMPLE, here, fault, lambda out, f: rejection_sample_step(
        _model(model, policy), prompts, chosen, rejection, scorer_for(scorer, rms), iteration, history, out,
        _rows(shards)))


@shard_task("rejection_sample")
def rejection_sample_shard(policy: Ref, rms: dict[str, Ref], search: Ref, model: ModelConfig,
                           prompts: PromptsConfig, sampling: SamplingConfig, rejection: RejectionConfig,
                           scorer: ScorerConfig, shard: Shard, here: str, fault: Fault | None = None) -> Ref:
    from rlhf.core.steps.rejection import rejection_sample_shard_step

    chosen = replace(sampling, temperature=search["metrics"]["chosen"])
    return _shard(shard, "rejection_sample", here, fault, lambda out: rejection_sample_shard_step(
        _model(model, policy), prompts, chosen, rejection, scorer_for(scorer, rms), shard, out))


@step_task("train_policy")
def train_policy(policy: Ref, pool: Ref, model: ModelConfig, config: SFTConfig, here: str,
                 fault: Fault | None = None, launch: LaunchConfig | None = None, gatt: Ref | None = None) -> Ref:
    """Fine-tune the policy on the pool's best answers (rejection-sampling SFT), and on the GAtt dialogues of
    ``gatt`` when given (gatt.mix_into=pool); on ``launch.num_processes`` processes when that is more than one."""
    extra = [gatt["files"]["rows"]] if gatt else []
    return _fine_tune_on_pool("train_policy", TRAIN_POLICY, _model(model, policy), pool, config, here, fault, launch,
                              extra)


@step_task("distill")
def distill(student: Ref | None, initial: str, pool: Ref, model: ModelConfig, config: SFTConfig, here: str,
            fault: Fault | None = None, launch: LaunchConfig | None = None) -> Ref:
    """Fine-tune the student (``rejection.student``) on the same pool as the policy, from its previous
    iteration's weights (``student``), or from the model ``initial`` names at V1."""
    start = _model(model, student) if student else replace(model, name_or_path=initial)
    return _fine_tune_on_pool("distill", DISTILL, start, pool, config, here, fault, launch)


def _fine_tune_on_pool(step: str, contract: Outputs, start: ModelConfig, pool: Ref, config: SFTConfig, here: str,
                       fault: Fault | None, launch: LaunchConfig | None, extra: list[str] = ()) -> Ref:
    """``start`` fine-tuned on the pool's best answers (and the conversation files ``extra``) with the SFT
    objective (``train_policy``'s settings)."""
    from rlhf.core.steps.sft import sft_step

    data = DataConfig(path=pool["files"]["pool_sft"], extra=list(extra))
    return _one(step, contract, here, fault, lambda out, f: sft_step(start, data, _failing(config, f), out,
                                                                     launch=launch, config_key="train_policy"))


@step_task("ppo")
def ppo(policy: Ref, rms: dict[str, Ref], model: ModelConfig, prompts: PromptsConfig, eval_prompts: PromptsConfig,
        sampling: SamplingConfig, scorer: ScorerConfig, config: PPOConfig, here: str,
        fault: Fault | None = None, launch: LaunchConfig | None = None) -> Ref:
    """PPO of the iteration's policy against its reward models (KL to the pre-PPO policy); on
    ``launch.num_processes`` processes when that is more than one."""
    from rlhf.core.steps.ppo import ppo_step

    return _one("ppo", PPO, here, fault, lambda out, f: ppo_step(
        _model(model, policy), scorer_for(scorer, rms), prompts, eval_prompts, sampling, config, out,
        fail_after_steps=f.after_steps if f is not None else None, launch=launch))


@step_task("gatt")
def gatt(policy: Ref, model: ModelConfig, config: GAttConfig, train: SFTConfig, sampling: SamplingConfig,
         here: str, fault: Fault | None = None, launch: LaunchConfig | None = None) -> Ref:
    """Ghost Attention: dialogues with the instruction on every user turn, SFT on the last answer with the
    instruction in the system message only, adherence per turn before and after; its fine-tune on
    ``launch.num_processes`` processes when that is more than one."""
    from rlhf.core.steps.gatt import gatt_step

    return _one("gatt", GATT, here, fault, lambda out, f: gatt_step(
        _model(model, policy), _gatt_core(config), _failing(train, f), sampling, out, launch=launch))


@step_task("gatt_dialogues")
def gatt_dialogues(policy: Ref, model: ModelConfig, config: GAttConfig, sampling: SamplingConfig, here: str,
                   fault: Fault | None = None) -> Ref:
    """gatt.mix_into=pool: GAtt dialogues sampled from the policy the iteration starts from, for train_policy,
    and that policy's adherence per turn."""
    from rlhf.core.steps.gatt import gatt_dialogues_step

    return _one("gatt_dialogues", GATT_DIALOGUES, here, fault, lambda out, f: gatt_dialogues_step(
        _model(model, policy), _gatt_core(config), sampling, out))


@step_task("gatt_adherence")
def gatt_adherence(policy: Ref, dialogues: Ref, model: ModelConfig, config: GAttConfig, sampling: SamplingConfig,
                   here: str, fault: Fault | None = None) -> Ref:
    """gatt.mix_into=pool: the iteration's final policy's adherence per turn, beside the starting policy's."""
    from rlhf.core.steps.gatt import gatt_adherence_step

    return _one("gatt_adherence", GATT_ADHERENCE, here, fault, lambda out, f: gatt_adherence_step(
        _model(model, policy), dialogues["path"], _gatt_core(config), sampling, out))


def _gatt_core(config) -> GAttConfig:
    """The core's GAttConfig from the flow's gatt section (which adds the fine-tune's ``train``)."""
    return GAttConfig(**{field.name: getattr(config, field.name) for field in dataclasses.fields(GAttConfig)})


@step_task("evaluate")
def evaluate(policy: Ref, baselines: dict[str, Ref], rms: dict[str, Ref], model: ModelConfig,
             sampling: SamplingConfig, scorer: ScorerConfig, config: EvalConfig, here: str,
             fault: Fault | None = None, shards: list[Ref] = ()) -> Ref:
    """Win rates of the new policy against each baseline, judged by the gold rater and the RMs (with
    ``shards``: on their answers and RM scores)."""
    from rlhf.core.steps.evaluate import evaluate_step

    return _one("evaluate", EVALUATE, here, fault, lambda out, f: evaluate_step(
        _model(model, policy), _models(model, baselines), None, sampling, scorer_for(scorer, rms), config, out,
        _rows(shards), answers_cache=answers_cache(here)))


@shard_task("evaluate")
def evaluate_shard(policy: Ref, baselines: dict[str, Ref], rms: dict[str, Ref], model: ModelConfig,
                   sampling: SamplingConfig, scorer: ScorerConfig, config: EvalConfig, shard: Shard, here: str,
                   fault: Fault | None = None) -> Ref:
    from rlhf.core.steps.evaluate import evaluate_shard_step

    return _shard(shard, "evaluate", here, fault, lambda out: evaluate_shard_step(
        _model(model, policy), _models(model, baselines), sampling, scorer_for(scorer, rms), config, shard, out))


@step_task("evaluate_student")
def evaluate_student(student: Ref, baselines: dict[str, Ref], rms: dict[str, Ref], model: ModelConfig,
                     sampling: SamplingConfig, scorer: ScorerConfig, config: EvalConfig, here: str,
                     fault: Fault | None = None) -> Ref:
    """Win rates of the distilled student against each baseline (the SFT model and the teacher), judged as
    the policy's are."""
    from rlhf.core.steps.evaluate import evaluate_step

    return _one("evaluate_student", EVALUATE_STUDENT, here, fault, lambda out, f: evaluate_step(
        _model(model, student), _models(model, baselines), None, sampling, scorer_for(scorer, rms), config, out,
        answers_cache=answers_cache(here)))


CONTRACTS: dict[str, Outputs] = {"sft": SFT, "seed_pairs": SEED_PAIRS, "collect_pairs": COLLECT_PAIRS,
                                 "annotate": ANNOTATE, "search_temperature": SEARCH_TEMPERATURE,
                                 "rejection_sample": REJECTION_SAMPLE, "train_policy": TRAIN_POLICY, "ppo": PPO,
                                 "gatt": GATT, "evaluate": EVALUATE, "ablate_reward_models": RM_ABLATION,
                                 "distill": DISTILL, "evaluate_student": EVALUATE_STUDENT,
                                 "gatt_dialogues": GATT_DIALOGUES, "gatt_adherence": GATT_ADHERENCE}
