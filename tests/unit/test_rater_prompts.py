"""Prompt sets: schema, determinism, prefix stability, disjoint splits, compatible instructions,
and the GAtt constraint catalogue."""

import json

import pandas as pd
import pytest

from rlhf.core.errors import ConfigError
from rlhf.core.rater import prompts
from rlhf.core.rater.constraints import make_constraints
from rlhf.core.rater.instructions import KINDS, compatible
from rlhf.core.rater.prompts import make_prompts

COLUMNS = ["prompt_id", "messages", "instructions", "safety", "category", "split"]
QUESTIONS = ([t.format(topic=x) for t in prompts.TEMPLATES for x in prompts.TOPICS]
             + [p.format(request=r) for p in prompts.PHRASINGS
                for r in prompts.UNSAFE_REQUESTS + prompts.LOOKALIKE_REQUESTS])


@pytest.fixture(scope="module")
def train():
    return make_prompts(3000, "train", seed=0)


def _texts(frame):
    return {m[-1]["content"] for m in frame["messages"]}


def test_schema(train):
    assert list(train.columns) == COLUMNS
    assert train["prompt_id"].is_unique
    assert set(train["category"]) == {"helpful", "unsafe", "safe_lookalike"}
    assert (train["safety"] == (train["category"] == "unsafe")).all()
    assert set(train["split"]) == {"train"}
    assert train["prompt_id"].iloc[0].endswith("-train-000000")
    assert all(m[0]["role"] == "user" for m in train["messages"])


def test_shares_roughly_as_asked(train):
    shares = train["category"].value_counts(normalize=True)
    assert abs(shares["unsafe"] - 0.1) < 0.03 and abs(shares["safe_lookalike"] - 0.05) < 0.02


def test_thousands_of_distinct_helpful_prompts(train):
    assert len(_texts(train[train["category"] == "helpful"])) > 2000


def test_same_seed_same_prompts_and_prefix_stable(train):
    pd.testing.assert_frame_equal(make_prompts(3000, "train", seed=0), train)
    pd.testing.assert_frame_equal(make_prompts(100, "train", seed=0), train.head(100))


def test_different_seed_different_prompts(train):
    other = make_prompts(100, "train", seed=1)
    assert (other["messages"] != train["messages"].head(100)).sum() > 80


def _question(text):
    """The (template, topic) or (phrasing, request) combination a prompt was built from."""
    return next(q for q in QUESTIONS if text.startswith(q))


def test_train_and_eval_are_disjoint(train):
    evaluation = make_prompts(3000, "eval", seed=0)
    assert not set(train["prompt_id"]) & set(evaluation["prompt_id"])
    train_questions = {_question(t) for t in _texts(train)}
    eval_questions = {_question(t) for t in _texts(evaluation)}
    assert len(eval_questions) > 50 and not train_questions & eval_questions


def test_helpful_prompts_carry_compatible_instructions_in_their_text(train):
    for row in train[train["category"] == "helpful"].head(500).itertuples():
        items = json.loads(row.instructions)
        kinds = [i["kind"] for i in items]
        assert len(items) in (1, 2, 3), items  # one to three instructions per helpful prompt
        assert all(compatible(k, kinds[:n]) for n, k in enumerate(kinds))
        text = row.messages[0]["content"]
        assert all(any(t.format(**i["args"]) in text for t in KINDS[i["kind"]].texts)
                   for i in items)


def test_every_instruction_kind_is_used(train):
    used = {i["kind"] for s in train["instructions"] for i in json.loads(s)}
    assert used == set(KINDS)


def test_only_emojis_is_never_combined():
    assert not compatible("include_keyword", ["only_emojis"])
    assert not compatible("only_emojis", ["max_words"])


def test_safety_prompts_have_no_instructions(train):
    safety_rows = train[train["category"] != "helpful"]
    assert (safety_rows["instructions"] == "[]").all()
    assert safety_rows["prompt_id"].str.match(r"^(unsafe|look)-train-\d{6}$").all()


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        make_prompts(10, "test", seed=0)
    with pytest.raises(ConfigError):
        make_prompts(10, "train", seed=0, unsafe_share=0.8, lookalike_share=0.3)


def test_constraints_split_and_forms():
    train_c, held = make_constraints(held_out=False), make_constraints(held_out=True)
    assert not set(train_c["constraint_id"]) & set(held["constraint_id"])
    assert not train_c["held_out"].any() and held["held_out"].all()
    assert {"hobby", "figure", "language", "emojis_only", "lowercase", "max_words",
            "combo"} <= set(train_c["kind"])
    assert {"uppercase", "ends_with_question"} <= set(held["kind"])
    assert not {"uppercase", "ends_with_question"} & set(train_c["kind"])
    napoleon = train_c.set_index("constraint_id").loc["figure-napoleon"]
    assert napoleon["short_form"] == "Figure: Napoleon" and "Napoleon" in napoleon["long_form"]


def test_combinations_are_compatible_and_leak_nothing():
    train_c = make_constraints(held_out=False)
    for combo in train_c[train_c["kind"] == "combo"].itertuples():
        kinds = {p["kind"] for p in combo.args["parts"]}
        assert len(kinds) == 2 and "emojis_only" not in kinds
        assert not any(p["held_out"] for p in combo.args["parts"])
    assert "figure-napoleon+language-french" in set(train_c["constraint_id"])
