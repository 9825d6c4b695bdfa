"""Preference pairs: the schema reader, the HH-RLHF and TRL readers, .jsonl.gz, skipping bad records,
validation errors, the split."""

import gzip
import json
import logging

import numpy as np
import pandas as pd
import pytest

from rlhf.core.errors import ConfigError, DataError, DataErrors
from rlhf.core.preferences import COLUMNS, LEVELS, load_pairs, read_records, record_format, split_pairs

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
    assert "unsupported file type '.csv'" in err.message
    assert err.hint == "give preference pairs as .jsonl, .jsonl.gz or .parquet"
    [err] = load_errors(tmp_path / "p.json.gz")
    assert str(err) == (f"{tmp_path / 'p.json.gz'}: unsupported file type '.json.gz' -- give preference pairs as "
                        ".jsonl, .jsonl.gz or .parquet")
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


def test_split_fraction_of_one_batch_rounds_to_the_nearest_pair():
    # 0.2 of 45 pairs = 9 test pairs; 0.25 of 10 = 2.5 -> 2 (round half to even)
    assert [len(split_pairs(batches([45]), n_test=0.2)[1]), len(split_pairs(batches([10]), n_test=0.25)[1])] == [9, 2]


@pytest.mark.parametrize("n_test, text", [(-1, ">= 0"), (1.5, "(0, 1)"), (0.0, "(0, 1)"), (1.0, "(0, 1)"),
                                          (True, "count"), ("0.2", "count"), (11, "has 10 pairs")])
def test_split_rejects_bad_n_test(n_test, text):
    with pytest.raises(ValueError) as info:
        split_pairs(batches([10]), n_test=n_test)
    assert text in str(info.value)


# ---- HH: answers that contain the turn markers ---------------------------------------------------

def hh(prompt, answer):
    return prompt + "\n\nAssistant: " + answer


@pytest.mark.parametrize("chosen, rejected", [
    ("Sure.\n\nAssistant: more", "No."),                                   # in chosen only
    ("Yes.", "Hmm.\n\nAssistant: wait\n\nAssistant: no"),                  # in rejected only, twice
    ("x\n\nAssistant: a", "y\n\nAssistant: b"),                            # in both, after different text
    ("Paris.\n\nHuman: Thanks!\n\nAssistant: You're welcome.", "Rome."),  # a made-up next turn, in chosen only
])
def test_hh_answers_containing_the_assistant_marker_are_kept_whole(tmp_path, chosen, rejected):
    prompt = "\n\nHuman: Hi"
    df, report = load_pairs(write_jsonl(tmp_path / "hh.jsonl", [{"chosen": hh(prompt, chosen),
                                                                  "rejected": hh(prompt, rejected)}]))
    assert report.format == "hh"
    assert df.loc[0, "prompt"] == [{"role": "user", "content": "Hi"}]
    assert (df.loc[0, "chosen"], df.loc[0, "rejected"]) == (chosen, rejected)


