"""The sampling steps on the tiny model with the gold scorer: outputs, the cross-iteration pool, caching."""

import json
import logging

import pandas as pd

from rlhf.core.models import ModelConfig
from rlhf.core.prompt_sets import PromptsConfig
from rlhf.core.rejection import RejectionConfig
from rlhf.core.sampling import SamplingConfig
from rlhf.core.scorers import ScorerConfig, gold_scorer
from rlhf.core.steps.rejection import collect_pairs_step, rejection_sample_step, search_temperature_step

PROMPTS = PromptsConfig(n=6, seed=0)
SAMPLING = SamplingConfig(max_new_tokens=12, batch_prompts=8)
REJECTION = RejectionConfig(k=3, temperatures=[0.7, 1.3], probe_prompts=3, n_prompts=6)
GOLD = ScorerConfig(kind="gold")


def test_search_then_rejection_sample_over_two_iterations(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rlhf")
    search = search_temperature_step(ModelConfig("tiny"), PROMPTS, SAMPLING, REJECTION, GOLD, tmp_path / "st")
    curve = pd.read_csv(tmp_path / "st" / "curve.csv")
    assert list(curve.temperature) == [0.7, 1.3]
    assert search["metrics"]["chosen"] == curve.temperature[curve.mean_max.idxmax()]

    first = rejection_sample_step(ModelConfig("tiny", tiny_seed=0), PROMPTS, SAMPLING, REJECTION, GOLD, 1, [],
                                  tmp_path / "it1")
    c1 = pd.read_parquet(tmp_path / "it1" / "candidates.parquet")
    assert len(c1) == 6 * 3 and set(c1.iteration) == {1}
    # A different policy in iteration 2: the pool picks per prompt among both iterations' candidates.
    second = rejection_sample_step(ModelConfig("tiny", tiny_seed=5), PROMPTS, SAMPLING, REJECTION, GOLD, 2,
                                   [tmp_path / "it1" / "candidates.parquet"], tmp_path / "it2")
    c2 = pd.read_parquet(tmp_path / "it2" / "candidates.parquet")
    pool = pd.read_parquet(tmp_path / "it2" / "pool.parquet")
    both = pd.concat([c1, c2])
    assert len(pool) == 6
    for row in pool.itertuples():
        assert row.score == both[both.prompt_id == row.prompt_id].score.max()
    assert sum(second["metrics"]["pool_by_iteration"].values()) == 6
    assert pool.score.tolist() == gold_scorer(pool, list(pool.text)).tolist()  # scored by the current scorer
    lines = (tmp_path / "it2" / "pool_sft.jsonl").read_text().splitlines()
    assert len(lines) + second["metrics"]["pool_empty"] == 6
    assert json.loads(lines[0])["messages"][-1]["role"] == "assistant"
    assert list(pd.read_csv(tmp_path / "it2" / "gain.csv").k) == [1, 2]

    caplog.clear()
    again = rejection_sample_step(ModelConfig("tiny", tiny_seed=0), PROMPTS, SAMPLING, REJECTION, GOLD, 1, [],
                                  tmp_path / "it1")
    assert again["key"] == first["key"] and "rejection_sample: cached" in caplog.text


def test_collect_pairs_gives_two_answers_per_prompt(tmp_path):
    collect_pairs_step(ModelConfig("tiny"), PROMPTS, SAMPLING, [0.7, 1.2], 1, tmp_path / "pairs")
    pairs = pd.read_parquet(tmp_path / "pairs" / "pairs.parquet")
    assert len(pairs) == 6 and pairs.pair_id.is_unique
    assert {"response_a", "response_b", "instructions", "safety", "iteration"} <= set(pairs.columns)
    assert (pairs.temperature_a == 0.7).all() and (pairs.response_a != pairs.response_b).any()
