"""The PPO step: a policy, the reward models and prompts -> the PPO policy (a model directory).

Writes ``save_pretrained`` weights of the returned policy (the best on held-out prompts), ``metrics.jsonl``
(one line per PPO iteration), ``eval_history.csv`` (every held-out evaluation) and ``manifest.json``
whose metrics hold ``steps``, ``reward_start``, ``reward_end``, ``kl_end``, ``early_stopped``,
``best_step``, ``resumed_from_step`` and the mean seconds per iteration of ``rollout``, ``score`` and
``update``. Checkpoints live in the hidden ``.<name>.work`` sibling until the step succeeds.

Memory: PPO holds the policy (trained: fp32 weights and two AdamW moments = 12 bytes per parameter), the
value model (the same again), the frozen reference (4 bytes per parameter) and one or two reward models (4
each): about 36 bytes per parameter, plus at its peak one model's gradients (4 bytes per parameter: the
value model is updated after the policy has stepped and dropped its own, :func:`rlhf.core.ppo.update`) and
one micro-batch's activations (``ppo.micro_batch_size`` x the longest prompt + answer). The memory modes:
``ppo.frozen_precision`` (reference and RMs in bf16: 2 bytes each), ``ppo.value_init=shared`` (a head on the
policy's trunk instead of a second transformer) and ``ppo.lora`` (adapters train; the reference is the
policy without them): 8 bytes per parameter with all three. The best weights so far wait on disk in the
work dir (:mod:`rlhf.core.ppo_loop`), not in memory. The step counts what it holds (``memory/*`` in the manifest);
docs/design.md#memory-per-parameter has the table. With ``launch`` on several processes it runs data
parallel (never sharded).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..errors import ConfigError
from ..launch import LaunchConfig, check_unsharded, keyed_launch, launches
from ..lora import WithoutAdapters, add_adapters, describe, merge_adapters
from ..models import ModelConfig, load_model, resolve_precision
from ..ppo import PPOConfig, ValueModel
from ..ppo_loop import run_ppo
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..sampling import SamplingConfig
from ..scorers import ScorerConfig
from ..training import checkpoint_step, latest_checkpoint
from .common import MetricsLog, file_input, launched_step, log, model_input, run_step, save_model_output, work_dir_for
from .outputs import METRICS, PPO


def _prompts(cfg: PromptsConfig, what: str) -> pd.DataFrame:
    frame = load_prompt_set(cfg)
    if frame.empty:
        raise ConfigError(what, f"no prompts (n={cfg.n}, offset={cfg.offset}, path={cfg.path}); give more")
    return frame


def check_ppo_launch(cfg: PPOConfig, launch: LaunchConfig | None) -> None:
    """Each process takes every ``world``-th micro-batch of a mini-batch: with fewer micro-batches than
    processes some would only wait. A clear error instead, naming the keys to change."""
    check_unsharded(launch, "ppo")
    n = launch.num_processes if launch is not None else 1
    micro_batches = cfg.mini_batch_size // cfg.micro_batch_size
    if n > 1 and micro_batches < n:
        raise ConfigError("ppo.mini_batch_size", (
            f"{cfg.mini_batch_size} answers per gradient step in micro-batches of {cfg.micro_batch_size} make "
            f"{micro_batches} micro-batch(es), fewer than the {n} processes of the launch: each needs one. Raise "
            f"ppo.mini_batch_size to at least {cfg.micro_batch_size * n}, lower ppo.micro_batch_size, or use fewer "
            "processes (launch.steps.ppo.num_processes)"))


def frozen_dtype(cfg: PPOConfig, precision: str) -> torch.dtype:
    """The dtype the frozen models (reference, RMs) are stored in (``ppo.frozen_precision``)."""
    choice = resolve_precision(precision) if cfg.frozen_precision == "auto" else cfg.frozen_precision
    return torch.bfloat16 if choice == "bf16" else torch.float32


def ppo_step(model_cfg: ModelConfig, scorer_cfg: ScorerConfig, prompts_cfg: PromptsConfig,
             eval_prompts_cfg: PromptsConfig, sampling: SamplingConfig, cfg: PPOConfig, out_dir: str | Path,
             on_metrics: Callable[[dict, int], None] | None = None, fail_after_steps: int | None = None,
             launch: LaunchConfig | None = None) -> dict:
    """PPO of ``model_cfg``'s policy against the RMs of ``scorer_cfg``; returns the output's manifest.
    ``launch`` with more than one process runs it on that many (rollouts, scoring and the update's
    micro-batches split across them; see :mod:`rlhf.core.ppo_loop`)."""
    cfg.validate()
    check_ppo_launch(cfg, launch)
    if not scorer_cfg.helpful:
        raise ConfigError("scorer.helpful", "PPO needs the reward models: give scorer.helpful (and scorer.safety), "
                                            "the output directories of `rlhf rm train`")
    out_dir, work = Path(out_dir), work_dir_for(Path(out_dir))
    inputs = {"model": model_input(model_cfg), "rm_helpful": file_input(scorer_cfg.helpful),
              **({"rm_safety": file_input(scorer_cfg.safety)} if scorer_cfg.safety else {}),
              **({"prompts": file_input(prompts_cfg.path)} if prompts_cfg.path else {})}
    config = {"model": asdict(model_cfg), "ppo": asdict(cfg), "prompts": asdict(prompts_cfg),
              "eval_prompts": asdict(eval_prompts_cfg), "sampling": asdict(sampling),
              "scorer_batch_size": scorer_cfg.batch_size, **keyed_launch(launch)}
    if launches(launch):
        return launched_step("ppo", out_dir, config, inputs, launch, ppo_step,
                             {"model_cfg": model_cfg, "scorer_cfg": scorer_cfg, "prompts_cfg": prompts_cfg,
                              "eval_prompts_cfg": eval_prompts_cfg, "sampling": sampling, "cfg": cfg,
                              "out_dir": out_dir, "fail_after_steps": fail_after_steps, "launch": launch},
                             on_metrics=on_metrics)

    def body(tmp: Path | None) -> dict:
        from ..reward.scorer import RewardScorer

        train, held_out = _prompts(prompts_cfg, "ppo.n_prompts"), _prompts(eval_prompts_cfg, "ppo.eval_prompts")
        policy, tokenizer = load_model(model_cfg)
        n_params = sum(p.numel() for p in policy.parameters())
        scorer = RewardScorer.load(scorer_cfg.helpful, scorer_cfg.safety, batch_size=scorer_cfg.batch_size,
                                   precision=model_cfg.precision)
        # The value model before any adapter goes in: a copy made from the plain policy or RM.
        if cfg.value_init == "reward":
            rm, rm_tokenizer = scorer.helpful
            if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise ConfigError("ppo.value_init", "the Helpfulness RM's tokenizer differs from the policy's, so "
                                                    "it cannot start the value model; use ppo.value_init=policy")
            value = ValueModel.from_reward_model(rm)  # an fp32 copy, before the RM itself is stored in bf16
        elif cfg.value_init == "policy":
            value = ValueModel.from_policy(policy)
        if cfg.lora.r:  # adapters on the policy; the reference is the policy with them off
            adapters = add_adapters(policy, cfg.lora, "ppo", cfg.seed)
            reference = WithoutAdapters(adapters)
            log.info("ppo: policy: %s; the reference is the policy without them", describe(cfg.lora, policy))
        else:
            adapters, reference = None, load_model(model_cfg)[0]  # the frozen pre-PPO policy (also on resume)
        if cfg.value_init == "shared":
            value = ValueModel.on_policy_trunk(policy)
        elif cfg.lora.r:
            add_adapters(value.backbone, cfg.lora, "ppo", cfg.seed + 1)
            log.info("ppo: value model: %s", describe(cfg.lora, value))
        rms = [scorer.helpful[0]] + ([scorer.safety[0]] if scorer.safety else [])
        frozen = frozen_dtype(cfg, model_cfg.precision)
        for model in [reference, *rms]:
            model.to(frozen)
        resume = latest_checkpoint(work)
        log.info("ppo: %d training / %d held-out prompts, %d iterations of %d rollouts%s", len(train), len(held_out),
                 cfg.steps, cfg.batch_size, f", resuming from {resume.name}" if resume else "")
        metrics_log = MetricsLog(work / METRICS, checkpoint_step(resume), on_metrics)
        result = run_ppo(policy, tokenizer, reference, value,
                         lambda prompts, answers, tags: scorer(prompts, answers, tags)["combined"],
                         train, held_out, cfg, sampling, work, metrics_log, model_cfg.precision, fail_after_steps,
                         frozen=rms)
        if tmp is None:  # another rank of a launched step: the main one writes the output
            return {}
        if adapters is not None:  # the output is a plain model directory: the adapters merged into the weights
            merge_adapters(adapters)
        save_model_output(tmp, policy, tokenizer, work / METRICS)
        pd.DataFrame(result.history).to_csv(tmp / PPO["eval_history"], index=False)
        held = sum(result.memory.values())
        log.info("ppo: models, gradients and optimizer state held %.2f GB, %.1f bytes per policy parameter (%s)",
                 held / 1e9, held / n_params, ", ".join(f"{k} {v / n_params:.1f}" for k, v in result.memory.items()))
        return {**{k: v for k, v in result.summary().items() if k not in ("timings", "memory")},
                **{f"seconds_per_step/{k}": v for k, v in result.timings.items()},
                **{f"memory/{k}_bytes": v for k, v in result.memory.items()},
                "memory/bytes_per_parameter": held / n_params, "n_parameters": n_params}

    def summary(m: dict) -> str:
        return (f"{m['steps']} PPO iterations{' (early-stopped)' if m['early_stopped'] else ''}, held-out reward "
                f"{m['reward_start']:.3f} -> {m['reward_end']:.3f} (best at {m['best_step']}), KL {m['kl_end']:.3f}")

    return run_step("ppo", out_dir, config, inputs, body, f"{model_cfg.name_or_path}, beta {cfg.beta}", summary)