def test_hh_multi_turn_with_a_marker_inside_the_final_answer(tmp_path):
    shared = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: A game for four?"
    record = {"chosen": hh(shared, "Catan.\n\nAssistant: Or Ticket to Ride."), "rejected": hh(shared, "Monopoly.")}
    df, _ = load_pairs(write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert df.loc[0, "prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                   {"role": "user", "content": "A game for four?"}]
    assert (df.loc[0, "chosen"], df.loc[0, "rejected"]) == ("Catan.\n\nAssistant: Or Ticket to Ride.", "Monopoly.")


# ---- .jsonl.gz ----------------------------------------------------------------------------------

def write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_jsonl_gz_reads_like_jsonl_with_the_same_line_numbers(tmp_path):
    hh_record = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    df, report = load_pairs(write_gz(tmp_path / "hh.jsonl.gz", [hh_record, "", hh_record]))
    assert (report.format, report.n_read, len(df)) == ("hh", 2, 2)
    assert df.loc[1, "chosen"] == "Hello"
    [err] = load_errors(write_gz(tmp_path / "bad.jsonl.gz", [pair(), "", "{oops"]))
    assert (err.path, err.line) == (str(tmp_path / "bad.jsonl.gz"), 3) and "not valid JSON" in err.message


def test_a_corrupt_gz_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    text = "".join(json.dumps(pair(chosen=f"answer {i} " * i)) + "\n" for i in range(200))
    compressed = gzip.compress(text.encode())
    path.write_bytes(compressed[:len(compressed) // 2])  # cut off half-way
    [err] = load_errors(path)
    assert err.path == str(path) and err.line is None and "cannot read gzip-compressed JSONL" in err.message
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps(pair()) + "\n")  # named .gz, not compressed
    [err] = load_errors(tmp_path / "plain.jsonl.gz")
    assert "cannot read gzip-compressed JSONL" in err.message


def test_record_format_and_read_records(tmp_path):
    assert [record_format(name) for name in ("a.jsonl", "A.JSONL.GZ", "b.parquet")] == [".jsonl", ".jsonl.gz",
                                                                                       ".parquet"]
    with pytest.raises(DataError, match=r"unsupported file type '\.txt' -- give records as \.jsonl, \.jsonl\.gz or "
                                        r"\.parquet"):
        record_format(tmp_path / "a.txt")
    path = write_gz(tmp_path / "r.jsonl.gz", [{"a": 1}, "", "[2]", "nope"])
    (line1, first), (line3, second), (line4, third) = read_records(path)
    assert (line1, first, line3, second, line4) == (1, {"a": 1}, 3, [2], 4) and isinstance(third, DataError)


# ---- on_bad_record ------------------------------------------------------------------------------

def test_skip_drops_counts_and_logs_each_bad_record(tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), '{"prompt": [', pair(chosen=""), "[1]", pair(rejected="Bye"),
                                              pair(rejected="Hello!"), pair(level="x", rejected=3)])
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        df, report = load_pairs(path, on_bad_record="skip")
    assert df["rejected"].tolist() == ["Go away.", "Bye"]
    assert report.skipped == [
        f"{path}:2: not valid JSON (Expecting value at column 13)",  # '{"prompt": [' has 12 characters
        f"{path}:3: field 'chosen': empty answer",
        f"{path}:4: expected a JSON object, got array",
        f"{path}:7: field 'rejected': expected a string, got number; field 'level': unknown level 'x'",
    ]
    assert (report.n_read, report.n_skipped_bad, report.skipped_lines) == (7, 4, [2, 3, 4, 7])
    assert (report.n_dropped_identical, report.dropped_lines, report.n_kept) == (1, [6], 2)
    assert all(line in caplog.text for line in report.skipped)
    assert f"{path}: skipped 4 bad record(s) of 7" in caplog.text
    assert report.summary() == (f"{path}: pairs format, 2/7 pairs kept; 4 bad record(s) skipped, 1 dropped as "
                                "identical (chosen = rejected)")


def test_error_is_the_default_and_lists_every_problem(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), '{"prompt": [', pair(chosen="")])
    assert [(e.line, e.field) for e in load_errors(path)] == [(2, None), (3, "chosen")]
    with pytest.raises(DataErrors) as info:
        load_pairs(path, option="reward.*.on_bad_record")
    assert str(info.value).endswith(f"{path}:3: field 'chosen': empty answer -- an empty answer carries no "
                                    "preference; fill it or remove this line\n  (to drop the bad records instead, "
                                    "each logged and counted: reward.*.on_bad_record=skip)")


def test_skip_with_no_good_record_left_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(chosen=""), "nope"])
    for on_bad_record in ("skip", "error"):
        with pytest.raises(DataErrors) as info:
            load_pairs(path, on_bad_record=on_bad_record)
        assert [e.line for e in info.value.errors] == [1, 2] and "=skip" not in str(info.value)


def test_unknown_on_bad_record_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown value 'ignore'; use error .* or skip"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", [pair()]), on_bad_record="ignore")


