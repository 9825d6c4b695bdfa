"""Preference pairs: the schema reader, the HH-RLHF reader, validation errors, the split."""

import json

import numpy as np
import pandas as pd
import pytest

from rlhf.core.errors import DataError, DataErrors
from rlhf.core.preferences import COLUMNS, LEVELS, load_pairs, split_pairs

USER_HI = [{"role": "user", "content": "Hi"}]


def write_jsonl(path, lines):
    """Write objects as JSON lines; a str is written as-is (to make a broken line)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def pair(**overrides):
    return {"prompt": USER_HI, "chosen": "Hello!", "rejected": "Go away.", **overrides}


def load_errors(path) -> list[DataError]:
    with pytest.raises(DataErrors) as info:
        load_pairs(path)
    return info.value.errors


# ---- the pair schema ----------------------------------------------------------------------------

def test_defaults_and_extra_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        pair(annotator="a1"),
        pair(level="better", source="rater", iteration=2, safety=True),
    ])
    df, report = load_pairs(path)
    assert list(df.columns) == [*COLUMNS, "annotator"]
    first, second = df.iloc[0], df.iloc[1]
    assert first["prompt"] == USER_HI and first["chosen"] == "Hello!" and first["rejected"] == "Go away."
    assert pd.isna(first["level"])
    assert (first["source"], first["iteration"], first["safety"]) == ("file", 0, None)
    assert first["annotator"] == "a1"
    assert (second["level"], second["source"], second["iteration"], second["safety"]) == ("better", "rater", 2, True)
    assert df["iteration"].dtype == np.int64
    assert (report.format, report.n_read, report.n_dropped_identical, report.dropped_lines) == ("pairs", 2, 0, [])


def test_multi_turn_prompt_with_system(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    df, _ = load_pairs(write_jsonl(tmp_path / "p.jsonl", [pair(prompt=prompt)]))
    assert df.loc[0, "prompt"] == prompt


@pytest.mark.parametrize("record, field, text", [
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing required field"),
    (pair(chosen=None), "chosen", "expected a string, got null"),
    ({"prompt": USER_HI, "chosen": "a"}, "rejected", "missing required field"),
    (pair(prompt="Hi"), "prompt", "expected a list of messages, got string"),
    (pair(prompt=["Hi"]), "prompt[0]", "expected a message object, got string"),
    (pair(prompt=[{"role": "user"}]), "prompt[0].content", "missing required field"),
    (pair(prompt=[{"role": "user", "content": 3}]), "prompt[0].content", "expected a string, got number"),
    (pair(prompt=[{"role": "bot", "content": "x"}, *USER_HI]), "prompt[0].role", "unknown role 'bot'"),
    (pair(prompt=[*USER_HI, {"role": "assistant", "content": "x"}]), "prompt", "must end with a user turn"),
    (pair(prompt=[]), "prompt", "must end with a user turn"),
    (pair(chosen="  \n"), "chosen", "empty answer"),
    (pair(rejected=""), "rejected", "empty answer"),
    (pair(rejected=7), "rejected", "expected a string, got number"),
    (pair(level="much_better"), "level", "unknown level 'much_better'"),
    (pair(level=2), "level", "unknown level number"),
    (pair(source=1), "source", "expected a string"),
    (pair(iteration="1"), "iteration", "expected an integer >= 0"),
    (pair(iteration=-1), "iteration", "expected an integer >= 0"),
    (pair(iteration=True), "iteration", "expected an integer >= 0"),
    (pair(safety="yes"), "safety", "expected true, false or null, got string"),
])
def test_each_problem_names_file_line_and_field(tmp_path, record, field, text):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), record])
    [err] = load_errors(path)
    assert (err.path, err.line, err.field) == (str(path), 2, field)
    assert text in err.message
    assert str(err).startswith(f"{path}:2: field '{field}': ")


def test_unknown_role_and_level_list_the_valid_ones(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(prompt=[{"role": "bot", "content": "x"}, *USER_HI], level="meh")])
    role_err, level_err = load_errors(path)
    assert role_err.hint == "expected one of system, user, assistant"
    assert all(level in level_err.hint for level in LEVELS)


def test_not_json_and_not_an_object_are_located(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), '{"prompt": [', "[1, 2]"])
    not_json, not_object = load_errors(path)
    assert (not_json.line, not_json.field) == (2, None) and "not valid JSON" in not_json.message
    assert (not_object.line, not_object.field) == (3, None) and "got array" in not_object.message


def test_all_problems_are_collected_and_blank_lines_keep_numbering(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(chosen=""), "", pair(level="x", rejected=""), pair()])
    errors = load_errors(path)
    assert [(e.line, e.field) for e in errors] == [(1, "chosen"), (3, "rejected"), (3, "level")]


def test_identical_pairs_are_reported_and_dropped(tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), pair(rejected="Hello! "), pair(chosen="Same", rejected="Same"),
                                              pair(rejected="Bye")])
    df, report = load_pairs(path)
    assert df["rejected"].tolist() == ["Go away.", "Bye"]
    assert list(df.index) == [0, 1]
    assert (report.n_read, report.n_dropped_identical, report.dropped_lines, report.n_kept) == (4, 2, [2, 3], 2)
    assert "dropped 2 pair(s)" in caplog.text


def test_unsupported_suffix_and_missing_file(tmp_path):
    [err] = load_errors(tmp_path / "p.csv")
    assert "unsupported file type '.csv'" in err.message and ".jsonl or .parquet" in err.hint
    [err] = load_errors(tmp_path / "absent.jsonl")
    assert err.message == "file not found"


def test_empty_file_gives_empty_frame_with_schema(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n")
    df, report = load_pairs(tmp_path / "p.jsonl")
    assert list(df.columns) == list(COLUMNS) and len(df) == 0 and report.n_read == 0


# ---- Parquet ------------------------------------------------------------------------------------

def test_parquet_roundtrip_and_row_numbers(tmp_path):
    rows = [pair(level="better", iteration=1), pair(level=None, iteration=1), pair(chosen="", iteration=2)]
    path = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(path)
    [err] = load_errors(path)
    assert (err.line, err.field) == (3, "chosen")

    pd.DataFrame(rows[:2]).to_parquet(path)
    df, report = load_pairs(path)
    assert df.loc[0, "prompt"] == USER_HI and isinstance(df.loc[0, "prompt"], list)
    assert df["level"].isna().tolist() == [False, True] and df.loc[0, "level"] == "better"
    assert df["iteration"].tolist() == [1, 1]
    assert report.n_read == 2


# ---- Anthropic HH-RLHF --------------------------------------------------------------------------

def test_hh_single_turn(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: I won't say.",
    }])
    df, report = load_pairs(path)
    assert report.format == "hh"
    row = df.iloc[0]
    assert row["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert (row["chosen"], row["rejected"]) == ("4.", "I won't say.")
    assert pd.isna(row["level"]) and (row["source"], row["iteration"]) == ("hh-rlhf", 0)


def test_hh_multi_turn_keeps_earlier_turns_in_the_prompt(tmp_path):
    shared = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: Name a color.\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": shared + " Blue.", "rejected": shared + " No."}])
    df, _ = load_pairs(path)
    assert df.loc[0, "prompt"] == [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello, how can I help?"},
                                   {"role": "user", "content": "Name a color."}]
    assert (df.loc[0, "chosen"], df.loc[0, "rejected"]) == ("Blue.", "No.")


def test_hh_identical_answers_are_dropped(tmp_path):
    same = "\n\nHuman: Hi\n\nAssistant: Hello"
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    df, report = load_pairs(write_jsonl(tmp_path / "hh.jsonl", [good, {"chosen": same, "rejected": same + "  "}]))
    assert len(df) == 1 and report.dropped_lines == [2]


@pytest.mark.parametrize("record, field, text", [
    ({"chosen": "\n\nHuman: Hi there", "rejected": "\n\nHuman: Hi\n\nAssistant: x"},
     "chosen", "no '\\n\\nAssistant:' turn"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: a", "rejected": "\n\nHuman: Bye\n\nAssistant: b"},
     "rejected", "differs from chosen's"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: A\n\nHuman: More\n\nAssistant: a",
      "rejected": "\n\nHuman: Hi\n\nAssistant: B\n\nHuman: More\n\nAssistant: b"},
     "rejected", "differs from chosen's"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant:   ", "rejected": "\n\nHuman: Hi\n\nAssistant: b"},
     "chosen", "empty final Assistant answer"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: x\n\nAssistant: a",
      "rejected": "\n\nHuman: Hi\n\nAssistant: x\n\nAssistant: b"},
     "chosen", "does not follow a Human turn"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: a"}, "rejected", "missing required field"),
])
def test_hh_malformed_transcripts_are_errors(tmp_path, record, field, text):
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    path = write_jsonl(tmp_path / "hh.jsonl", [good, record])
    [err] = load_errors(path)
    assert (err.line, err.field) == (2, field)
    assert text in err.message


# ---- split --------------------------------------------------------------------------------------

def batches(sizes):
    return pd.DataFrame({"iteration": np.repeat(np.arange(len(sizes)), sizes), "chosen": "c", "rejected": "r"})


def test_split_count_per_iteration_is_disjoint_and_complete():
    df = batches([30, 50])
    train, test = split_pairs(df, n_test=10, seed=0)
    assert test["iteration"].value_counts().to_dict() == {0: 10, 1: 10}
    assert len(train) == 60
    assert set(train.index).isdisjoint(test.index)
    assert sorted([*train.index, *test.index]) == list(df.index)


def test_split_fraction_per_iteration():
    _, test = split_pairs(batches([40, 20]), n_test=0.25, seed=0)
    assert test["iteration"].value_counts().to_dict() == {0: 10, 1: 5}


def test_split_is_seeded_and_earlier_batches_keep_their_test_pairs():
    _, test = split_pairs(batches([30, 30]), n_test=5, seed=1)
    _, again = split_pairs(batches([30, 30]), n_test=5, seed=1)
    _, later = split_pairs(batches([30, 30, 30]), n_test=5, seed=1)
    _, other_seed = split_pairs(batches([30, 30]), n_test=5, seed=2)
    assert list(test.index) == list(again.index)
    assert list(later.index[later["iteration"] < 2]) == list(test.index)
    assert list(other_seed.index) != list(test.index)


def test_split_without_iteration_column_is_one_batch():
    df = pd.DataFrame({"chosen": list("abcdefghij")})
    train, test = split_pairs(df, n_test=3, seed=0)
    assert (len(train), len(test)) == (7, 3)


@pytest.mark.parametrize("n_test, text", [(-1, ">= 0"), (1.5, "[0, 1)"), (True, "count"), (11, "has 10 pairs")])
def test_split_rejects_bad_n_test(n_test, text):
    with pytest.raises(ValueError) as info:
        split_pairs(batches([10]), n_test=n_test)
    assert text in str(info.value)
