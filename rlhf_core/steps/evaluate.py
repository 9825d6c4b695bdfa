"""The ``evaluate`` step: win rates of an iteration's policy against its baselines on held-out prompts.

Writes ``answers.parquet`` (one answer per prompt and model, with the prompt's last user turn),
``judgments.parquet`` (one row per prompt, baseline and judge: the order the judge saw, both scores,
the outcome) and ``manifest.json`` whose metrics hold ``win_rate["<baseline>/<judge>"]`` (see
:func:`rlhf.core.evaluation.summarise`), ``mean_gold`` / ``mean_reward`` per model, and
``skipped_judges`` with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation import EvalConfig, judge, summarise
from ..models import ModelConfig, load_model
from ..progress import progress
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..sampling import SamplingConfig, make_backend
from ..scorers import ScorerConfig, gold_scorer
from .common import file_input, log, model_input, run_step
from .outputs import EVALUATE

JUDGES = ("gold", "rm")


def eval_prompts(cfg: EvalConfig) -> PromptsConfig:
    return PromptsConfig(path=cfg.prompts_path, n=cfg.n_prompts, split=cfg.split, seed=cfg.seed)


def _answers(model_cfg: ModelConfig, prompts: pd.DataFrame, sampling: SamplingConfig) -> list[str]:
    """One answer per prompt, in prompt order."""
    model, tokenizer = load_model(model_cfg)
    samples = make_backend(sampling, model, tokenizer, model_cfg.precision, model_cfg.name_or_path).sample(
        list(prompts.messages), 1, sampling)
    return list(samples.sort_values("prompt_index").text)


def _reward_judges(scorer_cfg: ScorerConfig, precision: str):
    """``answers -> {judge: (n,) scores}`` from the RMs: ``rm`` (combined) and, with a Safety RM, the two
    axes ``rm_helpful`` and ``rm_safety`` -- all from one scoring pass."""
    if not scorer_cfg.helpful:
        raise ConfigError("scorer.helpful", "the rm judge needs the iteration's reward models; drop 'rm' from "
                                            "eval.judges or give scorer.helpful")
    from ..reward.scorer import RewardScorer

    scorer = RewardScorer.load(scorer_cfg.helpful, scorer_cfg.safety, batch_size=scorer_cfg.batch_size,
                               precision=precision)

    def scores(prompts: pd.DataFrame, answers: list[str]) -> dict[str, np.ndarray]:
        out = scorer(list(prompts.messages), answers, list(prompts.safety))
        result = {"rm": out["combined"].float().numpy()}
        if out["safety"] is not None:
            result |= {"rm_helpful": out["helpful"].float().numpy(), "rm_safety": out["safety"].float().numpy()}
        return result

    return scores


def evaluate_step(model_cfg: ModelConfig, baselines: dict[str, ModelConfig], prompts_cfg: PromptsConfig | None,
                  sampling: SamplingConfig, scorer_cfg: ScorerConfig, cfg: EvalConfig, out_dir: str | Path) -> dict:
    """Answer the held-out prompts with the model and each baseline, judge every pair; returns the manifest.

    Baselines naming the same model (iteration 1's ``sft`` and ``previous``) are answered once."""
    unknown = sorted(set(cfg.judges) - set(JUDGES))
    if unknown:
        raise ConfigError("eval.judges", f"unknown judge(s) {unknown}; use {' and/or '.join(JUDGES)}")
    prompts_cfg = prompts_cfg or eval_prompts(cfg)
    prompts = load_prompt_set(prompts_cfg)
    answer_cfg = replace(sampling, temperature=cfg.temperature, seed=cfg.seed,
                         max_new_tokens=cfg.max_new_tokens or sampling.max_new_tokens)
    models = {"model": model_cfg, **baselines}
    # A user's prompt file without instructions or safety tags gives the gold rater nothing to check.
    has_rubric = prompts_cfg.path is None or bool((prompts.instructions != "[]").any() or prompts.safety.any())

    def body(tmp: Path) -> dict:
        # 1. Answers: one per prompt and distinct model, same sampling seed for all (a paired comparison).
        by_path: dict[str, list[str]] = {}
        distinct: dict[str, ModelConfig] = {}
        for cfg_ in models.values():
            distinct.setdefault(cfg_.name_or_path, cfg_)  # the first config naming a model answers for it
        with progress(len(distinct) * len(prompts), "evaluate: answers", "prompt") as bar:
            for path, cfg_ in distinct.items():
                by_path[path] = _answers(cfg_, prompts, answer_cfg)
                bar.update(len(prompts))
        answers = {name: by_path[c.name_or_path] for name, c in models.items()}
        asked = [messages[-1]["content"] for messages in prompts.messages]
        pd.DataFrame([{"prompt_id": pid, "prompt": q, "model": name, "text": text} for name, texts in answers.items()
                      for pid, q, text in zip(prompts.prompt_id, asked, texts)]).to_parquet(tmp / EVALUATE["answers"])
        # 2. Scores per judge and model.
        skipped, scores = {}, {name: {} for name in answers}
        if "gold" in cfg.judges:
            if has_rubric:
                for name, texts in answers.items():
                    scores[name]["gold"] = gold_scorer(prompts, texts)
            else:
                skipped["gold"] = "the prompts carry no instructions for the gold rater"
                log.warning("evaluate: gold judge skipped: %s", skipped["gold"])
        if "rm" in cfg.judges:
            reward = _reward_judges(scorer_cfg, model_cfg.precision)
            with progress(len(answers) * len(prompts), "evaluate: rm judge", "answer") as bar:
                for name, texts in answers.items():
                    scores[name] |= reward(prompts, texts)
                    bar.update(len(prompts))
        # 3. Judgments and win rates per baseline and judge.
        rows, win_rate = [], {}
        for i, baseline in enumerate(baselines):
            for j, judge_name in enumerate(scores["model"]):
                seed = cfg.seed * 1000 + 10 * i + j
                judged = judge(prompts, scores["model"][judge_name], scores[baseline][judge_name], answers["model"],
                               answers[baseline], seed, cfg.tie_eps)
                rows.append(judged.assign(baseline=baseline, judge=judge_name))
                win_rate[f"{baseline}/{judge_name}"] = summarise(judged, judge_name, cfg.n_bootstrap, seed)
        pd.concat(rows, ignore_index=True).to_parquet(tmp / EVALUATE["judgments"])
        means = {judge_name: {name: float(np.mean(s[judge_name])) for name, s in scores.items()}
                 for judge_name in scores["model"]}
        return {"win_rate": win_rate, "n_prompts": len(prompts), "mean_score": means, "skipped_judges": skipped}

    inputs = {"model": model_input(model_cfg), **{f"baseline_{n}": model_input(c) for n, c in baselines.items()},
              **{f"rm_{n}": file_input(p) for n, p in (("helpful", scorer_cfg.helpful), ("safety", scorer_cfg.safety))
                 if p and "rm" in cfg.judges}}
    if prompts_cfg.path:
        inputs["prompts"] = file_input(prompts_cfg.path)
    config = {"eval": asdict(cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(answer_cfg),
              "baselines": sorted(baselines)}
    return run_step("evaluate", out_dir, config, inputs, body,
                    f"{len(prompts)} held-out prompts vs {', '.join(baselines)}, judges {', '.join(cfg.judges)}",
                    lambda m: "; ".join(f"{k} {v['win_rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                                        for k, v in m["win_rate"].items()))
