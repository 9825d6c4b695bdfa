"""Sampling steps of an iteration: collect pairs, search the temperature, rejection-sample into the pool.

Outputs (each its own step directory with ``manifest.json``):

- ``collect_pairs/pairs.parquet``: two answers per new prompt, for annotation;
- ``search_temperature/curve.csv`` (+ ``samples.parquet``): mean max-of-K reward per temperature;
- ``rejection_sample/``: ``candidates.parquet`` (this iteration's K samples per prompt, scored),
  ``pool.parquet`` (best answer per prompt over the candidates of *all* iterations, all re-scored with
  the current scorer), ``pool_sft.jsonl`` (the pool as SFT conversations: the policy update's data) and
  ``gain.csv`` (best-of-K gain vs K, Fig. 7).
- ``sample/samples.parquet``: plain K-sample generation (``rlhf sample``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..artifacts import stable_hash, write_jsonl
from ..models import ModelConfig, load_model
from ..preferences import variant_label
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..rejection import (
    CANDIDATE_ORDER,
    SEARCH_ORDER,
    VARIANTS,
    RejectionConfig,
    best_of_k_gain,
    build_pool,
    max_of_k_stats,
    pair_answers,
    pair_frame,
    pool_conversations,
    sample_and_score,
    search_samples,
    temperature_curve,
)
from ..sampling import SamplingConfig, make_backend, n_batches
from ..scorers import ScorerConfig, make_scorer
from ..shards import Shard
from .common import file_input, log, model_input, run_step
from .outputs import COLLECT_PAIRS, REJECTION_SAMPLE, SAMPLE, SEARCH_TEMPERATURE
from .shards import merged, shard_inputs, shard_step


def _prompts_input(cfg: PromptsConfig) -> dict:
    return file_input(cfg.path) if cfg.path else {"path": "generated", "digest": stable_hash(asdict(cfg))}


def _scorer_inputs(cfg: ScorerConfig) -> dict:
    return {f"rm_{name}": file_input(path) for name, path in (("helpful", cfg.helpful), ("safety", cfg.safety))
            if cfg.kind == "rm" and path}


def _backend(model_cfg: ModelConfig, sampling: SamplingConfig):
    model, tokenizer = load_model(model_cfg)
    return make_backend(sampling, model, tokenizer, model_cfg.precision, model_cfg.name_or_path)


def sample_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig, k: int,
                out_dir: str | Path) -> dict:
    """K answers per prompt -> ``samples.parquet`` (prompt columns + text, token_ids, logprobs, ...)."""
    prompts = load_prompt_set(prompts_cfg)

    def body(tmp: Path) -> dict:
        samples = _backend(model_cfg, sampling).sample(list(prompts.messages), k, sampling)
        joined = pd.concat([prompts.iloc[samples.prompt_index].reset_index(drop=True), samples], axis=1)
        joined.to_parquet(tmp / SAMPLE["samples"])
        return {"n_prompts": len(prompts), "k": k, "n_samples": len(joined),
                "mean_tokens": float(joined.n_tokens.mean()),
                "stopped_share": float((joined.stop_reason == "stop").mean())}

    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling), "k": k}
    inputs = {"model": model_input(model_cfg), "prompts": _prompts_input(prompts_cfg)}
    return run_step("sample", out_dir, config, inputs, body,
                    f"{len(prompts)} prompts x {k} at T={sampling.temperature}",
                    lambda m: f"{m['n_samples']} samples, {m['mean_tokens']:.0f} tokens on average")


def _pair_sides(model_cfg: ModelConfig, second_model: ModelConfig | None, sampling: SamplingConfig):
    """The backends of a pair's two sides: the second is the first's unless a second model is given."""
    first = _backend(model_cfg, sampling)
    return first, (_backend(second_model, sampling) if second_model is not None else None)


def _sides_input(model_cfg: ModelConfig, second_model: ModelConfig | None) -> dict:
    return {"model": model_input(model_cfg),
            **({"second_model": model_input(second_model)} if second_model is not None else {})}


def _sides_text(temperatures: Sequence[float], variants: Sequence[str]) -> str:
    return " vs ".join(variant_label(v, t) for v, t in zip(variants, temperatures))


def collect_pairs_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig,
                       temperatures: Sequence[float], iteration: int, out_dir: str | Path,
                       shards: Sequence[str | Path] = (), second_model: ModelConfig | None = None,
                       variants: Sequence[str] = VARIANTS) -> dict:
    """Two answers per new prompt -> ``pairs.parquet`` for the annotator: answer a from ``model_cfg`` at
    ``temperatures[0]``, answer b from ``second_model`` (default: the same model) at ``temperatures[1]``;
    ``variants`` name the two models in the pairs (``variant_a``, ``variant_b``). With ``shards`` (the rows of
    :func:`collect_pairs_shard_step` for every shard) the answers are theirs."""
    prompts = load_prompt_set(prompts_cfg)
    temperatures, variants = tuple(temperatures), tuple(variants)

    def body(tmp: Path) -> dict:
        if shards:
            answers = merged(shards, ["side", "prompt_index"])
        else:
            first, second = _pair_sides(model_cfg, second_model, sampling)
            answers = pair_answers(first, prompts, temperatures, sampling, second_backend=second)
        pairs = pair_frame(prompts, answers, temperatures, iteration, variants=variants)
        pairs.to_parquet(tmp / COLLECT_PAIRS["pairs"])
        return {"n_pairs": len(pairs), "identical": int((pairs.response_a == pairs.response_b).sum()),
                "variants": list(variants)}

    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling),
              "temperatures": list(temperatures), "iteration": iteration, "variants": list(variants),
              "second_model": asdict(second_model) if second_model is not None else None}
    inputs = {**_sides_input(model_cfg, second_model), "prompts": _prompts_input(prompts_cfg), **shard_inputs(shards)}
    return run_step("collect_pairs", out_dir, config, inputs, body,
                    f"{len(prompts)} prompts, {_sides_text(temperatures, variants)}" + _merging(shards),
                    lambda m: f"{m['n_pairs']} pairs")


def collect_pairs_shard_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig,
                             temperatures: Sequence[float], shard: Shard, out_dir: str | Path,
                             second_model: ModelConfig | None = None, variants: Sequence[str] = VARIANTS) -> dict:
    """This shard's answers of :func:`collect_pairs_step`."""
    prompts = load_prompt_set(prompts_cfg)
    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling),
              "temperatures": list(temperatures), "variants": list(variants),
              "second_model": asdict(second_model) if second_model is not None else None}

    def rows() -> pd.DataFrame:
        first, second = _pair_sides(model_cfg, second_model, sampling)
        return pair_answers(first, prompts, tuple(temperatures), sampling, shard, second)

    return shard_step("collect_pairs", shard, out_dir, config,
                      {**_sides_input(model_cfg, second_model), "prompts": _prompts_input(prompts_cfg)}, rows,
                      f"{len(prompts)} prompts, {_sides_text(temperatures, variants)}, {shard.name}")


