"""The PPO step: a policy, the reward models and prompts -> the PPO policy (a model directory).

Writes ``save_pretrained`` weights of the returned policy (the best on held-out prompts), ``metrics.jsonl``
(one line per PPO iteration), ``eval_history.csv`` (every held-out evaluation) and ``manifest.json``
whose metrics hold ``steps``, ``reward_start``, ``reward_end``, ``kl_end``, ``early_stopped``,
``best_step``, ``resumed_from_step`` and the mean seconds per iteration of ``rollout``, ``score`` and
``update``. Checkpoints live in the hidden ``.<name>.work`` sibling until the step succeeds.

Memory: PPO holds the policy (trained: weights, gradients and two AdamW moments = 16 bytes per
parameter in fp32), the value model (the same again), the frozen reference (4 bytes per parameter), one
or two reward models (4 each) and a copy of the best weights (4): about 48 bytes per parameter, 6.5 GB
for SmolLM2-135M, plus activations (``ppo.micro_batch_size`` x the longest prompt + answer). To fit
more: lower ``ppo.micro_batch_size`` and ``sampling.batch_prompts``, shorten ``ppo.max_new_tokens``,
train one RM (``reward.train_safety=false``), or ``ppo.value_init=policy`` with a smaller policy. Sharding,
LoRA and bf16 storage of the frozen models are not implemented (the ``dist`` extra is where they go).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import ConfigError
from ..models import ModelConfig, load_model
from ..ppo import PPOConfig, ValueModel
from ..ppo_loop import run_ppo
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..sampling import SamplingConfig
from ..scorers import ScorerConfig
from ..training import checkpoint_step, latest_checkpoint
from .common import MetricsLog, file_input, log, model_input, run_step, save_model_output, work_dir_for
from .outputs import METRICS, PPO


def _prompts(cfg: PromptsConfig, what: str) -> pd.DataFrame:
    frame = load_prompt_set(cfg)
    if frame.empty:
        raise ConfigError(what, f"no prompts (n={cfg.n}, offset={cfg.offset}, path={cfg.path}); give more")
    return frame


def ppo_step(model_cfg: ModelConfig, scorer_cfg: ScorerConfig, prompts_cfg: PromptsConfig,
             eval_prompts_cfg: PromptsConfig, sampling: SamplingConfig, cfg: PPOConfig, out_dir: str | Path,
             on_metrics: Callable[[dict, int], None] | None = None, fail_after_steps: int | None = None) -> dict:
    """PPO of ``model_cfg``'s policy against the RMs of ``scorer_cfg``; returns the output's manifest."""
    cfg.validate()
    if not scorer_cfg.helpful:
        raise ConfigError("scorer.helpful", "PPO needs the reward models: give scorer.helpful (and scorer.safety), "
                                            "the output directories of `rlhf rm train`")
    out_dir, work = Path(out_dir), work_dir_for(Path(out_dir))
    inputs = {"model": model_input(model_cfg), "rm_helpful": file_input(scorer_cfg.helpful),
              **({"rm_safety": file_input(scorer_cfg.safety)} if scorer_cfg.safety else {}),
              **({"prompts": file_input(prompts_cfg.path)} if prompts_cfg.path else {})}
    config = {"model": asdict(model_cfg), "ppo": asdict(cfg), "prompts": asdict(prompts_cfg),
              "eval_prompts": asdict(eval_prompts_cfg), "sampling": asdict(sampling),
              "scorer_batch_size": scorer_cfg.batch_size}

    def body(tmp: Path) -> dict:
        from ..reward.scorer import RewardScorer

        train, held_out = _prompts(prompts_cfg, "ppo.n_prompts"), _prompts(eval_prompts_cfg, "ppo.eval_prompts")
        policy, tokenizer = load_model(model_cfg)
        reference, _ = load_model(model_cfg)  # the frozen pre-PPO policy (also on resume)
        scorer = RewardScorer.load(scorer_cfg.helpful, scorer_cfg.safety, batch_size=scorer_cfg.batch_size,
                                   precision=model_cfg.precision)
        if cfg.value_init == "reward":
            rm, rm_tokenizer = scorer.helpful
            if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise ConfigError("ppo.value_init", "the Helpfulness RM's tokenizer differs from the policy's, so "
                                                    "it cannot start the value model; use ppo.value_init=policy")
            value = ValueModel.from_reward_model(rm)
        else:
            value = ValueModel.from_policy(policy)
        resume = latest_checkpoint(work)
        log.info("ppo: %d training / %d held-out prompts, %d iterations of %d rollouts%s", len(train), len(held_out),
                 cfg.steps, cfg.batch_size, f", resuming from {resume.name}" if resume else "")
        metrics_log = MetricsLog(work / METRICS, checkpoint_step(resume), on_metrics)
        result = run_ppo(policy, tokenizer, reference, value,
                         lambda prompts, answers, tags: scorer(prompts, answers, tags)["combined"],
                         train, held_out, cfg, sampling, work, metrics_log, model_cfg.precision, fail_after_steps)
        save_model_output(tmp, policy, tokenizer, work / METRICS)
        pd.DataFrame(result.history).to_csv(tmp / PPO["eval_history"], index=False)
        return {**{k: v for k, v in result.summary().items() if k != "timings"},
                **{f"seconds_per_step/{k}": v for k, v in result.timings.items()}}

    def summary(m: dict) -> str:
        return (f"{m['steps']} PPO iterations{' (early-stopped)' if m['early_stopped'] else ''}, held-out reward "
                f"{m['reward_start']:.3f} -> {m['reward_end']:.3f} (best at {m['best_step']}), KL {m['kl_end']:.3f}")

    return run_step("ppo", out_dir, config, inputs, body, f"{model_cfg.name_or_path}, beta {cfg.beta}", summary)
