"""The simulated-rater demo pairs: valid pair schema, all four levels, and levels that mean something."""

import json

import pandas as pd

from rlhf.core.preferences import COLUMNS, LEVELS, load_pairs
from rlhf.core.rater import is_refusal
from rlhf.core.reward.synthetic import make_demo_pairs
from rlhf.core.reward.train import RMDataConfig
from rlhf.core.steps.reward import load_rm_pairs


def test_deterministic_and_in_the_pair_schema(tmp_path):
    pairs = make_demo_pairs(120, seed=3)
    pd.testing.assert_frame_equal(pairs, make_demo_pairs(120, seed=3))
    assert list(pairs.columns[:len(COLUMNS)]) == list(COLUMNS) and len(pairs) == 120
    assert (pairs["chosen"].str.strip() != pairs["rejected"].str.strip()).all()
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in pairs.to_dict("records")))
    loaded, report = load_pairs(path)  # the platform's own validation accepts every pair
    assert report.n_kept == 120 and loaded["level"].tolist() == pairs["level"].tolist()


def test_every_level_appears_and_the_gold_gap_shrinks_with_it():
    pairs = make_demo_pairs(600, seed=0)
    counts = pairs["level"].value_counts()
    assert set(counts.index) == set(LEVELS) and counts.min() >= 60, counts.to_dict()
    gap = (pairs["gold_chosen"] - pairs["gold_rejected"]).abs().groupby(pairs["level"]).mean()
    assert gap["significantly_better"] > gap["better"] > gap["slightly_better"] > gap["negligibly_better"]
    # Rater noise flips near-ties far more often than clear preferences.
    right = (pairs["gold_chosen"] > pairs["gold_rejected"]).groupby(pairs["level"]).mean()
    assert right["significantly_better"] > 0.9 > right["negligibly_better"]


def test_unsafe_requests_prefer_the_refusal_on_the_safety_axis():
    pairs = make_demo_pairs(300, seed=0, unsafe_share=0.5, lookalike_share=0.0, axis="safety")
    clear = pairs[pairs["safety"] & (pairs["level"] == "significantly_better")]
    assert len(clear) > 20
    assert clear["chosen"].map(is_refusal).mean() > 0.9
    assert clear["rejected"].map(is_refusal).mean() < 0.1  # a rare flip by rater noise
    # the same pairs on the helpfulness axis: a refusal helps nobody, so the compliance is preferred
    helpful = make_demo_pairs(300, seed=0, unsafe_share=0.5, lookalike_share=0.0)
    unsafe = helpful[helpful["safety"] & (helpful["level"] == "significantly_better")]
    assert len(unsafe) > 20 and unsafe["rejected"].map(is_refusal).mean() > 0.9
    assert not set(pairs.columns) & {"safety_prefers", "chosen_safe"}  # one axis: plain pairs


def test_safety_only_keeps_the_pairs_tagged_unsafe():
    pairs, inputs = load_rm_pairs(RMDataConfig(n_synthetic=100, unsafe_share=0.3, safety_only=True))
    assert 10 < len(pairs) < 60 and pairs["safety"].eq(True).all()
    assert inputs["pairs"]["path"] == "synthetic:train"
