"""The pairwise judge's pieces by hand: reading a verdict, mapping it to the model, the position bias."""

import numpy as np
import pandas as pd
import pytest

from rlhf.core.errors import ConfigError
from rlhf.core.evaluation import judge, presentation_order, summarise
from rlhf.core.pairwise import PairwiseConfig, judge_messages, parse_verdict, verdict_scores


@pytest.mark.parametrize("reply, verdict", [
    ("A", "a"), ("b", "b"), (" B.", "b"), ("Response A is better", "a"), ("Tie", "tie"),
    ("Both are fine: a tie.", "tie"), ("I think B, not A", "b"), ("ABBA", None), ("", None), ("Neither", None),
])
def test_the_verdict_is_the_first_standalone_letter_or_tie(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_verdicts_become_scores_of_the_shown_positions():
    a, b = verdict_scores(["a", "b", "tie", "unparsed"])
    assert a.tolist() == [1.0, 0.0, 0.5, 0.5] and b.tolist() == [0.0, 1.0, 0.5, 0.5]


def test_the_judge_reads_the_request_and_both_answers_in_the_order_shown():
    [turn] = judge_messages("Name a fruit.", "apple", "rock", "Pick one.")
    text = turn["content"]
    assert turn["role"] == "user" and text.startswith("Pick one.")
    assert text.index("Name a fruit.") < text.index("[Response A]\napple") < text.index("[Response B]\nrock")


@pytest.mark.parametrize("cfg, field", [
    (PairwiseConfig(), "eval.pairwise.url"),  # neither
    (PairwiseConfig(url="http://127.0.0.1:1/v1", model="tiny"), "eval.pairwise.url"),  # both
    (PairwiseConfig(url="127.0.0.1:8000"), "eval.pairwise.url"),  # no scheme
])
def test_the_judge_needs_exactly_one_backend(cfg, field):
    with pytest.raises(ConfigError, match=field):
        cfg.validate()


def test_a_judge_that_always_picks_a_wins_the_model_exactly_where_it_is_shown_first():
    """Position bias by hand: 8 prompts, seed 3; an always-"A" judge gives the model 1 where it came first and 0
    where it came second, so the two conditional win rates are 1 and 0 and the overall one the first-share."""
    n, seed = 8, 3
    first = presentation_order(n, seed)
    a, b = verdict_scores(["a"] * n)
    model_scores, baseline_scores = np.where(first, a, b), np.where(first, b, a)
    prompts = pd.DataFrame({"prompt_id": range(n), "safety": [False] * n})
    judged = judge(prompts, model_scores, baseline_scores, ["m"] * n, ["b"] * n, seed, 1e-6)
    assert (judged.order == np.where(first, "model_first", "baseline_first")).all()  # the same coins
    result = summarise(judged, "pairwise", 100, seed)
    assert result["win_rate_when_first"] == 1.0 and result["win_rate_when_second"] == 0.0
    assert result["win_rate"] == pytest.approx(first.mean()) == result["model_first_share"]
    assert 0 < first.sum() < n  # both positions occur with this seed, or the test would say nothing
