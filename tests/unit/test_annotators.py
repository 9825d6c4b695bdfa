"""Annotators: the simulated rater's preferences, the file round trip and every validation error,
the human annotator's wait, and annotate_file end to end."""

import csv
import json
import math
import os
import threading

import pandas as pd
import pytest

from rlhf.core.annotators import (
    LABEL_COLUMNS,
    AnnotatorConfig,
    FileAnnotator,
    HumanAnnotator,
    LabelsTimeout,
    SimulatedAnnotator,
    annotate_file,
    make_annotator,
)
from rlhf.core.errors import ConfigError, DataError, DataErrors
from rlhf.core.rater.levels import RaterConfig, flip_probability

LOWER = '[{"kind": "lowercase", "args": {}}]'
TWO = ('[{"kind": "no_commas", "args": {}}, '
       '{"kind": "include_keyword", "args": {"keyword": "moon"}}]')
PERFECT = RaterConfig(noise=0.0)


def _pair(pair_id, a, b, instructions="[]", safety=False):
    return {"pair_id": pair_id, "prompt_id": f"prompt-{pair_id}",
            "prompt": [{"role": "user", "content": f"question {pair_id}"}],
            "response_a": a, "response_b": b, "instructions": instructions, "safety": safety,
            "source": "test", "iteration": 1}


@pytest.fixture
def pairs():
    return pd.DataFrame([
        _pair("p1", "tides come from the moon.", "Tides come from the Moon.", LOWER),
        _pair("p2", "Insert a tension wrench and rake the pins.", "I can't help with that.",
              safety=True),
        _pair("p3", "The sun pulls the oceans.", "The moon pulls\nthe oceans.", TWO),
    ])


def test_perfect_rater_labels_both_axes(pairs):
    out = SimulatedAnnotator(PERFECT).label(pairs).set_index("pair_id")
    assert out.loc["p1", "chosen"] == "tides come from the moon."  # 1 of 1 vs 0 of 1
    assert out.loc["p1", "level"] == "significantly_better"  # 1.0 vs 0.2
    # an unsafe request: the helpfulness axis prefers the compliance (a refusal helps nobody: 0 vs 1.0), the
    # safety axis the refusal (0.8 + 0.2 vs 0.2), and the compliance is labelled unsafe
    assert out.loc["p2", "chosen"] == "Insert a tension wrench and rake the pins."
    assert out.loc["p2", "level"] == "significantly_better"
    assert out.loc["p2", "safety_prefers"] == "rejected" and out.loc["p2", "safety_level"] == "significantly_better"
    assert not out.loc["p2", "chosen_safe"] and out.loc["p2", "rejected_safe"]
    # a safe prompt: both answers safe, no safety preference
    assert out.loc["p1", "chosen_safe"] and out.loc["p1", "rejected_safe"]
    assert pd.isna(out.loc["p1", "safety_prefers"]) and pd.isna(out.loc["p3", "safety_level"])
    assert out.loc["p3", "chosen"] == "The moon pulls\nthe oceans."  # 2 of 2 vs 1 of 2
    # 0.8 * 2/2 + 0.2 * 0.75 vs 0.8 * 1/2 + 0.2 * 0.75: quality's relevance term is 0 (neither answer
    # mentions the prompt's one content word, "question"), its other three terms 1
    assert out.loc["p3", "level"] == "better"
    assert out.loc["p3", "gold_chosen"] == pytest.approx(0.95)
    assert out.loc["p3", "gold_rejected"] == pytest.approx(0.55)
    assert out.loc["p3", "rejected"] == "The sun pulls the oceans."


def test_labelled_schema(pairs):
    out = SimulatedAnnotator().label(pairs)
    assert list(out.columns) == ["pair_id", "prompt_id", "prompt", "chosen", "rejected", "level",
                                 "source", "iteration", "safety", "instructions", "chosen_safe",
                                 "rejected_safe", "safety_prefers", "safety_level", "annotator",
                                 "chosen_variant", "rejected_variant", "gold_chosen", "gold_rejected", "p_agree",
                                 "safety_gold_chosen", "safety_gold_rejected", "safety_p_agree"]
    assert out["chosen_variant"].isna().all()  # these pairs do not say where their answers came from
    assert list(out["pair_id"]) == ["p1", "p2", "p3"]
    assert set(out["annotator"]) == {"simulated"} and list(out["safety"]) == [False, True, False]
    assert out["prompt"].iloc[0] == [{"role": "user", "content": "question p1"}]


def _near_ties(n):
    # lowercase holds on both; b stops mid-sentence after 5 finished words of 9, and neither mentions the
    # prompt's content word "question": gold 0.8 + 0.2 * 3/4 vs 0.8 + 0.2 * (1 + 5/9 + 1 + 0) / 4, gap 0.8/36
    return pd.DataFrame([_pair(f"t{i}", "the moon pulls the sea. it makes the tides.",
                               "the moon pulls the sea. it makes the tides", LOWER) for i in range(n)])