# ---- TRL's preference formats -------------------------------------------------------------------

def msg(role, content):
    return {"role": role, "content": content}


def test_trl_standard_prompt_becomes_one_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.",
                                                 "level": "better", "id": 7}])
    df, report = load_pairs(path)
    assert report.format == "trl-standard"
    row = df.iloc[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ([msg("user", "The sky is")], " blue.", " green.")
    assert (row["level"], row["source"], row["id"]) == ("better", "file", 7)


def test_trl_conversational_explicit_prompt(tmp_path):
    prompt = [msg("system", "Be brief."), msg("user", "What color is the sky?")]
    path = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": prompt, "chosen": [msg("assistant", "Blue.")],
                                                 "rejected": [msg("assistant", "Green.")]}])
    df, report = load_pairs(path)
    assert report.format == "trl-conversational"
    assert (df.loc[0, "prompt"], df.loc[0, "chosen"], df.loc[0, "rejected"]) == (prompt, "Blue.", "Green.")


def test_trl_conversational_shared_turns_after_the_prompt_join_it(tmp_path):
    prompt = [msg("user", "Hi")]
    chosen = [msg("assistant", "Hello!"), msg("user", "Color?"), msg("assistant", "Blue.")]
    rejected = [msg("assistant", "Hello!"), msg("user", "Color?"), msg("assistant", "No.")]
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    df, _ = load_pairs(write_jsonl(tmp_path / "trl.jsonl", [record]))
    assert df.loc[0, "prompt"] == [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Color?")]
    assert (df.loc[0, "chosen"], df.loc[0, "rejected"]) == ("Blue.", "No.")


def test_trl_implicit_prompt_is_the_shared_prefix(tmp_path):
    chosen = [msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "2+2?"), msg("assistant", "4")]
    rejected = [msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "2+2?"), msg("assistant", "5")]
    path = tmp_path / "trl.parquet"
    pd.DataFrame([{"chosen": chosen, "rejected": rejected}]).to_parquet(path)
    df, report = load_pairs(path)
    assert report.format == "trl-implicit"
    assert (df.loc[0, "prompt"], df.loc[0, "chosen"], df.loc[0, "rejected"]) == (chosen[:3], "4", "5")


