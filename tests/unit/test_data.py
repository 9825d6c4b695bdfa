"""Conversation files: every bad-input case names file, line, field and what to do; .jsonl.gz; skipping."""

import gzip
import json
import logging

import pandas as pd
import pytest

from rlhf.core.data import load_conversations, load_prompts, tokenize_conversations
from rlhf.core.errors import ConfigError, DataError, DataErrors

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, field, message", [
    ({"messages": [{"content": "Hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role",
     "missing role"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
     "messages[1].content", "empty assistant content"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "x"}]}, "messages[1].role",
     "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role", "expected a user turn"),
    ({"text": "hello"}, "messages", "expected an object with a 'messages' list"),
    (GOOD | {"loss_mode": "first"}, "loss_mode", "unknown loss_mode 'first'"),
])
def test_each_bad_row_is_reported_with_line_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "chats.jsonl", [GOOD, row])
    with pytest.raises(DataErrors) as info:
        load_conversations(path)
    (err,) = info.value.errors
    assert (err.line, err.field) == (2, field)
    assert message in str(err) and str(path) in str(err) and "fix or remove this line" in str(err)


def test_not_json_and_all_errors_listed_together(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [GOOD, "{not json", GOOD, {"messages": []}])
    with pytest.raises(DataErrors) as info:
        load_conversations(path)
    assert [e.line for e in info.value.errors] == [2]  # JSON errors stop before row validation
    assert "not valid JSON" in str(info.value)
    path = write_jsonl(tmp_path / "chats2.jsonl", [{"messages": []}, GOOD, {"messages": "x"}])
    with pytest.raises(DataErrors) as info:
        load_conversations(path)
    assert [e.line for e in info.value.errors] == [1, 3]


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_conversations(tmp_path / "x.csv")


def test_parquet_rows_read_back(tmp_path):
    path = tmp_path / "chats.parquet"
    pd.DataFrame([GOOD, GOOD]).to_parquet(path)
    rows = load_conversations(path)
    assert rows[1]["messages"] == GOOD["messages"]


def test_overlong_truncated_or_dropped_with_counts(tiny_tokenizer):
    long = {"messages": [{"role": "user", "content": "q" * 50}, {"role": "assistant", "content": "a" * 50}]}
    late = {"messages": [{"role": "user", "content": "q" * 80}, {"role": "assistant", "content": "a"}]}
    convs = [GOOD, long, late]
    examples, report = tokenize_conversations(tiny_tokenizer, convs, max_length=70, overlong="truncate")
    # `long` keeps its start (prompt + some answer); `late` has no target left within 70 tokens.
    assert (report.n_kept, report.n_truncated, report.n_dropped_overlong) == (2, 1, 1)
    assert report.dropped_rows == [2] and len(examples[1][0]) == 70
    _, report = tokenize_conversations(tiny_tokenizer, convs, max_length=70, overlong="drop")
    assert (report.n_kept, report.n_truncated, report.n_dropped_overlong) == (1, 0, 2)
    assert "2 dropped as over-long" in report.summary()


def write_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_gz_conversations_and_prompts(tmp_path):
    rows = load_conversations(write_gz(tmp_path / "chats.jsonl.gz", [GOOD, "", {**GOOD, "id": 2}]))
    assert [r.get("id") for r in rows] == [None, 2] and rows[0]["messages"] == GOOD["messages"]
    prompts = load_prompts(write_gz(tmp_path / "prompts.jsonl.gz", [{"messages": GOOD["messages"][:1]}]))
    assert prompts.loc[0, "prompt_id"] == "prompts.jsonl-1" and prompts.loc[0, "messages"] == GOOD["messages"][:1]
    with pytest.raises(DataErrors) as info:
        load_conversations(write_gz(tmp_path / "bad.jsonl.gz", [GOOD, "{no"]))
    assert [(e.line, e.path) for e in info.value.errors] == [(2, str(tmp_path / "bad.jsonl.gz"))]


def test_unsupported_suffix_lists_the_accepted_formats(tmp_path):
    (tmp_path / "x.txt").write_text("{}\n")
    with pytest.raises(DataError) as info:
        load_conversations(tmp_path / "x.txt")
    assert str(info.value) == (f"{tmp_path / 'x.txt'}: unsupported file type '.txt' -- give conversations (one JSON "
                               "object per line) as .jsonl, .jsonl.gz, .parquet or .json")


def test_skip_drops_and_logs_each_bad_row(tmp_path, caplog):
    path = write_jsonl(tmp_path / "chats.jsonl", [GOOD, "{not json", {"text": "x"},
                                                  {"messages": [{"role": "user", "content": "Hi"}]}, GOOD])
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        rows = load_conversations(path, on_bad_record="skip")
    assert len(rows) == 2
    for line, reason in [(2, "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
                         (3, "field 'messages': expected an object with a 'messages' list"),
                         (4, "field 'messages': no assistant turn: nothing to train on")]:
        assert f"{path}:{line}: {reason}" in caplog.text
    assert f"{path}: skipped 3 bad conversation(s) of 5" in caplog.text


def test_skip_with_nothing_left_and_an_unknown_policy_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": []}, "{no"])
    with pytest.raises(DataErrors) as info:
        load_conversations(path, on_bad_record="skip")
    assert [e.line for e in info.value.errors] == [1, 2]
    with pytest.raises(ConfigError, match="data.on_bad_record"):
        load_conversations(path, on_bad_record="drop")


def test_a_rows_own_loss_mode_overrides_the_steps(tiny_tokenizer):
    """Ghost Attention rows mixed into the pool's SFT data keep the loss on their last answer only."""
    two_turns = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                              {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye now"}]}
    [every], _ = tokenize_conversations(tiny_tokenizer, [two_turns], 512, "all")
    [last], _ = tokenize_conversations(tiny_tokenizer, [two_turns], 512, "last")
    [mixed_all, mixed_last], _ = tokenize_conversations(tiny_tokenizer, [two_turns, two_turns | {"loss_mode": "last"}],
                                                        512, "all")
    assert last[2].sum() < every[2].sum()  # the first answer's tokens are not targets in "last"
    assert mixed_all[2].equal(every[2]) and mixed_last[2].equal(last[2])