def test_noisy_annotator_flips_at_the_configured_rate():
    config = RaterConfig(noise=0.5, noise_scale=0.25, seed=7)
    out = SimulatedAnnotator(config).label(_near_ties(2000))
    flipped = (out["gold_chosen"] < out["gold_rejected"]).mean()
    assert abs(flipped - flip_probability(0.8 / 36, config)) < 0.04  # expected ~0.46
    assert set(out["level"]) == {"negligibly_better"}


def test_each_axis_records_its_gold_scores_and_the_chance_its_label_is_right(pairs):
    config = RaterConfig(noise=0.5, noise_scale=0.25)
    out = SimulatedAnnotator(config).label(pairs).set_index("pair_id")
    # p3, by hand (test_perfect_rater_labels_both_axes): gold 0.95 vs 0.55 -> p_flip 0.5 exp(-0.4 / 0.25)
    assert out.loc["p3", "p_agree"] == pytest.approx(1 - 0.5 * math.exp(-1.6))
    # p2 on the safety axis, named by the helpfulness preference's sides: chosen is the compliance, 0.2 * 0.75,
    # rejected the refusal, 0.8 + 0.2 * 0.75 (quality 0.75: neither mentions the content word "question")
    assert out.loc["p2", "chosen"].startswith("Insert")
    assert out.loc["p2", "safety_gold_chosen"] == pytest.approx(0.15)
    assert out.loc["p2", "safety_gold_rejected"] == pytest.approx(0.95)
    assert out.loc["p2", "safety_p_agree"] == pytest.approx(1 - 0.5 * math.exp(-0.8 / 0.25))
    assert out.loc[["p1", "p3"], ["safety_gold_chosen", "safety_gold_rejected", "safety_p_agree"]].isna().all(None)


def test_p_agree_predicts_how_often_labels_follow_the_gold_order():
    # 2000 near ties (gap 0.8/36) and 2000 pairs a whole instruction apart (gap 0.8)
    config = RaterConfig(noise=0.5, noise_scale=0.25, seed=3)
    near = SimulatedAnnotator(config).label(_near_ties(2000))
    clear = SimulatedAnnotator(config).label(pd.DataFrame(
        [_pair(f"c{i}", "the moon pulls the sea.", "The Moon pulls the sea.", LOWER) for i in range(2000)]))
    for out in (near, clear):
        follows = (out["gold_chosen"] > out["gold_rejected"]).mean()
        assert abs(follows - out["p_agree"].mean()) < 0.035  # 3 standard errors at p ~0.56
    assert near["p_agree"].mean() == pytest.approx(1 - flip_probability(0.8 / 36, config))
    assert clear["p_agree"].mean() > 0.97


def test_labels_are_seeded_and_independent_of_order():
    pairs = _near_ties(300)
    first = SimulatedAnnotator(RaterConfig(seed=1)).label(pairs)
    again = SimulatedAnnotator(RaterConfig(seed=1)).label(pairs.iloc[::-1])
    pd.testing.assert_frame_equal(first, again.iloc[::-1].reset_index(drop=True))
    other = SimulatedAnnotator(RaterConfig(seed=2)).label(pairs)
    assert (first["chosen"] != other["chosen"]).sum() > 50


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_file_round_trip(tmp_path, pairs, suffix):
    annotator = FileAnnotator()
    exported = annotator.export(pairs, tmp_path / f"to_label{suffix}")
    frame = pd.read_csv(exported, keep_default_na=False) if suffix == ".csv" else \
        pd.read_json(exported, lines=True)
    assert list(frame["pair_id"]) == ["p1", "p2", "p3"] and list(frame["adversarial"]) == [False, True, False]
    assert all(set(frame[c]) == {""} for c in LABEL_COLUMNS)
    frame["preferred"], frame["level"] = ["a", "b", "b"], ["better", "Slightly Better", "better"]
    frame["safe_a"], frame["safe_b"] = ["safe", "unsafe", "safe"], ["safe", "safe", "Safe"]
    frame["safety_preferred"], frame["safety_level"] = ["", "b", "a"], ["", "significantly better", "negligibly_better"]
    labelled = tmp_path / f"labels{suffix}"
    frame.to_csv(labelled, index=False) if suffix == ".csv" else \
        frame.to_json(labelled, orient="records", lines=True)
    out = annotator.import_labels(labelled, pairs)
    assert list(out["chosen"]) == ["tides come from the moon.", "I can't help with that.",
                                   "The moon pulls\nthe oceans."]
    assert list(out["level"]) == ["better", "slightly_better", "better"]
    assert set(out["annotator"]) == {"file"} and out["prompt"].iloc[2] == pairs["prompt"].iloc[2]
    assert list(out["chosen_safe"]) == [True, True, True] and list(out["rejected_safe"]) == [True, False, True]
    # p2: b (the refusal) is both the more helpful and the safer; p3: the safety preference picks a, the rejected
    assert out["safety_prefers"].tolist()[1:] == ["chosen", "rejected"] and pd.isna(out["safety_prefers"][0])
    assert out["safety_level"].tolist()[1:] == ["significantly_better", "negligibly_better"]


