"""The bundled demo SFT set: the shipped file is exactly the generator's output, and every answer really
follows the instruction in its user turn (the simulated rater later rewards exactly that)."""

import re
from collections import Counter

import pytest

from rlhf.core.artifacts import read_jsonl
from rlhf.core.assets import asset_path
from rlhf.core.data import load_conversations
from rlhf.core.demo_data import TOPICS, bullet_points, main, make_sft_conversations
from rlhf.core.rater.instructions import check_instruction

ROWS = make_sft_conversations(seed=0)


def of_kind(kind):
    rows = [r for r in ROWS if r["instruction"] == kind]
    assert rows, f"no {kind} conversations"
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def test_shipped_file_is_the_generator_output(tmp_path):
    shipped = asset_path("sft_demo.jsonl")
    assert read_jsonl(shipped) == ROWS
    fresh = tmp_path / "sft_demo.jsonl"
    main([str(fresh)])  # the regeneration command
    assert fresh.read_bytes() == shipped.read_bytes(), \
        "regenerate with: python -m rlhf.core.demo_data rlhf_core/assets/sft_demo.jsonl"


def test_generator_is_deterministic_and_seeded():
    assert make_sft_conversations(seed=0) == ROWS
    assert make_sft_conversations(seed=1) != ROWS


def test_missing_asset_names_the_folder():
    with pytest.raises(FileNotFoundError, match="no bundled asset 'nope.jsonl'"):
        asset_path("nope.jsonl")


def test_the_platform_loader_accepts_the_file():
    assert len(load_conversations(asset_path("sft_demo.jsonl"))) == len(ROWS)


def test_roles_alternate_from_user_with_content():
    for row in ROWS:
        assert row["source"] == "demo"
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(m["content"].strip() for m in row["messages"])


def test_sizes():
    assert len(ROWS) >= 150
    assert sum(len(r["messages"]) == 4 for r in ROWS) >= 20
    assert all(len(r["messages"]) == 4 for r in ROWS if r["instruction"] == "one_sentence")
    assert max(sum(len(m["content"].split()) for m in r["messages"]) for r in ROWS) <= 120
    assert len(set(Counter(r["instruction"] for r in ROWS))) == 9


def test_every_topic_splits_into_three_bullet_points():
    for _, _, answer in TOPICS:
        assert len(bullet_points(answer)) == 3


def test_lowercase():
    for prompt, answer in of_kind("lowercase"):
        assert prompt.endswith("Answer in all lowercase.")
        assert answer == answer.lower()


def test_exactly_three_bullets():
    for prompt, answer in of_kind("bullet_count"):
        assert "exactly 3 bullet points" in prompt
        lines = answer.split("\n")
        assert len(lines) == 3 and all(line.startswith("- ") and len(line) > 2 for line in lines)


def test_word_limit():
    for prompt, answer in of_kind("max_words"):
        limit = int(re.search(r"at most (\d+) words", prompt).group(1))
        assert len(answer.split()) <= limit


def test_end_phrase():
    for prompt, answer in of_kind("end_with"):
        phrase = re.search(r"with the phrase '(.+)'$", prompt).group(1)
        assert answer.endswith(phrase)


def test_keyword():
    for prompt, answer in of_kind("include_keyword"):
        keyword = re.search(r"Include the word '(\w+)'", prompt).group(1)
        assert re.search(rf"\b{keyword}\b", answer)


def test_title():
    for prompt, answer in of_kind("title_brackets"):
        assert "<<title>>" in prompt
        assert answer.startswith("<<") and ">>" in answer.split("\n")[0]


def test_one_sentence_summary_is_the_first_sentence():
    for row in ROWS:
        if row["instruction"] == "one_sentence":
            first, follow_up = row["messages"][1]["content"], row["messages"][3]["content"]
            assert "one sentence" in row["messages"][2]["content"]
            assert first.startswith(follow_up) and len(re.findall(r"[.!?](\s|$)", follow_up)) == 1


@pytest.mark.parametrize("kind,args_from_prompt", [
    ("lowercase", lambda p: {}),
    ("bullet_count", lambda p: {"n": 3}),
    ("max_words", lambda p: {"n": int(re.search(r"at most (\d+)", p).group(1))}),
    ("end_with", lambda p: {"phrase": re.search(r"phrase '(.+)'$", p).group(1)}),
    ("include_keyword", lambda p: {"keyword": re.search(r"word '(\w+)'", p).group(1)}),
    ("title_brackets", lambda p: {}),
])
def test_the_simulated_rater_agrees(kind, args_from_prompt):
    for prompt, answer in of_kind(kind):
        assert check_instruction(answer, {"kind": kind, "args": args_from_prompt(prompt)}), (prompt, answer)


def test_harmful_requests_are_refused_and_none_is_a_rater_prompt():
    from rlhf.core.rater.gold import is_refusal
    from rlhf.core.rater.prompts import UNSAFE_REQUESTS

    refused = of_kind("refusal")
    assert len(refused) == 40 and all(is_refusal(answer) for _, answer in refused)
    assert not any(request in prompt for prompt, _ in refused for request in UNSAFE_REQUESTS)
    assert not any(is_refusal(m["content"]) for r in ROWS if r["instruction"] != "refusal" for m in r["messages"])