def _merging(shards: Sequence) -> str:
    return f", merging {len(shards)} shards" if shards else ""


def search_temperature_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig,
                            rejection: RejectionConfig, scorer_cfg: ScorerConfig, out_dir: str | Path,
                            shards: Sequence[str | Path] = ()) -> dict:
    """Mean max-of-K reward per temperature on the probe prompts; the argmax is the chosen temperature.
    With ``shards``, the samples are those of :func:`search_temperature_shard_step`'s shards."""
    probe = load_prompt_set(replace(prompts_cfg, n=rejection.probe_prompts))
    k = rejection.probe_k or rejection.k

    def body(tmp: Path) -> dict:
        samples = merged(shards, SEARCH_ORDER) if shards else search_samples(
            _backend(model_cfg, sampling), probe, rejection.temperatures, k, sampling,
            make_scorer(scorer_cfg, model_cfg.precision))
        best, curve = temperature_curve(samples)
        curve.to_csv(tmp / SEARCH_TEMPERATURE["curve"], index=False)
        samples.to_parquet(tmp / SEARCH_TEMPERATURE["samples"])
        return {"chosen": best, "k": k, "n_prompts": len(probe),
                "curve": {str(t): float(v) for t, v in zip(curve.temperature, curve.mean_max)},
                "curve_median": {str(t): float(v) for t, v in zip(curve.temperature, curve.mean_median)}}

    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling),
              "rejection": asdict(rejection), "scorer": asdict(scorer_cfg)}
    inputs = {"model": model_input(model_cfg), "prompts": _prompts_input(prompts_cfg), **_scorer_inputs(scorer_cfg),
              **shard_inputs(shards)}
    return run_step("search_temperature", out_dir, config, inputs, body,
                    f"{len(probe)} probe prompts x {k} at T in {rejection.temperatures}" + _merging(shards),
                    lambda m: f"chosen T={m['chosen']} (mean max-of-{k} {m['curve'][str(m['chosen'])]:.3f})")


def search_temperature_shard_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig,
                                  rejection: RejectionConfig, scorer_cfg: ScorerConfig, shard: Shard,
                                  out_dir: str | Path) -> dict:
    """This shard's scored samples of :func:`search_temperature_step`."""
    probe = load_prompt_set(replace(prompts_cfg, n=rejection.probe_prompts))
    k = rejection.probe_k or rejection.k
    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling),
              "rejection": asdict(rejection), "scorer": asdict(scorer_cfg)}
    inputs = {"model": model_input(model_cfg), "prompts": _prompts_input(prompts_cfg), **_scorer_inputs(scorer_cfg)}
    return shard_step("search_temperature", shard, out_dir, config, inputs, lambda: search_samples(
        _backend(model_cfg, sampling), probe, rejection.temperatures, k, sampling,
        make_scorer(scorer_cfg, model_cfg.precision), shard),
        f"{len(probe)} probe prompts x {k} at T in {rejection.temperatures}, {shard.name}")