@pytest.mark.parametrize("record, field, text", [
    # implicit: the conversations part before their final message
    ({"chosen": [msg("user", "Hi"), msg("assistant", "A"), msg("user", "More"), msg("assistant", "a")],
      "rejected": [msg("user", "Hi"), msg("assistant", "B"), msg("user", "More"), msg("assistant", "b")]},
     "rejected", "differ before their final message (from message [1] on, 3 message(s) in chosen and 3 in rejected)"),
    ({"chosen": [msg("user", "Hi"), msg("assistant", "A"), msg("user", "More"), msg("assistant", "a")],
      "rejected": [msg("user", "Hi"), msg("assistant", "b")]},
     "chosen", "differ before their final message (from message [1] on, 3 message(s) in chosen and 1 in rejected)"),
    ({"prompt": [msg("user", "Hi")], "chosen": [msg("assistant", "A"), msg("user", "More"), msg("assistant", "a")],
      "rejected": [msg("assistant", "B"), msg("user", "More"), msg("assistant", "b")]},
     "rejected", "differ before their final message (from message [0] on, 3 message(s) in chosen and 3 in rejected)"),
    ({"chosen": [msg("user", "Hi"), msg("user", "a")], "rejected": [msg("user", "Hi"), msg("assistant", "b")]},
     "chosen[1].role", "the final message must be the assistant's answer, got 'user'"),
    ({"chosen": [msg("user", "Hi"), msg("assistant", " ")], "rejected": [msg("user", "Hi"), msg("assistant", "b")]},
     "chosen[1].content", "empty answer"),
    ({"chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]},
     "chosen", "must end with a user turn"),
    ({"chosen": [msg("user", "Hi"), msg("assistant", "a")], "rejected": "b"},
     "rejected", "expected a list of messages, got string"),
    # explicit prompt
    ({"prompt": [msg("user", "Hi"), msg("assistant", "x")], "chosen": [msg("assistant", "a")],
      "rejected": [msg("assistant", "b")]}, "prompt", "must end with a user turn"),
    ({"prompt": [msg("user", "Hi")], "chosen": [], "rejected": [msg("assistant", "b")]}, "chosen", "no messages"),
    ({"prompt": [msg("user", "Hi")], "chosen": [msg("bot", "a")], "rejected": [msg("assistant", "b")]},
     "chosen[0].role", "unknown role 'bot'"),
    ({"prompt": [msg("user", "Hi")], "rejected": [msg("assistant", "b")]}, "chosen", "missing required field"),
])
def test_trl_conversational_problems_name_line_and_field(tmp_path, record, field, text):
    good = {"chosen": [msg("user", "Hi"), msg("assistant", "a")],
            "rejected": [msg("user", "Hi"), msg("assistant", "b")]}
    if "prompt" in record:
        good = {"prompt": [msg("user", "Hi")], "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]}
    [err] = load_errors(write_jsonl(tmp_path / "trl.jsonl", [good, record]))
    assert (err.line, err.field) == (2, field)
    assert text in err.message


@pytest.mark.parametrize("record, field, text", [
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt", "expected a string, got number"),
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt", "empty prompt"),
    ({"prompt": "Hi", "chosen": "", "rejected": "b"}, "chosen", "empty answer"),
])
def test_trl_standard_problems(tmp_path, record, field, text):
    good = {"prompt": "Hi", "chosen": "a", "rejected": "b"}
    [err] = load_errors(write_jsonl(tmp_path / "trl.jsonl", [good, record]))
    assert (err.line, err.field) == (2, field) and text in err.message


def test_format_is_taken_from_the_first_recognisable_record(tmp_path):
    hh_record = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    path = write_jsonl(tmp_path / "hh.jsonl", ["[1]", {"chosen": None}, hh_record])
    df, report = load_pairs(path, on_bad_record="skip")
    assert (report.format, report.skipped_lines, len(df)) == ("hh", [1, 2], 1)


# ---- the annotators read .jsonl.gz and Parquet through the same reader --------------------------

def test_annotators_read_gz_pairs_and_gz_or_parquet_labels(tmp_path):
    from rlhf.core.annotators import FileAnnotator, read_pairs

    pairs = [{"pair_id": f"p{i}", "prompt_id": f"q{i}", "prompt": USER_HI, "response_a": "a", "response_b": "b",
              "instructions": "[]", "safety": False, "source": "collect", "iteration": 1} for i in range(2)]
    frame = read_pairs(write_gz(tmp_path / "pairs.jsonl.gz", pairs))
    assert frame["pair_id"].tolist() == ["p0", "p1"] and frame.loc[0, "prompt"] == USER_HI
    safe = {"safe_a": "safe", "safe_b": "safe"}
    labels = [{"pair_id": "p0", "preferred": "b", "level": "better", **safe},
              {"pair_id": "p1", "preferred": "a", "level": "slightly_better", **safe}]
    for path in (write_gz(tmp_path / "labels.jsonl.gz", labels), tmp_path / "labels.parquet"):
        pd.DataFrame(labels).to_parquet(tmp_path / "labels.parquet")
        labelled = FileAnnotator().import_labels(path, frame)
        assert labelled["chosen"].tolist() == ["b", "a"] and labelled["level"].tolist() == ["better", "slightly_better"]
    with pytest.raises(DataError, match=r"give labels as \.csv, \.jsonl, \.jsonl\.gz or \.parquet"):
        FileAnnotator().import_labels(tmp_path / "labels.txt", frame)
    with pytest.raises(DataError, match=r"give pairs to label as \.jsonl, \.jsonl\.gz or \.parquet"):
        read_pairs(tmp_path / "pairs.csv")
