"""The campaign report's pieces: the computed verdict, the two renderings, and a report from a hand-made
summary with the optional parts missing (no Safety RM, no step outputs on disk) or present (a PPO entry)."""

from __future__ import annotations

import base64
import json

import pytest

from rlhf.core.errors import RLHFError
from rlhf.record.document import Doc
from rlhf.record.report import SECTIONS, copy_report, verdict, write_report
from rlhf.record.summary import iteration_markdown, progression_metrics, table


def result(win_rate, lo, hi, n=40):
    return {"judge": "gold", "win": win_rate, "tie": 0.0, "loss": 1 - win_rate, "win_rate": win_rate,
            "ci95": [lo, hi], "n": n, "model_first_share": 0.5}


@pytest.mark.parametrize("lo, hi, words", [(0.55, 0.8, "beats"), (0.2, 0.45, "is worse than"),
                                           (0.45, 0.7, "is not distinguishable from")])
def test_verdict_follows_the_ci_not_the_point_estimate(lo, hi, words):
    text = verdict(result(0.6 if lo > 0.3 else 0.3, lo, hi), "RLHF-V2", "the SFT model")
    assert text.startswith(f"**RLHF-V2 {words} the SFT model**") and "n=40" in text
    assert verdict(None, "RLHF-V2", "x") == "RLHF-V2 vs x: not measured."


def test_markdown_and_html_render_the_same_blocks_escaped():
    doc = Doc("T <1>")
    doc.heading("Sec")
    doc.para("a `code` and **bold** <tag>")
    doc.table(["a|b", "c"], [[1, "x\ny"]])
    doc.quote("Answer", "line 1\n\nline <3>")
    doc.image("plots/p.png", "alt")
    md, page = doc.markdown(), doc.html()
    assert md.splitlines()[:3] == ["# T <1>", "", "## Sec"]
    assert "| a\\|b | c |\n|---|---|\n| 1 | x y |" in md
    assert "> line 1\n>\n> line <3>" in md and "![alt](plots/p.png)" in md
    assert "<title>T &lt;1&gt;</title>" in page and "<code>code</code> and <b>bold</b> &lt;tag&gt;" in page
    assert "<td>x\ny</td>" in page and "line &lt;3&gt;</blockquote>" in page and 'src="plots/p.png"' in page


