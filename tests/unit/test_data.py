"""Conversation files: every bad-input case names file, line, field and what to do."""

import json

import pandas as pd
import pytest

from rlhf.core.data import load_conversations, tokenize_conversations
from rlhf.core.errors import DataError, DataErrors

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
