"""Train a reward model on one's own preference file through the CLI: the bundled HH-format sample
(``rlhf_core/assets/hh_sample.jsonl.gz``: 46 records, 45 good -- 9 multi-turn, 3 with turn markers
inside an answer -- and one bad on line 17) with the README's command."""

import json
import logging
import re
import shlex
from pathlib import Path

import pytest

from rlhf import cli
from rlhf.core.assets import asset_path
from rlhf.core.reward.model import load_reward_model

REPO = Path(__file__).resolve().parents[2]
SAMPLE = "rlhf_core/assets/hh_sample.jsonl.gz"
SKIPPED = f"{SAMPLE}:17: field 'rejected': no '\\n\\nAssistant:' turn in the transcript"

# The command of README.md's "Train reward models on your own data" (run from the repository's root).
COMMAND = ["rm", "train", "model=tiny", "reward=demo", f"reward.helpful.data=[{SAMPLE}]", "reward.train_safety=false",
           "reward.helpful.on_bad_record=skip", "reward.train.n_test=0.2", "reward.train.batch_size=16",
           "reward.train.epochs=1", "reward.train.max_length=128", "reward.train.lr=1e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_sample_is_the_bundled_asset():
    assert asset_path("hh_sample.jsonl.gz") == REPO / SAMPLE


def test_readme_shows_the_command_this_test_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Train reward models on your own data", 1)[1].split("\n## ", 1)[0]
    # each bash block as shell words: quotes removed, a backslash-newline continues the line
    blocks = [shlex.split(block.replace("\\\n", " ")) for block in re.findall(r"```bash\n(.*?)```", section, re.S)]
    want = ["rlhf", *COMMAND]
    assert any(args[i:i + len(want)] == want for args in blocks for i in range(len(args)))


def test_rm_train_on_hh_sample_skips_the_bad_record(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(REPO)
    caplog.set_level(logging.INFO, logger="rlhf")
    assert cli.main([*COMMAND, f"campaign.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    # 45 pairs kept; n_test=0.2 holds out round(0.2 * 45) = 9 of them.
    assert "helpful RM:" in out and "36 train / 9 labelled + 0 synthetic test pairs" in out and "safety RM:" not in out
    assert f"skipped bad record (on_bad_record=skip): {SKIPPED}" in caplog.text
    assert f"{SAMPLE}: hh format, 45/46 pairs kept; 1 bad record(s) skipped" in caplog.text

    rm_dir = tmp_path / "default" / "iter-1" / "rm-helpful"
    manifest = json.loads((rm_dir / "manifest.json").read_text())
    pairs = manifest["inputs"]["pairs0"]
    assert (pairs["format"], pairs["n_read"], pairs["n_kept"], pairs["n_skipped_bad"]) == ("hh", 46, 45, 1)
    assert pairs["skipped_lines"] == [17] and pairs["skipped"] == [SKIPPED]
    assert (manifest["metrics"]["n_train"], manifest["metrics"]["n_test"]) == (36, 9)
    assert manifest["config"]["reward"]["n_test"] == 0.2 and manifest["config"]["data"]["on_bad_record"] == "skip"
    rm, _ = load_reward_model(rm_dir)
    assert rm.info["name"] == "helpful"


def test_by_default_a_bad_record_stops_the_run_naming_file_line_and_field(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    command = [arg for arg in COMMAND if not arg.startswith("reward.helpful.on_bad_record")]
    assert cli.main([*command, f"campaign.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert SKIPPED in err and "1 problem(s) in the input data" in err
    assert err.rstrip().endswith("(to drop the bad records instead, each logged and counted: "
                                 "reward.<helpful|safety>.on_bad_record=skip)")
    assert not (tmp_path / "default" / "iter-1" / "rm-helpful").exists()


def test_a_single_path_without_brackets_is_a_one_file_list():
    from rlhf.flows.config import compose_config

    cfg = compose_config(["reward=demo", f"reward.helpful.data={SAMPLE}", "reward.train.n_test=0.2"])
    assert cfg.reward.helpful.data == [SAMPLE] and cfg.reward.train.n_test == 0.2


@pytest.mark.parametrize("override, text", [
    ("reward.train.n_test=1.5", "config 'reward.train.n_test': a float is a fraction of the pairs and must be in "
                                "(0, 1)"),
    ("reward.train.n_test=-3", "config 'reward.train.n_test': a count must be >= 0"),
    ("reward.helpful.on_bad_record=ignore", "config 'reward.*.on_bad_record': unknown value 'ignore'"),
])
def test_bad_values_name_their_key(tmp_path, capsys, override, text):
    assert cli.main(["rm", "train", "model=tiny", "reward=demo", override, f"campaign.root={tmp_path}"]) == 2
    assert text in capsys.readouterr().err


def test_n_test_count_larger_than_the_data_names_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert cli.main([*COMMAND, "reward.train.n_test=100", f"campaign.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "config 'reward.train.n_test': iteration 0 has 45 pairs, cannot hold out 100 as test" in err
    assert "give a fraction of each batch as a float in (0, 1)" in err