def entry(n, ppo=None):
    levels = {"significantly_better": 0.9, "better": 0.7, "slightly_better": 0.6, "negligibly_better": 0.5}
    return {"iteration": n, "wall_seconds": {"train_policy": 1.5}, "ppo": ppo, "gatt": None,
            "reward": {"helpful": {"accuracy": 0.65, "ci95": [0.43, 0.82], "accuracy_by_level": levels, "n_test": 20,
                                   "ci95_by_level": {k: [0.25, 0.95] for k in levels},
                                   "n_by_level": {k: 5 for k in levels}, "axis": "helpfulness"}},
            "temperature": {"chosen": 0.8, "curve": {"0.6": 1.0, "0.8": 1.5}},
            "rejection": {"k": 4, "temperature": 0.8, "pool_size": 10, "pool_mean_score": 1.25,
                          "pool_by_iteration": {str(i): 10 // n for i in range(1, n + 1)}},
            "win_rate": {"sft/gold": result(0.625, 0.5, 0.75), "sft/rm": result(0.7, 0.6, 0.8)}}


def test_report_from_a_summary_with_optional_parts_missing(tmp_path):
    with pytest.raises(RLHFError, match="run the campaign first"):
        write_report(tmp_path)
    summary = {"campaign": "hand", "code_version": "abc", "config": {"campaign": {"name": "hand"}},
               "iterations": [entry(1), entry(2, ppo={"steps": 12, "reward_start": 0.1, "reward_end": 0.4})]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    path = write_report(tmp_path)
    md = path.read_text()
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == list(SECTIONS)
    assert "No Safety RM in this campaign" in md and "not on disk" in md
    assert "| RLHF-V2 | 0.400 | 0.100 | 12 |" in md  # the PPO slot's table, fields sorted
    assert ("| helpful | RLHF-V1 | labelled (helpfulness) | 90.0% [25.0%, 95.0%] (n=5) | 70.0% [25.0%, 95.0%] (n=5) "
            "| 60.0% [25.0%, 95.0%] (n=5) | 50.0% [25.0%, 95.0%] (n=5) | 65.0% [43.0%, 82.0%] (n=20) |") in md
    assert "No margin ablation in this campaign" in md
    assert "| RLHF-V2 | 4 | 0.8 | 10 | 1.250 | 5 | 5 |" in md  # the pool by source iteration
    # CI lower end exactly at 50 % is not a win: the verdict does not round up.
    assert "**RLHF-V2 is not distinguishable from the SFT model** by the gold judge" in md
    assert {p.name for p in (path.parent / "plots").iterdir()} == {"win_rates.png", "rm_accuracy.png",
                                                                   "temperature.png", "pool.png"}
    # The HTML stands alone (MLflow's artifact viewer shows it without its folder): each plot inlined.
    page = (path.parent / "report.html").read_text()
    assert 'src="plots/' not in page and page.count('src="data:image/png;base64,') == 4
    png = (path.parent / "plots" / "pool.png").read_bytes()
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "| machine | - |" in md  # a summary from before the machine was recorded
    assert "| wall time of the iterations' steps | 0.1 min (SFT and seed pairs aside) |" in md  # 2 x 1.5 s
    # Rebuilt in place: the old report is replaced whole, no temp directories left behind.
    summary["machine"] = {"cpu": "AMD EPYC", "cores": 2, "fast_bf16": True, "torch": "2.13.0", "precision": "bf16"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    write_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "summary.json"]
    assert "| machine | AMD EPYC, 2 cores (fast bf16: yes), torch 2.13.0, bf16 |" in path.read_text()
    # A copy to commit (`rlhf report io.output=...`): the same files, replacing an older copy whole.
    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "stale.png").write_bytes(b"x")
    copy_report(path.parent, tmp_path / "published")
    assert sorted(p.name for p in (tmp_path / "published").rglob("*")) == sorted(
        p.name for p in path.parent.rglob("*") if p.suffix != ".html")  # Markdown and PNGs, no inlined copies


def test_progression_metrics_sort_in_reading_order_with_ci_bounds_beside():
    metrics = progression_metrics(entry(2, ppo={"steps": 12, "reward_start": 0.1, "reward_end": 0.4, "kl_end": 0.02}))
    names = sorted(metrics)  # as MLflow lists them
    sections = [name.split("/")[0] for name in names]
    assert sections == sorted(sections, key=lambda s: int(s.split("_")[0]))
    assert sections[0] == "1_win_rate" and sections[-1] == "5_ppo"
    assert names[:3] == ["1_win_rate/sft/gold", "1_win_rate/sft/gold/ci_hi", "1_win_rate/sft/gold/ci_lo"]
    assert (metrics["1_win_rate/sft/gold/ci_lo"], metrics["1_win_rate/sft/gold/ci_hi"]) == (0.5, 0.75)
    assert metrics["2_rm/helpful/accuracy/better"] == 0.7 and metrics["3_temperature/chosen"] == 0.8
    assert metrics["4_rejection/pool_size"] == 10 and metrics["5_ppo/reward_end"] == 0.4


def test_iteration_markdown_is_a_table_of_the_results():
    text = iteration_markdown(entry(1))
    lines = text.splitlines()
    assert lines[:2] == ["| RLHF-V1 | |", "|---|---|"] and all(line.count("|") == 3 for line in lines)
    assert "| win rate vs sft, judge gold | 62% [50, 75] n=40 |" in lines
    assert "| helpful RM accuracy (held out) | 65% n=20 |" in lines and "| temperature chosen | 0.8 |" in lines


def test_reward_section_shows_synthetic_rows_apart_and_the_dag_ablation(tmp_path):
    first = entry(1)
    acc = first["reward"]["helpful"]
    first["reward"]["helpful"]["synthetic_seed"] = {**acc, "accuracy": 0.8, "n_test": 8}
    first["reward_ablation"] = {"test_set": "held-out labelled pairs", "n_train": 96,
                                "variants": {"none": {**acc, "accuracy": 0.61}, "small": acc}}
    summary = {"campaign": "hand", "code_version": "abc", "config": {}, "iterations": [first]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path).read_text()
    assert "| helpful | RLHF-V1 | synthetic seed pairs (held out) |" in md and "| 80.0% [43.0%, 82.0%] (n=8) |" in md
    assert "Margin ablation (Table 28 layout), RLHF-V1" in md and "96 training pairs" in md
    assert "| none | 90.0% [25.0%, 95.0%] (n=5) |" in md and "| 61.0% [43.0%, 82.0%] (n=20) |" in md
    assert "No margin ablation" not in md


def test_reward_models_are_set_against_the_labels_ceiling_where_the_rater_was_simulated(tmp_path):
    first, people = entry(1), entry(2)
    first["reward"]["helpful"] |= {"label_ceiling": 0.64, "gold_agreement": 0.66, "n_gold_ordered": 19}
    summary = {"campaign": "hand", "code_version": "abc", "config": {}, "iterations": [first, people]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path).read_text()
    assert "| helpful | RLHF-V1 | 65.0% | 64.0% | 66.0% | 19 |" in md
    assert "| helpful | RLHF-V2 |" not in md.split("labels' ceiling")[-1]  # labelled by people: no row
    rows = table(summary).splitlines()
    assert rows[1].startswith("V1    65% (ceil. 64%)  ") and rows[2].split()[:2] == ["V2", "65%"]
    assert "| helpful RM: labels' ceiling, gold agreement | 64%, 66% |" in iteration_markdown(first)
    assert "labels' ceiling" not in iteration_markdown(people)
    assert progression_metrics(first)["2_rm/helpful/label_ceiling"] == 0.64
    assert "2_rm/helpful/gold_agreement" not in progression_metrics(people)


def test_pairs_section_shows_levels_and_preference_by_source_and_the_pool_schedule(tmp_path):
    first, second = entry(1), entry(2)
    first["pairs"] = {"collected": 8, "levels": {"better": 3, "negligibly_better": 5}, "variants": ["policy", "base"],
                      "by_variant": {"policy T0.7": {"n": 8, "preferred": 0.75, "n_safety": 4, "safer": 0.5},
                                     "smollm2 T1.2": {"n": 8, "preferred": 0.25, "n_safety": 4, "safer": 0.5}}}
    summary = {"campaign": "hand", "code_version": "abc", "config": {"rejection": {"pool_from": 3}},
               "iterations": [first, second]}  # V2 recorded no pairs (a summary from before they were kept)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path).read_text()
    assert "| RLHF-V1 | 8 | 0 | 3 | 0 | 5 |" in md
    assert "| RLHF-V1 | policy T0.7 | 8 | 75.0% | 4 | 50.0% |" in md and "| RLHF-V1 | smollm2 T1.2 | 8 | 25.0% |" in md
    assert "before RLHF-V3 (`rejection.pool_from`), of the iteration's own samples only" in md


def test_the_distilled_student_gets_its_own_metrics_and_section(tmp_path):
    first = entry(1)
    first["student"] = {"path": "/c/iter-1/distill", "steps": 3, "train_loss_last": 1.2,
                        "win_rate": {"sft/gold": result(0.6, 0.52, 0.68), "teacher/gold": result(0.3, 0.2, 0.4)}}
    metrics = progression_metrics(first)
    assert metrics["7_student/win_rate/teacher/gold"] == 0.3
    assert (metrics["7_student/win_rate/sft/gold/ci_lo"], metrics["7_student/win_rate/sft/gold/ci_hi"]) == (0.52, 0.68)
    assert max(metrics, key=lambda name: int(name.split("_")[0])).startswith("7_student/")
    (tmp_path / "summary.json").write_text(json.dumps({"campaign": "hand", "code_version": "abc", "config": {},
                                                       "iterations": [first]}))
    md = write_report(tmp_path).read_text()
    assert "| RLHF-V1 | teacher/gold | 30.0% | 0.0% | 70.0% | 30.0% | [20.0%, 40.0%] | 40 | 50.0% | - / - |" in md
    assert "No distilled student" not in md


def test_helpfulness_and_safety_prompt_sets_and_the_violation_rate_are_reported(tmp_path):
    first = entry(1)
    first["win_rate_by_set"] = {"sft/gold": {"helpfulness": result(0.6, 0.5, 0.7, n=30),
                                             "safety": result(0.45, 0.3, 0.6, n=10)}}
    first["violation_rate"] = {"model": {"rate": 0.2, "n": 10}, "sft": {"rate": 0.5, "n": 10}}
    metrics = progression_metrics(first)
    assert metrics["1_win_rate/sft/gold/safety"] == 0.45 and metrics["1_win_rate/violation_rate/sft"] == 0.5
    (tmp_path / "summary.json").write_text(json.dumps({"campaign": "hand", "code_version": "abc", "config": {},
                                                       "iterations": [first]}))
    md = write_report(tmp_path).read_text()
    assert "| RLHF-V1 | sft/gold | 60.0% [50.0%, 70.0%] (n=30) | 45.0% [30.0%, 60.0%] (n=10) |" in md
    assert "| RLHF-V1 | model | 20.0% | 10 |" in md and "| RLHF-V1 | sft | 50.0% | 10 |" in md


def test_the_system_prompt_condition_and_the_pairwise_judges_position_bias_are_reported(tmp_path):
    first = entry(1)
    md = _report(tmp_path, first)
    assert "Not measured in this campaign: `eval.system_prompt" in md
    first["win_rate"]["sft/pairwise"] = result(0.55, 0.45, 0.65) | {
        "judge": "pairwise", "win_rate_when_first": 0.8, "win_rate_when_second": 0.3, "unparsed": 3}
    first["win_rate_with_system"] = {"sft/gold": result(0.7, 0.6, 0.8), "sft/pairwise": result(0.5, 0.4, 0.6)}
    first["violation_rate"] = {"model": {"rate": 0.9, "n": 10}}
    first["violation_rate_with_system"] = {"model": {"rate": 0.4, "n": 10}}
    metrics = progression_metrics(first)
    assert metrics["1_win_rate/with_system/sft/gold"] == 0.7 and metrics["1_win_rate/with_system/sft/gold/ci_lo"] == 0.6
    assert (metrics["1_win_rate/sft/pairwise/when_first"], metrics["1_win_rate/sft/pairwise/when_second"]) == (0.8, 0.3)
    assert "1_win_rate/sft/gold/when_first" not in metrics  # a pointwise judge's split is noise, not a bias
    md = _report(tmp_path, first, config={"eval": {"system_prompt": "Be brief."}})
    assert ("| RLHF-V1 | sft/pairwise | 55.0% | 0.0% | 45.0% | 55.0% | [45.0%, 65.0%] | 40 | 50.0% "
            "| 80.0% / 30.0% |") in md
    assert "RLHF-V1 sft/pairwise: 3 of 40" in md and "`Be brief.`" in md
    assert "| RLHF-V1 | sft/gold | 62.5% [50.0%, 75.0%] (n=40) | 70.0% [60.0%, 80.0%] (n=40) |" in md
    assert "| RLHF-V1 | sft/rm | 70.0% [60.0%, 80.0%] (n=40) | - |" in md  # not measured with it
    assert "| RLHF-V1 | model | 90.0% | 40.0% |" in md


def _report(tmp_path, *iterations, config=None) -> str:
    (tmp_path / "summary.json").write_text(json.dumps({"campaign": "hand", "code_version": "abc",
                                                       "config": config or {}, "iterations": list(iterations)}))
    return write_report(tmp_path).read_text()
