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
from ..evaluation import EvalConfig, judge, presentation_order, summarise, summarise_by_prompt_set, violation_rate
from ..models import ModelConfig, load_model
from ..pairwise import judge_pairs, make_judge, verdict_scores
from ..progress import progress
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..rejection import in_order
from ..sampling import SamplingConfig, make_backend, n_batches
from ..scorers import ScorerConfig, gold_scorer
from ..shards import WHOLE, Shard
from .common import file_input, key_for, log, model_input, model_label, run_step
from .outputs import EVALUATE
from .shards import merged, shard_inputs, shard_step

JUDGES = ("gold", "rm", "pairwise")
RM_JUDGES = ("rm", "rm_helpful", "rm_safety")  # the combined reward, and each RM's when there is a Safety RM
WITH_SYSTEM = " +system"  # the answers with eval.system_prompt are the rows of "<model path> +system"


def _answerers(models: dict[str, ModelConfig], cfg: EvalConfig) -> dict[str, tuple[ModelConfig, str | None]]:
    """Who answers: each distinct model (keyed by :func:`answerer`; the first config naming it answers for it), and
    with ``eval.system_prompt`` each again with that system prompt (keyed ``<path> +system``)."""
    out: dict[str, tuple[ModelConfig, str | None]] = {}
    for system in [None] + ([cfg.system_prompt] if cfg.system_prompt else []):
        for c in models.values():
            out.setdefault(model_label(c) + (WITH_SYSTEM if system else ""), (c, system))
    return out


def with_system(prompts: pd.DataFrame, system: str | None) -> pd.DataFrame:
    """``prompts`` with ``system`` as each conversation's system turn (replacing one it had); as is for None."""
    if not system:
        return prompts
    turn = {"role": "system", "content": system}
    return prompts.assign(messages=[[turn] + [m for m in messages if m["role"] != "system"]
                                    for messages in prompts.messages])


def eval_prompts(cfg: EvalConfig) -> PromptsConfig:
    return PromptsConfig(path=cfg.prompts_path, n=cfg.n_prompts, split=cfg.split, seed=cfg.seed)


def _answer_rows(answerers: dict[str, tuple[ModelConfig, str | None]], prompts: pd.DataFrame,
                 prompts_cfg: PromptsConfig, sampling: SamplingConfig, scorer_cfg: ScorerConfig, cfg: EvalConfig,
                 precision: str, shard: Shard = WHOLE, answers_cache: Path | None = None) -> pd.DataFrame:
    """One answer per prompt and answerer (:func:`_answerers`), with the RM judges' scores when ``rm``
    judges -- or this shard's share of them (its units: each answerer's batches of the engine). Rows
    ``model`` (the answerer's key), ``model_order``, ``prompt_index``, ``text`` [, ``rm``, ``rm_helpful``,
    ``rm_safety``]. The RM scores are always this call's (this iteration's RMs judge); the answers of the
    whole set come from ``answers_cache`` when it holds them (:func:`_sampled`)."""
    mine = shard.take([(key, b) for key in answerers for b in range(n_batches(len(prompts), sampling))])
    reward = _reward_judges(scorer_cfg, precision) if "rm" in cfg.judges and mine else None
    drawn = []
    with progress(len(mine), "evaluate: answers", "batch") as bar:
        for order, (key, (model_cfg, system)) in enumerate(answerers.items()):
            batches = [b for k, b in mine if k == key]
            if not batches:
                continue
            asked = with_system(prompts, system)
            whole_set = shard.count == 1  # a shard's share of the batches is not what the cache holds
            rows = _sampled(model_cfg, asked, system, prompts_cfg, sampling, batches,
                            answers_cache if whole_set else None).assign(model=key, model_order=order)
            for index in (rows.groupby("batch").indices.values() if reward else ()):
                part = rows.iloc[index]  # a batch's answers scored as one group, as in every shard split
                for judge_name, scores in reward(asked.iloc[part.prompt_index.astype(int)], list(part.text)).items():
                    rows.loc[rows.index[index], judge_name] = scores
            drawn.append(rows)
            bar.update(len(batches))
    return in_order(drawn, ["model_order", "prompt_index"]) if drawn else pd.DataFrame()


ANSWERS_FILE = "answers.parquet"


