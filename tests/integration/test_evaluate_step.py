"""The evaluate step on tiny models: answers, judgments and win rates in the manifest; a rerun is cached."""

import json
from dataclasses import replace

import pandas as pd
import pytest

from rlhf.core.errors import ConfigError
from rlhf.core.evaluation import EvalConfig
from rlhf.core.models import ModelConfig
from rlhf.core.reward.model import reward_model_from_policy, save_reward_model
from rlhf.core.sampling import SamplingConfig
from rlhf.core.scorers import ScorerConfig
from rlhf.core.steps.evaluate import evaluate_step

TINY, OTHER = ModelConfig(name_or_path="tiny"), ModelConfig(name_or_path="tiny", tiny_seed=1)
CFG = EvalConfig(n_prompts=6, n_bootstrap=100, max_new_tokens=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def rm_dir(tmp_path):
    rm, tokenizer = reward_model_from_policy(TINY, name="helpful", seed=0, max_length=64)
    save_reward_model(rm, tokenizer, tmp_path / "rm")
    return str(tmp_path / "rm")


def test_win_rates_per_baseline_and_judge(tmp_path, rm_dir):
    out = tmp_path / "evaluate"
    manifest = evaluate_step(TINY, {"sft": TINY, "other": OTHER}, None, SamplingConfig(), ScorerConfig(helpful=rm_dir),
                             CFG, out)
    rates = manifest["metrics"]["win_rate"]
    assert set(rates) == {"sft/gold", "sft/rm", "other/gold", "other/rm"}
    for result in rates.values():
        assert result["n"] == 6 and result["ci95"][0] <= result["win_rate"] <= result["ci95"][1]
    # the same model, same seed: identical answers, every judgment a tie
    assert rates["sft/gold"]["tie"] == 1 and rates["sft/rm"]["tie"] == 1
    answers = pd.read_parquet(out / "answers.parquet")
    assert len(answers) == 18 and set(answers.model) == {"model", "sft", "other"}
    judged = pd.read_parquet(out / "judgments.parquet")
    assert len(judged) == 24 and set(judged.order) <= {"model_first", "baseline_first"}
    # a rerun with the same inputs is a cache hit
    again = evaluate_step(TINY, {"sft": TINY, "other": OTHER}, None, SamplingConfig(), ScorerConfig(helpful=rm_dir),
                          CFG, out)
    assert again == json.loads((out / "manifest.json").read_text()) and again["created"] == manifest["created"]


def test_unknown_judge_and_missing_rm_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="eval.judges"):
        evaluate_step(TINY, {"sft": TINY}, None, SamplingConfig(), ScorerConfig(), replace(CFG, judges=["llm"]),
                      tmp_path / "e")
    with pytest.raises(ConfigError, match="scorer.helpful"):
        evaluate_step(TINY, {"sft": TINY}, None, SamplingConfig(), ScorerConfig(), CFG, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_each_models_answers_are_kept_and_read_again_by_the_next_evaluation(tmp_path, rm_dir):
    """``answers_cache``: iteration 2's evaluation reads the answers of the models iteration 1 sampled (the
    SFT model, the previous policy) instead of sampling them again, with the same results as sampling them;
    another sampling config is another entry, and a damaged entry is sampled again."""
    cache, scorer, new = tmp_path / "answers", ScorerConfig(helpful=rm_dir), ModelConfig("tiny", tiny_seed=2)
    first = evaluate_step(TINY, {"sft": OTHER}, None, SamplingConfig(), scorer, CFG, tmp_path / "it1",
                          answers_cache=cache)
    entries = sorted(cache.iterdir())
    assert len(entries) == 2 and all((e / "manifest.json").is_file() for e in entries)  # one per model
    written = {e.name: (e / "answers.parquet").stat().st_mtime_ns for e in entries}
    plain = evaluate_step(TINY, {"sft": OTHER}, None, SamplingConfig(), scorer, CFG, tmp_path / "it1-plain")
    assert first["metrics"]["win_rate"] == plain["metrics"]["win_rate"]

    second = evaluate_step(new, {"sft": OTHER, "previous": TINY}, None, SamplingConfig(), scorer, CFG,
                           tmp_path / "it2", answers_cache=cache)
    assert len(list(cache.iterdir())) == 3  # only the new policy was sampled
    assert {e.name: (e / "answers.parquet").stat().st_mtime_ns for e in entries} == written
    it1, it2 = (pd.read_parquet(tmp_path / d / "answers.parquet") for d in ("it1", "it2"))
    assert list(it2[it2.model == "previous"].text) == list(it1[it1.model == "model"].text)
    assert list(it2[it2.model == "sft"].text) == list(it1[it1.model == "sft"].text)
    sampled = evaluate_step(new, {"sft": OTHER, "previous": TINY}, None, SamplingConfig(), scorer, CFG,
                            tmp_path / "it2-plain")
    assert second["metrics"]["win_rate"] == sampled["metrics"]["win_rate"]  # the RM judge scores them anew too

    # another sampling seed: new answers, new entries
    evaluate_step(TINY, {"sft": OTHER}, None, SamplingConfig(), scorer, replace(CFG, seed=CFG.seed + 1),
                  tmp_path / "seed", answers_cache=cache)
    assert len(list(cache.iterdir())) == 5

    # a damaged entry is detected by its manifest and sampled again
    damaged = entries[0] / "answers.parquet"
    damaged.write_bytes(b"not a parquet file")
    again = evaluate_step(TINY, {"sft": OTHER}, None, SamplingConfig(), scorer, CFG, tmp_path / "it1-again",
                          answers_cache=cache)
    assert again["metrics"]["win_rate"] == first["metrics"]["win_rate"]
    assert pd.read_parquet(damaged).shape[0] == CFG.n_prompts
