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
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation import EvalConfig, judge, summarise, summarise_by_prompt_set, violation_rate
from ..models import ModelConfig, load_model
from ..progress import progress
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..rejection import in_order
from ..sampling import SamplingConfig, make_backend, n_batches
from ..scorers import ScorerConfig, gold_scorer
from ..shards import WHOLE, Shard
from .common import file_input, log, model_input, run_step
from .outputs import EVALUATE
from .shards import merged, shard_inputs, shard_step

JUDGES = ("gold", "rm")
RM_JUDGES = ("rm", "rm_helpful", "rm_safety")  # the combined reward, and each RM's when there is a Safety RM


def eval_prompts(cfg: EvalConfig) -> PromptsConfig:
    return PromptsConfig(path=cfg.prompts_path, n=cfg.n_prompts, split=cfg.split, seed=cfg.seed)


def _answer_rows(distinct: dict[str, ModelConfig], prompts: pd.DataFrame, sampling: SamplingConfig,
                 scorer_cfg: ScorerConfig, cfg: EvalConfig, precision: str, shard: Shard = WHOLE) -> pd.DataFrame:
    """One answer per prompt and distinct model (keyed by its path), with the RM judges' scores when
    ``rm`` judges -- or this shard's share of them (its units: each model's batches of the engine). Rows
    ``model``, ``model_order``, ``prompt_index``, ``text`` [, ``rm``, ``rm_helpful``, ``rm_safety``]."""
    mine = shard.take([(path, b) for path in distinct for b in range(n_batches(len(prompts), sampling))])
    reward = _reward_judges(scorer_cfg, precision) if "rm" in cfg.judges and mine else None
    drawn = []
    with progress(len(mine), "evaluate: answers", "batch") as bar:
        for order, (path, model_cfg) in enumerate(distinct.items()):
            batches = [b for p, b in mine if p == path]
            if not batches:
                continue
            model, tokenizer = load_model(model_cfg)
            samples = make_backend(sampling, model, tokenizer, model_cfg.precision, path).sample(
                list(prompts.messages), 1, sampling, batches=batches)
            rows = samples[["prompt_index", "text", "batch"]].assign(model=path, model_order=order)
            for index in (rows.groupby("batch").indices.values() if reward else ()):
                part = rows.iloc[index]  # a batch's answers scored as one group, as in every shard split
                for judge_name, scores in reward(prompts.iloc[part.prompt_index.astype(int)], list(part.text)).items():
                    rows.loc[rows.index[index], judge_name] = scores
            drawn.append(rows)
            bar.update(len(batches))
    return in_order(drawn, ["model_order", "prompt_index"]) if drawn else pd.DataFrame()


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
                  sampling: SamplingConfig, scorer_cfg: ScorerConfig, cfg: EvalConfig, out_dir: str | Path,
                  shards: Sequence[str | Path] = ()) -> dict:
    """Answer the held-out prompts with the model and each baseline, judge every pair; returns the manifest.

    Baselines naming the same model (iteration 1's ``sft`` and ``previous``) are answered once. With
    ``shards``, the answers and RM scores are those of :func:`evaluate_shard_step`'s shards."""
    unknown = sorted(set(cfg.judges) - set(JUDGES))
    if unknown:
        raise ConfigError("eval.judges", f"unknown judge(s) {unknown}; use {' and/or '.join(JUDGES)}")
    prompts_cfg = prompts_cfg or eval_prompts(cfg)
    prompts = load_prompt_set(prompts_cfg)
    answer_cfg = _answer_sampling(sampling, cfg)
    models = {"model": model_cfg, **baselines}
    # A user's prompt file without instructions or safety tags gives the gold rater nothing to check.
    has_rubric = prompts_cfg.path is None or bool((prompts.instructions != "[]").any() or prompts.safety.any())

    distinct: dict[str, ModelConfig] = {}
    for cfg_ in models.values():
        distinct.setdefault(cfg_.name_or_path, cfg_)  # the first config naming a model answers for it

    def body(tmp: Path) -> dict:
        # 1. Answers: one per prompt and distinct model, same sampling seed for all (a paired comparison).
        answered = merged(shards, ["model_order", "prompt_index"]) if shards else _answer_rows(
            distinct, prompts, answer_cfg, scorer_cfg, cfg, model_cfg.precision)
        by_path = {path: group for path, group in answered.groupby("model", sort=False)}
        if sorted(by_path) != sorted(distinct) or any(len(g) != len(prompts) for g in by_path.values()):
            raise ValueError("evaluate: the answers do not cover every model and prompt (a shard's rows are missing)")
        answers = {name: list(by_path[c.name_or_path].text) for name, c in models.items()}
        asked = [messages[-1]["content"] for messages in prompts.messages]
        pd.DataFrame([{"prompt_id": pid, "prompt": q, "model": name, "text": text} for name, texts in answers.items()
                      for pid, q, text in zip(prompts.prompt_id, asked, texts)]).to_parquet(tmp / EVALUATE["answers"])
        # 2. Scores per judge and model: the gold rater's here, the RMs' with the answers.
        skipped, scores = {}, {name: {} for name in answers}
        if "gold" in cfg.judges:
            if has_rubric:
                for name, texts in answers.items():
                    scores[name]["gold"] = gold_scorer(prompts, texts)
            else:
                skipped["gold"] = "the prompts carry no instructions for the gold rater"
                log.warning("evaluate: gold judge skipped: %s", skipped["gold"])
        if "rm" in cfg.judges:
            for name, c in models.items():
                scores[name] |= {judge_name: by_path[c.name_or_path][judge_name].to_numpy(dtype=float)
                                 for judge_name in RM_JUDGES if judge_name in answered}
        # 3. Judgments and win rates per baseline and judge.
        rows, win_rate, by_set = [], {}, {}
        for i, baseline in enumerate(baselines):
            for j, judge_name in enumerate(scores["model"]):
                seed = cfg.seed * 1000 + 10 * i + j
                judged = judge(prompts, scores["model"][judge_name], scores[baseline][judge_name], answers["model"],
                               answers[baseline], seed, cfg.tie_eps)
                rows.append(judged.assign(baseline=baseline, judge=judge_name))
                win_rate[f"{baseline}/{judge_name}"] = summarise(judged, judge_name, cfg.n_bootstrap, seed)
                by_set[f"{baseline}/{judge_name}"] = summarise_by_prompt_set(judged, judge_name, cfg.n_bootstrap,
                                                                             seed)
        pd.concat(rows, ignore_index=True).to_parquet(tmp / EVALUATE["judgments"])
        means = {judge_name: {name: float(np.mean(s[judge_name])) for name, s in scores.items()}
                 for judge_name in scores["model"]}
        violations = {name: violation_rate(list(prompts.safety), texts) for name, texts in answers.items()}
        return {"win_rate": win_rate, "win_rate_by_set": by_set, "violation_rate": violations,
                "n_prompts": len(prompts), "mean_score": means, "skipped_judges": skipped}

    inputs = _inputs(model_cfg, baselines, prompts_cfg, scorer_cfg, cfg) | shard_inputs(shards)
    config = {"eval": asdict(cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(answer_cfg),
              "baselines": sorted(baselines)}
    return run_step("evaluate", out_dir, config, inputs, body,
                    f"{len(prompts)} held-out prompts vs {', '.join(baselines)}, judges {', '.join(cfg.judges)}"
                    + (f", merging {len(shards)} shards" if shards else ""),
                    lambda m: "; ".join(f"{k} {v['win_rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                                        for k, v in m["win_rate"].items()))


def _inputs(model_cfg: ModelConfig, baselines: dict[str, ModelConfig], prompts_cfg: PromptsConfig,
            scorer_cfg: ScorerConfig, cfg: EvalConfig) -> dict[str, dict]:
    inputs = {"model": model_input(model_cfg), **{f"baseline_{n}": model_input(c) for n, c in baselines.items()},
              **{f"rm_{n}": file_input(p) for n, p in (("helpful", scorer_cfg.helpful), ("safety", scorer_cfg.safety))
                 if p and "rm" in cfg.judges}}
    if prompts_cfg.path:
        inputs["prompts"] = file_input(prompts_cfg.path)
    return inputs


def evaluate_shard_step(model_cfg: ModelConfig, baselines: dict[str, ModelConfig], sampling: SamplingConfig,
                        scorer_cfg: ScorerConfig, cfg: EvalConfig, shard: Shard, out_dir: str | Path) -> dict:
    """This shard's answers (and RM scores) of :func:`evaluate_step`."""
    prompts_cfg = eval_prompts(cfg)
    prompts = load_prompt_set(prompts_cfg)
    answer_cfg = _answer_sampling(sampling, cfg)
    distinct: dict[str, ModelConfig] = {}
    for cfg_ in {"model": model_cfg, **baselines}.values():
        distinct.setdefault(cfg_.name_or_path, cfg_)
    config = {"eval": asdict(cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(answer_cfg),
              "baselines": sorted(baselines)}
    return shard_step("evaluate", shard, out_dir, config, _inputs(model_cfg, baselines, prompts_cfg, scorer_cfg, cfg),
                      lambda: _answer_rows(distinct, prompts, answer_cfg, scorer_cfg, cfg, model_cfg.precision, shard),
                      f"{len(prompts)} held-out prompts x {len(distinct)} models, {shard.name}")


def _answer_sampling(sampling: SamplingConfig, cfg: EvalConfig) -> SamplingConfig:
    return replace(sampling, temperature=cfg.temperature, seed=cfg.seed,
                   max_new_tokens=cfg.max_new_tokens or sampling.max_new_tokens)