def _sampled(model_cfg: ModelConfig, asked: pd.DataFrame, system: str | None, prompts_cfg: PromptsConfig,
             sampling: SamplingConfig, batches: list[int], answers_cache: Path | None) -> pd.DataFrame:
    """The model's answers to ``asked`` (rows ``prompt_index``, ``text``, ``batch``) in the engine's
    ``batches``.

    With ``answers_cache`` (a folder; the campaign's ``answers/``) the answers to the whole prompt set are a
    cached step of their own, ``<answers_cache>/<key>``, keyed like every step by the model's digest, the
    prompt set, the system prompt, the sampling config and the code: the engine seeds every batch from the
    sampling seed alone, so a model answers a prompt set the same way whoever it is compared with, and the
    next iteration's evaluation (or the student's) reads the SFT model's and the last policy's answers
    instead of sampling them again. A damaged entry is detected by its manifest and sampled again; two
    evaluations that sample the same entry at once both write it (the same answers), and one that finds it
    replaced under it as it reads samples again."""

    def sample() -> pd.DataFrame:
        model, tokenizer = load_model(model_cfg)
        samples = make_backend(sampling, model, tokenizer, model_cfg.precision, model_cfg.name_or_path).sample(
            list(asked.messages), 1, sampling, batches=batches)
        return samples[["prompt_index", "text", "batch"]]

    if answers_cache is None:
        return sample()
    config = {"model": asdict(model_cfg), "system": system, "prompts": asdict(prompts_cfg),
              "sampling": asdict(sampling)}
    inputs = {"model": model_input(model_cfg)} | (
        {"prompts": file_input(prompts_cfg.path)} if prompts_cfg.path else {})
    out = Path(answers_cache) / key_for(config, inputs)[:20]
    sampled: list[pd.DataFrame] = []

    def body(tmp: Path | None) -> dict:
        sampled.append(sample())
        if tmp is not None:
            sampled[0].to_parquet(tmp / ANSWERS_FILE)
        return {"n_answers": len(sampled[0])}

    whose = f"{model_cfg.name_or_path}{' with the system prompt' if system else ''}"
    # the evaluate step's own frame measures the memory of both
    run_step("answers", out, config, inputs, body, describe=whose, measure=False)
    if sampled:
        return sampled[0]
    log.info("evaluate: the answers of %s are the ones in %s", whose, out)
    try:
        return pd.read_parquet(out / ANSWERS_FILE)
    except OSError:  # replaced under us by an evaluation that sampled the same answers at the same time
        return sample()


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
                  shards: Sequence[str | Path] = (), answers_cache: str | Path | None = None) -> dict:
    """Answer the held-out prompts with the model and each baseline, judge every pair; returns the manifest.

    Baselines naming the same model (iteration 1's ``sft`` and ``previous``) are answered once. With
    ``eval.system_prompt`` every model answers a second time with it, judged the same way. With ``shards``,
    the answers and RM scores are those of :func:`evaluate_shard_step`'s shards. ``answers_cache``: a folder
    where each model's answers are kept and found again (:func:`_sampled`)."""
    unknown = sorted(set(cfg.judges) - set(JUDGES))
    if unknown:
        raise ConfigError("eval.judges", f"unknown judge(s) {unknown}; use some of {', '.join(JUDGES)}")
    if "pairwise" in cfg.judges:
        cfg.pairwise.validate()
    prompts_cfg = prompts_cfg or eval_prompts(cfg)
    prompts = load_prompt_set(prompts_cfg)
    answer_cfg = _answer_sampling(sampling, cfg)
    models = {"model": model_cfg, **baselines}
    # A user's prompt file without instructions or safety tags gives the gold rater nothing to check.
    has_rubric = prompts_cfg.path is None or bool((prompts.instructions != "[]").any() or prompts.safety.any())
    answerers = _answerers(models, cfg)
    conditions = {"": None} | ({WITH_SYSTEM: cfg.system_prompt} if cfg.system_prompt else {})

    def body(tmp: Path) -> dict:
        # 1. Answers: one per prompt and answerer, same sampling seed for all (a paired comparison).
        answered = merged(shards, ["model_order", "prompt_index"]) if shards else _answer_rows(
            answerers, prompts, prompts_cfg, answer_cfg, scorer_cfg, cfg, model_cfg.precision,
            answers_cache=Path(answers_cache) if answers_cache else None)
        by_key = {key: group for key, group in answered.groupby("model", sort=False)}
        if sorted(by_key) != sorted(answerers) or any(len(g) != len(prompts) for g in by_key.values()):
            raise ValueError("evaluate: the answers do not cover every model and prompt (a shard's rows are missing)")
        asked = [messages[-1]["content"] for messages in prompts.messages]
        answers = {cond: {name: list(by_key[model_label(c) + cond].text) for name, c in models.items()}
                   for cond in conditions}
        pd.DataFrame([{"prompt_id": pid, "prompt": q, "model": name, "system_prompt": bool(cond), "text": text}
                      for cond, per_model in answers.items() for name, texts in per_model.items()
                      for pid, q, text in zip(prompts.prompt_id, asked, texts)]).to_parquet(tmp / EVALUATE["answers"])
        judge_pairs_ = make_judge(cfg.pairwise, model_cfg) if "pairwise" in cfg.judges else None
        skipped, results, rows = {}, {}, []
        for cond in conditions:
            scores = _pointwise_scores(cond, answers[cond], by_key, models, prompts, has_rubric, cfg, skipped)
            results[cond] = _judged(prompts, asked, answers[cond], scores, baselines, cfg, judge_pairs_, rows, cond)
        pd.concat(rows, ignore_index=True).to_parquet(tmp / EVALUATE["judgments"])
        plain = results[""]
        violations = {name: violation_rate(list(prompts.safety), texts) for name, texts in answers[""].items()}
        metrics = {"win_rate": plain["win_rate"], "win_rate_by_set": plain["by_set"], "violation_rate": violations,
                   "n_prompts": len(prompts), "mean_score": plain["means"], "skipped_judges": skipped}
        if WITH_SYSTEM in results:  # the system-prompt effect: the same comparisons, every model told the prompt
            metrics["win_rate_with_system"] = results[WITH_SYSTEM]["win_rate"]
            metrics["violation_rate_with_system"] = {
                name: violation_rate(list(prompts.safety), texts) for name, texts in answers[WITH_SYSTEM].items()}
        return metrics

    inputs = _inputs(model_cfg, baselines, prompts_cfg, scorer_cfg, cfg) | shard_inputs(shards)
    config = {"eval": asdict(cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(answer_cfg),
              "baselines": sorted(baselines)}
    return run_step("evaluate", out_dir, config, inputs, body,
                    f"{len(prompts)} held-out prompts vs {', '.join(baselines)}, judges {', '.join(cfg.judges)}"
                    + (" (and with the system prompt)" if cfg.system_prompt else "")
                    + (f", merging {len(shards)} shards" if shards else ""),
                    lambda m: "; ".join(f"{k} {v['win_rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                                        for k, v in m["win_rate"].items()))


def _pointwise_scores(cond: str, answers: dict[str, list[str]], by_key: dict[str, pd.DataFrame],
                      models: dict[str, ModelConfig], prompts: pd.DataFrame, has_rubric: bool, cfg: EvalConfig,
                      skipped: dict) -> dict[str, dict[str, np.ndarray]]:
    """``{model name: {judge: (n,) scores}}`` of the pointwise judges: the gold rater's, and the RMs' read
    from the answer rows (scored where the answers were drawn)."""
    scores: dict[str, dict[str, np.ndarray]] = {name: {} for name in answers}
    if "gold" in cfg.judges:
        if has_rubric:
            for name, texts in answers.items():
                scores[name]["gold"] = gold_scorer(prompts, texts)
        else:
            skipped["gold"] = "the prompts carry no instructions for the gold rater"
            log.warning("evaluate: gold judge skipped: %s", skipped["gold"])
    if "rm" in cfg.judges:
        for name, c in models.items():
            rows = by_key[model_label(c) + cond]
            scores[name] |= {judge_name: rows[judge_name].to_numpy(dtype=float)
                             for judge_name in RM_JUDGES if judge_name in rows}
    return scores


def _judged(prompts: pd.DataFrame, asked: list[str], answers: dict[str, list[str]], scores: dict, baselines: dict,
            cfg: EvalConfig, pairwise, rows: list, cond: str) -> dict:
    """Judgments (appended to ``rows``) and win rates of the model against each baseline by each judge; the
    pairwise judge reads both answers in the order drawn for it, and its verdicts become the scores."""
    win_rate, by_set = {}, {}
    judge_names = list(scores["model"]) + (["pairwise"] if pairwise else [])
    for i, baseline in enumerate(baselines):
        for j, judge_name in enumerate(judge_names):
            seed = cfg.seed * 1000 + 10 * i + j
            model_scores = scores["model"].get(judge_name)
            baseline_scores = scores[baseline].get(judge_name)
            replies = None
            if judge_name == "pairwise":
                first = presentation_order(len(prompts), seed)
                shown_a = np.where(first, np.asarray(answers["model"], object), np.asarray(answers[baseline], object))
                shown_b = np.where(first, np.asarray(answers[baseline], object), np.asarray(answers["model"], object))
                replies, verdicts = judge_pairs(pairwise, asked, list(shown_a), list(shown_b), cfg.pairwise.instruction)
                score_a, score_b = verdict_scores(verdicts)
                model_scores, baseline_scores = np.where(first, score_a, score_b), np.where(first, score_b, score_a)
            judged = judge(prompts, model_scores, baseline_scores, answers["model"], answers[baseline], seed,
                           cfg.tie_eps)
            if replies is not None:
                judged = judged.assign(reply=replies, verdict=verdicts)
            rows.append(judged.assign(baseline=baseline, judge=judge_name, system_prompt=bool(cond)))
            win_rate[f"{baseline}/{judge_name}"] = summarise(judged, judge_name, cfg.n_bootstrap, seed)
            if replies is not None:
                win_rate[f"{baseline}/{judge_name}"]["unparsed"] = int(sum(v == "unparsed" for v in verdicts))
            by_set[f"{baseline}/{judge_name}"] = summarise_by_prompt_set(judged, judge_name, cfg.n_bootstrap, seed)
    means = {judge_name: {name: float(np.mean(s[judge_name])) for name, s in scores.items()}
             for judge_name in scores["model"]}
    return {"win_rate": win_rate, "by_set": by_set, "means": means}


def _inputs(model_cfg: ModelConfig, baselines: dict[str, ModelConfig], prompts_cfg: PromptsConfig,
            scorer_cfg: ScorerConfig, cfg: EvalConfig) -> dict[str, dict]:
    inputs = {"model": model_input(model_cfg), **{f"baseline_{n}": model_input(c) for n, c in baselines.items()},
              **{f"rm_{n}": file_input(p) for n, p in (("helpful", scorer_cfg.helpful), ("safety", scorer_cfg.safety))
                 if p and "rm" in cfg.judges}}
    if "pairwise" in cfg.judges and cfg.pairwise.model:  # an endpoint's model is its server's business
        inputs["pairwise_judge"] = model_input(replace(model_cfg, name_or_path=cfg.pairwise.model))
    if prompts_cfg.path:
        inputs["prompts"] = file_input(prompts_cfg.path)
    return inputs


def evaluate_shard_step(model_cfg: ModelConfig, baselines: dict[str, ModelConfig], sampling: SamplingConfig,
                        scorer_cfg: ScorerConfig, cfg: EvalConfig, shard: Shard, out_dir: str | Path) -> dict:
    """This shard's answers (and RM scores) of :func:`evaluate_step`."""
    prompts_cfg = eval_prompts(cfg)
    prompts = load_prompt_set(prompts_cfg)
    answer_cfg = _answer_sampling(sampling, cfg)
    answerers = _answerers({"model": model_cfg, **baselines}, cfg)
    config = {"eval": asdict(cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(answer_cfg),
              "baselines": sorted(baselines)}
    return shard_step("evaluate", shard, out_dir, config, _inputs(model_cfg, baselines, prompts_cfg, scorer_cfg, cfg),
                      lambda: _answer_rows(answerers, prompts, prompts_cfg, answer_cfg, scorer_cfg, cfg,
                                           model_cfg.precision, shard),
                      f"{len(prompts)} held-out prompts x {len(answerers)} answerers, {shard.name}")


def _answer_sampling(sampling: SamplingConfig, cfg: EvalConfig) -> SamplingConfig:
    return replace(sampling, temperature=cfg.temperature, seed=cfg.seed,
                   max_new_tokens=cfg.max_new_tokens or sampling.max_new_tokens)
