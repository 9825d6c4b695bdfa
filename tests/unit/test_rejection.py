"""Rejection sampling: best-of-K, the all-iterations pool, temperature search, best-of-K gain."""

import numpy as np
import pandas as pd
import pytest

from rlhf.core.models import build_tiny_model
from rlhf.core.rejection import (
    best_of_k,
    best_of_k_gain,
    build_pool,
    expected_max_of_k,
    pool_conversations,
    sample_and_score,
    search_temperature,
)
from rlhf.core.sampling import SamplingConfig, TransformersBackend

PROMPTS = pd.DataFrame({
    "prompt_id": [f"p{i}" for i in range(4)],
    "messages": [[{"role": "user", "content": f"question {i}"}] for i in range(4)],
    "safety": False, "instructions": "[]",
})


@pytest.fixture(scope="module")
def backend():
    model, tok = build_tiny_model(seed=0)
    return TransformersBackend(model, tok, "fp32")


def length_scorer(frame, answers):
    return np.array([len(a) for a in answers], dtype=float)


def test_k1_best_of_is_the_identity(backend):
    samples = sample_and_score(backend, PROMPTS, 1, SamplingConfig(max_new_tokens=6), length_scorer)
    best = best_of_k(samples)
    assert list(best.text) == list(samples.sort_values("prompt_id").text)
    assert list(best.prompt_id) == sorted(PROMPTS.prompt_id)


def test_best_of_k_keeps_the_highest_score_per_prompt(backend):
    samples = sample_and_score(backend, PROMPTS, 4, SamplingConfig(max_new_tokens=8, seed=3), length_scorer)
    best = best_of_k(samples)
    for row in best.itertuples():
        assert row.score == samples[samples.prompt_id == row.prompt_id].score.max()


def test_pool_keeps_the_best_across_iterations_and_rescores():
    def cands(iteration, texts):
        return pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "text": texts, "iteration": iteration,
                             "messages": [[{"role": "user", "content": "q"}]] * 4, "score": 0.0})

    old = cands(1, ["long old answer", "x", "yy", "zz"])
    new = cands(2, ["mid answer", "y", "bbbbbbbbbbbb", "c"])
    pool = build_pool(pd.concat([old, new]), length_scorer)
    assert dict(zip(pool.prompt_id, pool.text)) == {"a": "long old answer", "b": "bbbbbbbbbbbb"}
    assert dict(zip(pool.prompt_id, pool.iteration)) == {"a": 1, "b": 2}
    # The RM changed: a scorer that now prefers short answers re-ranks the old candidates too.
    pool = build_pool(pd.concat([old, new]), lambda f, answers: -length_scorer(f, answers))
    assert dict(zip(pool.prompt_id, pool.text)) == {"a": "x", "b": "c"}
    assert dict(zip(pool.prompt_id, pool.score)) == {"a": -1.0, "b": -1.0}
    # Candidates of the current iteration arrive scored by the current scorer: only older ones are re-scored.
    seen = []

    def counting(frame, answers):
        seen.extend(answers)
        return length_scorer(frame, answers)

    scored_new = new.assign(score=[100.0, 0.0, 0.0, 0.0])  # beats any length score
    pool = build_pool(pd.concat([old, scored_new]), counting, scored_iteration=2)
    assert sorted(seen) == sorted(old.text) and dict(zip(pool.prompt_id, pool.text))["a"] == "mid answer"


def test_temperature_search_picks_the_known_optimum(backend):
    def peaked_at_one(frame, answers):  # a scorer whose best temperature is 1.0 by construction
        return -(frame.temperature.to_numpy() - 1.0) ** 2 + 0.001 * length_scorer(frame, answers)

    best, curve, samples = search_temperature(backend, PROMPTS, [1.4, 0.6, 1.0, 0.8], 2,
                                              SamplingConfig(max_new_tokens=4), peaked_at_one)
    assert best == 1.0
    assert list(curve.temperature) == [0.6, 0.8, 1.0, 1.4]
    assert curve.mean_max.idxmax() == 2 and len(samples) == 4 * 4 * 2


def test_expected_max_of_k_by_hand():
    scores = [1.0, 2.0, 3.0]
    assert expected_max_of_k(scores, 1) == pytest.approx(2.0)  # the mean
    assert expected_max_of_k(scores, 2) == pytest.approx((2 + 3 + 3) / 3)  # subsets {1,2},{1,3},{2,3}
    assert expected_max_of_k(scores, 3) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        expected_max_of_k(scores, 4)


def test_best_of_k_gain_grows_with_k():
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({"prompt_index": np.repeat(np.arange(20), 16), "score": rng.normal(size=320)})
    gain = best_of_k_gain(samples)
    assert list(gain.k) == [1, 2, 4, 8, 16]
    assert gain.gain.is_monotonic_increasing and gain.gain.iloc[0] == pytest.approx(
        gain.mean_max.iloc[0] - gain.mean_median.iloc[0])


def test_pool_conversations_append_the_best_answer_and_count_empty():
    pool = pd.DataFrame({"messages": [[{"role": "user", "content": "q"}]] * 2, "text": ["best", " "]})
    conversations, n_empty = pool_conversations(pool)
    assert conversations == [{"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "best"}]}]
    assert n_empty == 1
