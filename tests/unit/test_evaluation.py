"""Win-rate arithmetic on hand-made judgments, the bootstrap CI, and the judge's recorded random order."""

import numpy as np
import pandas as pd
import pytest

from rlhf.core.evaluation import judge, outcome, summarise, win_rate_stats


def test_all_wins():
    s = win_rate_stats([1, 1, 1, 1])
    assert (s["win"], s["tie"], s["loss"], s["win_rate"], s["ci95"], s["n"]) == (1, 0, 0, 1, [1, 1], 4)


def test_all_ties_count_half():
    s = win_rate_stats([0.5] * 6)
    assert s["win_rate"] == 0.5 and s["tie"] == 1 and s["ci95"] == [0.5, 0.5]


def test_mixed_by_hand():
    # 2 wins, 1 tie, 1 loss: (1 + 1 + 0.5 + 0) / 4 = 0.625
    s = win_rate_stats([1, 1, 0.5, 0])
    assert (s["win"], s["tie"], s["loss"]) == (0.5, 0.25, 0.25)
    assert s["win_rate"] == 0.625
    assert 0 <= s["ci95"][0] <= 0.625 <= s["ci95"][1] <= 1


def test_ci_shrinks_with_n_at_the_same_proportions():
    small = win_rate_stats([1, 1, 0.5, 0] * 5, seed=1)
    large = win_rate_stats([1, 1, 0.5, 0] * 500, seed=1)
    width = lambda s: s["ci95"][1] - s["ci95"][0]  # noqa: E731
    assert small["win_rate"] == large["win_rate"] == 0.625
    assert width(large) < width(small) / 5  # ~1/sqrt(100) = 1/10 in theory
    assert large["ci95"][0] < 0.625 < large["ci95"][1]


def test_bad_outcomes_are_refused():
    with pytest.raises(ValueError, match="empty"):
        win_rate_stats([])
    with pytest.raises(ValueError, match="win"):
        win_rate_stats([2.0])


def test_outcome_with_tie_band():
    assert outcome(np.array([1.0, 0.5, 0.5]), np.array([0.5, 1.0, 0.5 + 1e-9]), 1e-6).tolist() == [1.0, 0.0, 0.5]


def _prompts(n):
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "safety": [False] * n})


def test_order_is_random_recorded_balanced_and_does_not_change_outcomes():
    n = 400
    rng = np.random.default_rng(0)
    model, base = rng.random(n), rng.random(n)
    judged = judge(_prompts(n), model, base, [f"m{i}" for i in range(n)], [f"b{i}" for i in range(n)], 7, 1e-9)
    first = judged.order == "model_first"
    assert 0.4 < first.mean() < 0.6
    # the judge saw the model's answer in slot a exactly when order says so
    assert (judged.answer_a.str.startswith("m") == first).all()
    assert np.allclose(np.where(first, judged.score_a, judged.score_b), model)
    # outcomes do not depend on the order drawn: another seed, same outcomes
    other = judge(_prompts(n), model, base, ["m"] * n, ["b"] * n, 8, 1e-9)
    assert (other.order != judged.order).any() and (other.outcome == judged.outcome).all()
    assert (judged.outcome == np.where(model > base, 1.0, 0.0)).all()


def test_swapping_model_and_baseline_mirrors_the_win_rate():
    n = 50
    a, b = np.linspace(0, 1, n), np.linspace(1, 0, n)
    forward = summarise(judge(_prompts(n), a, b, ["x"] * n, ["y"] * n, 0, 1e-9), "gold", 200, 0)
    backward = summarise(judge(_prompts(n), b, a, ["y"] * n, ["x"] * n, 0, 1e-9), "gold", 200, 0)
    assert forward["win_rate"] + backward["win_rate"] == pytest.approx(1)
    assert forward["win"] == backward["loss"] and forward["judge"] == "gold" and 0 <= forward["model_first_share"] <= 1


def test_win_rates_on_the_helpfulness_and_the_safety_prompts_apart_by_hand():
    from rlhf.core.evaluation import summarise_by_prompt_set

    prompts = pd.DataFrame({"prompt_id": range(6), "safety": [False, False, False, False, True, True]})
    # helpfulness prompts: win, win, tie, loss -> (1 + 1 + 0.5 + 0) / 4; safety prompts: loss, win -> 0.5
    judged = judge(prompts, [1, 1, 0.5, 0, 0, 1], [0, 0, 0.5, 1, 1, 0], ["m"] * 6, ["b"] * 6, 0, 1e-9)
    by_set = summarise_by_prompt_set(judged, "gold", 200, 0)
    assert by_set["helpfulness"]["win_rate"] == 0.625 and by_set["helpfulness"]["n"] == 4
    assert by_set["safety"]["win_rate"] == 0.5 and by_set["safety"]["n"] == 2
    assert set(summarise_by_prompt_set(judged[~judged.safety], "gold", 200, 0)) == {"helpfulness"}


def test_violation_rate_counts_compliance_on_adversarial_prompts_only():
    from rlhf.core.evaluation import violation_rate

    safety = [True, True, True, False]
    answers = ["I can't help with that.", "Sure, here is how.", "Step 1: ...", "I can't help with that."]
    # two of the three adversarial answers comply; the refused safe request is unhelpful, not a violation
    assert violation_rate(safety, answers) == {"rate": pytest.approx(2 / 3), "n": 3}
    assert violation_rate([False, False], ["a", "b"]) is None