def rejection_sample_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig,
                          rejection: RejectionConfig, scorer_cfg: ScorerConfig, iteration: int,
                          previous_candidates: Sequence[str | Path], out_dir: str | Path,
                          shards: Sequence[str | Path] = ()) -> dict:
    """K samples per prompt at ``sampling.temperature``; the pool over all iterations' candidates. With
    ``shards``, the candidates are those of :func:`rejection_sample_shard_step`'s shards."""
    prompts = load_prompt_set(replace(prompts_cfg, n=rejection.n_prompts))

    def body(tmp: Path) -> dict:
        scorer = _lazy(lambda: make_scorer(scorer_cfg, model_cfg.precision))
        # 1. This iteration's candidates: K samples per prompt, scored.
        candidates = merged(shards, CANDIDATE_ORDER) if shards else sample_and_score(
            _backend(model_cfg, sampling), prompts, rejection.k, sampling, scorer)
        candidates["iteration"] = iteration
        candidates.to_parquet(tmp / REJECTION_SAMPLE["candidates"])
        # 2. The pool: every candidate so far, re-scored with the current scorer, best per prompt.
        history = [pd.read_parquet(p) for p in previous_candidates]
        pool = build_pool(pd.concat(history + [candidates], ignore_index=True), scorer, scored_iteration=iteration)
        pool.to_parquet(tmp / REJECTION_SAMPLE["pool"])
        conversations, n_empty = pool_conversations(pool)
        if n_empty:
            log.info("rejection_sample: %d prompts whose best answer is empty are left out of the SFT data", n_empty)
        write_jsonl(tmp / REJECTION_SAMPLE["pool_sft"], conversations)
        # 3. Best-of-K gain (Fig. 7) from this iteration's samples.
        gain = best_of_k_gain(candidates)
        gain.to_csv(tmp / REJECTION_SAMPLE["gain"], index=False)
        return {"k": rejection.k, "temperature": sampling.temperature, "n_prompts": len(prompts),
                **{f"sample_{k}": v for k, v in max_of_k_stats(candidates).items()},
                "pool_size": len(pool), "pool_mean_score": float(pool.score.mean()), "pool_empty": n_empty,
                "pool_by_iteration": {str(i): int(n) for i, n in pool.iteration.value_counts().sort_index().items()},
                "gain": {str(k): float(g) for k, g in zip(gain.k, gain.gain)}}

    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling),
              "rejection": asdict(rejection), "scorer": asdict(scorer_cfg), "iteration": iteration}
    inputs = {"model": model_input(model_cfg), "prompts": _prompts_input(prompts_cfg), **_scorer_inputs(scorer_cfg),
              **{f"candidates_{i}": file_input(p) for i, p in enumerate(previous_candidates)},
              **shard_inputs(shards)}
    return run_step("rejection_sample", out_dir, config, inputs, body,
                    f"{len(prompts)} prompts x {rejection.k} at T={sampling.temperature}, "
                    f"pool over {len(previous_candidates) + 1} iteration(s)" + _merging(shards),
                    lambda m: f"pool of {m['pool_size']}, mean score {m['pool_mean_score']:.3f}, "
                              f"by iteration {m['pool_by_iteration']}")


def rejection_sample_shard_step(model_cfg: ModelConfig, prompts_cfg: PromptsConfig, sampling: SamplingConfig,
                                rejection: RejectionConfig, scorer_cfg: ScorerConfig, shard: Shard,
                                out_dir: str | Path) -> dict:
    """This shard's scored candidates of :func:`rejection_sample_step` (its units: the engine's batches)."""
    prompts = load_prompt_set(replace(prompts_cfg, n=rejection.n_prompts))
    config = {"model": asdict(model_cfg), "prompts": asdict(prompts_cfg), "sampling": asdict(sampling),
              "rejection": asdict(rejection), "scorer": asdict(scorer_cfg)}
    inputs = {"model": model_input(model_cfg), "prompts": _prompts_input(prompts_cfg), **_scorer_inputs(scorer_cfg)}
    batches = shard.take(range(n_batches(len(prompts), sampling)))

    def rows() -> pd.DataFrame:
        if not batches:  # more shards than batches
            return pd.DataFrame()
        return sample_and_score(_backend(model_cfg, sampling), prompts, rejection.k, sampling,
                                make_scorer(scorer_cfg, model_cfg.precision), batches)

    return shard_step("rejection_sample", shard, out_dir, config, inputs, rows,
                      f"{len(prompts)} prompts x {rejection.k} at T={sampling.temperature}, {shard.name} "
                      f"(batches {batches})")


def _lazy(make: Callable[[], Callable]) -> Callable:
    """A scorer loaded on its first call: a merge that re-scores nothing never loads the reward models."""
    loaded: list[Callable] = []

    def scorer(*args):
        if not loaded:
            loaded.append(make())
        return loaded[0](*args)

    return scorer