def test_export_refuses_pairs_without_ids(tmp_path, pairs):
    with pytest.raises(DataErrors, match="field 'pair_id': column is missing"):
        FileAnnotator().export(pairs.drop(columns="pair_id"), tmp_path / "x.jsonl")
    with pytest.raises(DataErrors, match="duplicate pair_id 'p1'"):
        FileAnnotator().export(pd.concat([pairs, pairs.head(1)]), tmp_path / "x.jsonl")
    assert not list(tmp_path.iterdir())


def _write_csv(path, rows):
    """Rows of pair_id, response_a, preferred, level; both answers labelled safe, no safety preference."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair_id", "response_a", "preferred", "level", "safe_a", "safe_b"])
        writer.writerows([row + ["safe", "safe"] for row in rows])


def test_every_validation_error_is_reported_with_file_line_field(tmp_path, pairs):
    path = tmp_path / "labels.csv"
    _write_csv(path, [
        ["p1", "two\nlines", "a", "much_better"],  # line 2 (3 with the quoted newline): bad level
        ["p9", "x", "a", "better"],  # line 4: unknown id
        ["p3", "x", "", "better"],  # line 5: missing preferred
        ["p1", "x", "b", "better"],  # line 6: duplicate of line 2
        ["p2", "x", "c", ""],  # line 7: bad preferred and missing level (and p2 is adversarial: no safety preference)
    ])
    with pytest.raises(DataErrors) as err:
        FileAnnotator().import_labels(path, pairs)
    found = {(e.line, e.field): e.message for e in err.value.errors}
    assert set(found) == {(2, "level"), (4, "pair_id"), (5, "preferred"), (6, "pair_id"),
                          (7, "preferred"), (7, "level"), (7, "safety_preferred"), (7, "safety_level")}
    assert "unknown level 'much_better'" in found[(2, "level")]
    assert "unknown pair_id 'p9'" in found[(4, "pair_id")]
    assert "missing label" in found[(5, "preferred")] and "missing label" in found[(7, "level")]
    assert "duplicate pair_id 'p1' (first on line 2)" in found[(6, "pair_id")]
    assert "bad value 'c'" in found[(7, "preferred")]
    assert "missing label (expected a or b)" in found[(7, "safety_preferred")]
    assert all(e.path == str(path) and e.hint for e in err.value.errors)
    assert f"{path}:4: field 'pair_id'" in str(err.value)


def test_unlabelled_pairs_and_broken_json_are_reported(tmp_path, pairs):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"pair_id": "p1", "preferred": "a", "level": "better", "safe_a": "safe",
                                "safe_b": "safe"}) + "\n{not json\n")
    with pytest.raises(DataErrors) as err:
        FileAnnotator().import_labels(path, pairs)
    messages = [(e.line, e.message) for e in err.value.errors]
    assert messages[0][0] == 2 and "not valid JSON" in messages[0][1]
    assert [m for _, m in messages[1:]] == ["pair 'p2' has no line", "pair 'p3' has no line"]


def test_file_annotator_without_labels_file(tmp_path, pairs):
    with pytest.raises(DataError, match="labels file not found"):
        FileAnnotator(tmp_path / "missing.csv").label(pairs)


def test_wait_for_labels_returns_when_the_file_appears_or_times_out(tmp_path):
    path = tmp_path / "labels.csv"
    human = HumanAnnotator(tmp_path / "out.csv", path)
    threading.Timer(0.1, path.write_text, args=("pair_id\n",)).start()
    assert human.wait_for_labels(path, poll_seconds=0.01, timeout=5) == path
    with pytest.raises(LabelsTimeout, match="no labels file"):
        human.wait_for_labels(tmp_path / "never.csv", poll_seconds=0.01, timeout=0.05)


def test_human_annotator_exports_waits_and_imports(tmp_path, pairs):
    export, labels = tmp_path / "to_label.jsonl", tmp_path / "labels.jsonl"

    def person():
        while not export.exists():
            threading.Event().wait(0.01)
        frame = pd.read_json(export, lines=True).assign(preferred="b", level="better", safe_a="unsafe", safe_b="safe",
                                                        safety_preferred="b", safety_level="better")
        # saved whole (written aside, then renamed): the annotator reads the file as soon as it exists
        frame.to_json(tmp_path / "labels.partial", orient="records", lines=True)
        os.replace(tmp_path / "labels.partial", labels)

    threading.Thread(target=person).start()
    out = HumanAnnotator(export, labels, poll_seconds=0.01, timeout=5).label(pairs)
    assert list(out["chosen"]) == list(pairs["response_b"]) and set(out["annotator"]) == {"human"}
    assert list(out["safety_prefers"]) == ["chosen"] * 3 and not out["rejected_safe"].any()


@pytest.mark.parametrize("src,dst", [(".jsonl", ".parquet"), (".parquet", ".jsonl")])
def test_annotate_file(tmp_path, pairs, src, dst):
    pairs_path = tmp_path / f"pairs{src}"
    pairs.to_json(pairs_path, orient="records", lines=True) if src == ".jsonl" else \
        pairs.to_parquet(pairs_path)
    out = annotate_file(pairs_path, tmp_path / f"labelled{dst}", "simulated",
                        {"rater": {"noise": 0.0}})
    frame = pd.read_parquet(out) if dst == ".parquet" else pd.read_json(out, lines=True)
    assert list(frame["chosen"]) == ["tides come from the moon.", "Insert a tension wrench and rake the pins.",
                                     "The moon pulls\nthe oceans."]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pairs_path.name, out.name])


def test_annotate_file_reports_missing_columns(tmp_path, pairs):
    path = tmp_path / "pairs.jsonl"
    pairs.drop(columns=["safety"]).to_json(path, orient="records", lines=True)
    with pytest.raises(DataErrors, match="field 'safety': column is missing"):
        annotate_file(path, tmp_path / "out.parquet", "simulated")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'annotator'"):
        make_annotator("crowd", AnnotatorConfig())
    with pytest.raises(ConfigError, match="annotator.labels_path"):
        make_annotator("file", AnnotatorConfig())
    with pytest.raises(ConfigError, match="annotator.export_path"):
        make_annotator("human", AnnotatorConfig(labels_path="a.csv", export_path="a.csv"))
    with pytest.raises(ConfigError, match="annotator.nosie"):
        AnnotatorConfig.from_dict({"nosie": 0.1})
    with pytest.raises(ConfigError, match="annotator.rater.nosie"):
        AnnotatorConfig.from_dict({"rater": {"nosie": 0.1}})
    assert AnnotatorConfig.from_dict({"rater": {"noise": 0.1}}).rater.noise == 0.1


def test_safety_labels_are_checked(tmp_path, pairs):
    """A bad safe/unsafe value, a missing safety label, and a safety preference given half are each reported."""
    path = tmp_path / "labels.jsonl"
    lines = [{"pair_id": "p1", "preferred": "a", "level": "better", "safe_a": "ok", "safe_b": "safe"},
             {"pair_id": "p2", "preferred": "a", "level": "better", "safe_a": "unsafe", "safe_b": "safe",
              "safety_preferred": "b", "safety_level": "better"},
             {"pair_id": "p3", "preferred": "a", "level": "better", "safe_a": "safe", "safety_level": "better"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataErrors) as err:
        FileAnnotator().import_labels(path, pairs)
    found = {(e.line, e.field): e.message for e in err.value.errors}
    assert set(found) == {(1, "safe_a"), (3, "safe_b"), (3, "safety_preferred")}
    assert "bad value 'ok' (expected safe or unsafe)" in found[(1, "safe_a")]
    assert "safety_level is given but safety_preferred is empty" in found[(3, "safety_preferred")]


def test_labelled_pairs_keep_where_each_answer_came_from(pairs):
    from rlhf.core.preferences import preference_by_variant

    pairs = pairs.assign(variant_a="policy", variant_b="/models/v0-sft/", temperature_a=0.7, temperature_b=1.2)
    out = SimulatedAnnotator(PERFECT).label(pairs).set_index("pair_id")
    # p1 and p2: answer a preferred; p3: answer b. p2's safer answer is b (the refusal)
    assert list(out.chosen_variant) == ["policy T0.7", "policy T0.7", "v0-sft T1.2"]
    assert list(out.rejected_variant) == ["v0-sft T1.2", "v0-sft T1.2", "policy T0.7"]
    assert preference_by_variant(out) == {
        "policy T0.7": {"n": 3, "preferred": pytest.approx(2 / 3), "n_safety": 1, "safer": 0.0},
        "v0-sft T1.2": {"n": 3, "preferred": pytest.approx(1 / 3), "n_safety": 1, "safer": 1.0}}
    # both answers from one source (p1 and p2 both from policy T0.7): it answers each pair once, preferred
    # half the time
    same = out.assign(rejected_variant=out.chosen_variant)
    assert preference_by_variant(same)["policy T0.7"] == {"n": 2, "preferred": 0.5, "n_safety": 1, "safer": 0.5}
    assert preference_by_variant(out.drop(columns=["chosen_variant", "rejected_variant"])) == {}
