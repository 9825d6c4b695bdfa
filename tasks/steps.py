"""One Prefect task per step of an RLHF iteration: thin adapters over ``rlhf_core.steps``.

Each task takes config dataclasses and the *references* of its upstream outputs, runs the core step
(which writes ``<campaign>/iter-<n>/<step>/`` atomically with a ``manifest.json``) and returns a
reference to its output::

    {"step": name, "path": "/abs/out/dir", "key": "<manifest key>", "metrics": {...}}

Tracking is not done here: the flow that calls a task (``flows.iteration.call``) records it in its own
MLflow run nested under the iteration's, on the tracking thread (``tasks.tracking.Recorder``), so it
overlaps the next step's compute, and it records cached steps too if they were never recorded.

Caching (DESIGN.md "Cache keys"): the Prefect cache key hashes the task's name, its parameters (config
sections and upstream references, whose ``key`` pins their own inputs) and the code version -- but not
the tracking ids or the fault switch, which change how a run is observed or interrupted, not what it
produces. So a rerun of a campaign finds every finished step Cached, and a changed config reruns only
what depends on it. A failed training step resumes from its checkpoints in ``.<step>.work`` (the core
step does that). Retries: only on I/O errors (``OSError``); a bug or bad data fails at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from prefect import task

from rlhf_core.annotators import AnnotatorConfig
from rlhf_core.artifacts import code_version, stable_hash
from rlhf_core.evaluation import EvalConfig
from rlhf_core.gatt import GAttConfig
from rlhf_core.models import ModelConfig
from rlhf_core.ppo import PPOConfig
from rlhf_core.prompt_sets import PromptsConfig
from rlhf_core.rejection import RejectionConfig
from rlhf_core.reward.train import RewardSection, RMDataConfig
from rlhf_core.sampling import SamplingConfig
from rlhf_core.scorers import ScorerConfig
from rlhf_core.sft import SFTConfig
from rlhf_core.steps.sft import DataConfig
from rlhf_core.training import InjectedFault

Ref = dict  # {"step", "path", "key", "metrics"}: what a task returns
NOT_KEYED = {"fault"}  # parameters left out of the cache key


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
        return cls(step, int(after) if after else None)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def _identity(value):
    """What a parameter contributes to a cache key: config values as they are; an upstream reference by
    its output's path and key only (its metrics and MLflow run id describe the run, not the output)."""
    if isinstance(value, dict) and {"step", "path", "key"} <= value.keys():
        return {"path": value["path"], "key": value["key"]}
    if isinstance(value, dict):
        return {k: _identity(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_identity(v) for v in value]
    return _plain(value)


def _holds_refs(value) -> bool:
    if isinstance(value, dict):
        return {"step", "path", "key"} <= value.keys() or (bool(value) and all(map(_holds_refs, value.values())))
    return isinstance(value, list) and all(map(_holds_refs, value))


def tracked_params(step: str, parameters: dict) -> dict:
    """What a step's MLflow run shows as params: the config sections and values the task was called with
    (``config`` named after the step); upstream references (in the step's manifest) and the fault switch
    are left out."""
    return {step if name == "config" else name: _plain(value) for name, value in parameters.items()
            if name not in NOT_KEYED and not _holds_refs(value)}


def cache_key(context, parameters: dict) -> str:
    keyed = {k: _identity(v) for k, v in parameters.items() if k not in NOT_KEYED}
    return f"{context.task.name}-{stable_hash({'params': keyed, 'code': code_version()})}"


def io_only(task_, task_run, state) -> bool:
    """Retry a failed step only when it failed on I/O (a full disk, a network file system hiccup)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError)


def step_task(name: str):
    return task(name=name, task_run_name=name, cache_key_fn=cache_key, persist_result=True, retries=2,
                retry_delay_seconds=10, retry_condition_fn=io_only)


def _ref(step: str, manifest: dict, out_dir: Path) -> Ref:
    return {"step": step, "path": str(out_dir), "key": manifest["key"], "metrics": manifest["metrics"]}


def _outputs(step: str, fault: Fault | None,
             body: Callable[[Fault | None], dict[str, tuple[Path, dict]]]) -> dict[str, Ref]:
    """Run ``body(fault) -> {name: (out_dir, manifest)}`` and return its outputs' references. The fault
    applies when it names this step: at the start, or handed to the body to stop training."""
    mine = fault if fault is not None and fault.step == step else None
    if mine is not None and mine.after_steps is None:
        raise InjectedFault(f"{step}: injected fault (debug.fail_at={step}); rerun without it to continue")
    outputs = body(mine)
    return {name: _ref(step, manifest, out_dir) for name, (out_dir, manifest) in outputs.items()}


def _failing(cfg: SFTConfig, fault: Fault | None) -> SFTConfig:
    return replace(cfg, fail_after_steps=fault.after_steps) if fault is not None else cfg


def _model(base: ModelConfig, ref: Ref) -> ModelConfig:
    return replace(base, name_or_path=ref["path"])


def scorer_for(base: ScorerConfig, rms: dict[str, Ref]) -> ScorerConfig:
    """The configured scorer with this iteration's RM directories filled in."""
    return replace(base, helpful=rms["helpful"]["path"], safety=rms["safety"]["path"] if "safety" in rms else None)


# --------------------------------------------------------------------------------------------------
# iteration 0


@step_task("sft")
def sft(model: ModelConfig, data: DataConfig, config: SFTConfig, out_dir: str,
        fault: Fault | None = None) -> Ref:
    from rlhf_core.steps.sft import sft_step

    return _outputs("sft", fault, lambda f: {
        "sft": (Path(out_dir), sft_step(model, data, _failing(config, f), out_dir))})["sft"]


@step_task("seed_pairs")
def seed_pairs(reward: RewardSection, out_dir: str, fault: Fault | None = None) -> Ref:
    from rlhf_core.steps.pairs import seed_pairs_step

    return _outputs("seed_pairs", fault, lambda f: {
        "seed_pairs": (Path(out_dir), seed_pairs_step(reward, out_dir))})["seed_pairs"]


# --------------------------------------------------------------------------------------------------
# iteration n


@step_task("collect_pairs")
def collect_pairs(policy: Ref, model: ModelConfig, prompts: PromptsConfig, sampling: SamplingConfig,
                  temperatures: list[float], iteration: int, out_dir: str, fault: Fault | None = None) -> Ref:
    from rlhf_core.steps.rejection import collect_pairs_step

    return _outputs("collect_pairs", fault, lambda f: {"pairs": (Path(out_dir), collect_pairs_step(
        _model(model, policy), prompts, sampling, temperatures, iteration, out_dir))})["pairs"]


@step_task("annotate")
def annotate(pairs: Ref, annotator: AnnotatorConfig, out_dir: str, fault: Fault | None = None) -> Ref:
    from rlhf_core.steps.pairs import annotate_step

    return _outputs("annotate", fault, lambda f: {"labelled": (
        Path(out_dir), annotate_step(Path(pairs["path"]) / "pairs.parquet", annotator, out_dir))})["labelled"]


def rm_data(reward: RewardSection, name: str, seed: Ref, labelled: list[Ref]) -> RMDataConfig:
    """RM ``name``'s pairs: its seed pairs plus every labelled batch so far (§3.2.2: the RMs are retrained
    on all the data at each iteration)."""
    files = [str(Path(seed["path"]) / f"{name}.parquet")] + [str(Path(r["path"]) / "pairs.parquet") for r in labelled]
    return replace(getattr(reward, name), data=files)


@step_task("train_reward_models")
def train_reward_models(init: Ref, model: ModelConfig, reward: RewardSection, seed: Ref, labelled: list[Ref],
                        out_root: str, fault: Fault | None = None) -> dict[str, Ref]:
    """The Helpfulness and (unless ``reward.train_safety`` is off) Safety RMs, from the SFT checkpoint."""
    from rlhf_core.steps.reward import rm_train_step

    names = ["helpful", "safety"] if reward.train_safety else ["helpful"]

    def body(f: Fault | None) -> dict:
        return {name: (Path(out_root) / f"rm-{name}", rm_train_step(
            _model(model, init), rm_data(reward, name, seed, labelled), _failing(reward.train, f),
            Path(out_root) / f"rm-{name}", name=name)) for name in names}

    return _outputs("train_reward_models", fault, body)


@step_task("eval_reward_models")
def eval_reward_models(rms: dict[str, Ref], model: ModelConfig, reward: RewardSection, out_root: str,
                       fault: Fault | None = None) -> dict[str, Ref]:
    """Each RM's accuracy per preference level on held-out pairs (``reward.eval_data``, or simulated-rater
    pairs on the held-out prompt phrasings)."""
    from rlhf_core.steps.reward import rm_eval_step

    def body(f: Fault | None) -> dict:
        out = {}
        for name, ref in rms.items():
            synthetic = replace(getattr(reward, name), n_synthetic=reward.n_eval_synthetic, data=None)
            out_dir = Path(out_root) / f"rm-{name}-eval"
            out[name] = (out_dir, rm_eval_step(ref["path"], reward.eval_data, out_dir, reward.train.eval_batch_size,
                                               model.precision, synthetic))
        return out

    return _outputs("eval_reward_models", fault, body)


@step_task("search_temperature")
def search_temperature(policy: Ref, rms: dict[str, Ref], model: ModelConfig, prompts: PromptsConfig,
                       sampling: SamplingConfig, rejection: RejectionConfig, scorer: ScorerConfig, out_dir: str,
                       fault: Fault | None = None) -> Ref:
    from rlhf_core.steps.rejection import search_temperature_step

    return _outputs("search_temperature", fault, lambda f: {"search": (
        Path(out_dir), search_temperature_step(_model(model, policy), prompts, sampling, rejection,
                                               scorer_for(scorer, rms), out_dir))})["search"]


@step_task("rejection_sample")
def rejection_sample(policy: Ref, rms: dict[str, Ref], search: Ref, previous: list[Ref], model: ModelConfig,
                     prompts: PromptsConfig, sampling: SamplingConfig, rejection: RejectionConfig,
                     scorer: ScorerConfig, iteration: int, out_dir: str, fault: Fault | None = None) -> Ref:
    """K samples per prompt at the temperature the search chose; the pool over all iterations."""
    from rlhf_core.steps.rejection import rejection_sample_step

    chosen = replace(sampling, temperature=search["metrics"]["chosen"])
    history = [str(Path(r["path"]) / "candidates.parquet") for r in previous]
    return _outputs("rejection_sample", fault, lambda f: {"rs": (
        Path(out_dir), rejection_sample_step(_model(model, policy), prompts, chosen, rejection,
                                             scorer_for(scorer, rms), iteration, history, out_dir))})["rs"]


@step_task("train_policy")
def train_policy(policy: Ref, pool: Ref, model: ModelConfig, config: SFTConfig, student: str | None, out_dir: str,
                 fault: Fault | None = None) -> Ref:
    """Fine-tune the policy (or ``rejection.student``) on the pool's best answers (rejection-sampling SFT)."""
    from rlhf_core.steps.sft import sft_step

    start = replace(model, name_or_path=student) if student else _model(model, policy)
    data = DataConfig(path=str(Path(pool["path"]) / "pool_sft.jsonl"))
    return _outputs("train_policy", fault, lambda f: {
        "policy": (Path(out_dir), sft_step(start, data, _failing(config, f), out_dir))})["policy"]


@step_task("ppo")
def ppo(policy: Ref, rms: dict[str, Ref], model: ModelConfig, prompts: PromptsConfig, eval_prompts: PromptsConfig,
        sampling: SamplingConfig, scorer: ScorerConfig, config: PPOConfig, out_dir: str,
        fault: Fault | None = None) -> Ref:
    """PPO of the iteration's policy against its reward models (KL to the pre-PPO policy)."""
    from rlhf_core.steps.ppo import ppo_step

    return _outputs("ppo", fault, lambda f: {"ppo": (Path(out_dir), ppo_step(
        _model(model, policy), scorer_for(scorer, rms), prompts, eval_prompts, sampling, config, out_dir,
        fail_after_steps=f.after_steps if f is not None else None))})["ppo"]


@step_task("gatt")
def gatt(policy: Ref, model: ModelConfig, config: GAttConfig, train: SFTConfig, sampling: SamplingConfig,
         out_dir: str, fault: Fault | None = None) -> Ref:
    """Ghost Attention: dialogues with the instruction on every user turn, SFT on the last answer with the
    instruction in the system message only, adherence per turn before and after."""
    from rlhf_core.steps.gatt import gatt_step

    core = GAttConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(GAttConfig)})
    return _outputs("gatt", fault, lambda f: {"gatt": (
        Path(out_dir), gatt_step(_model(model, policy), core, _failing(train, f), sampling, out_dir))})["gatt"]


@step_task("evaluate")
def evaluate(policy: Ref, baselines: dict[str, Ref], rms: dict[str, Ref], model: ModelConfig,
             sampling: SamplingConfig, scorer: ScorerConfig, config: EvalConfig, out_dir: str,
             fault: Fault | None = None) -> Ref:
    """Win rates of the new policy against each baseline, judged by the gold rater and the RMs."""
    from rlhf_core.steps.evaluate import evaluate_step

    others = {name: _model(model, ref) for name, ref in baselines.items()}
    return _outputs("evaluate", fault, lambda f: {"evaluate": (
        Path(out_dir), evaluate_step(_model(model, policy), others, None, sampling, scorer_for(scorer, rms), config,
                                     out_dir))})["evaluate"]
