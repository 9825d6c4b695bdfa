"""Ghost Attention end to end on the tiny model: the step synthesises dialogues with a trivially checkable
constraint (lowercase), fine-tunes on them and measures adherence per turn before and after."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rlhf.core.gatt import GAttConfig
from rlhf.core.models import ModelConfig
from rlhf.core.sampling import SamplingConfig
from rlhf.core.sft import SFTConfig
from rlhf.core.steps.gatt import gatt_step

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gatt_raises_adherence_to_the_system_instruction(tmp_path):
    # A random byte-level model follows "lowercase" by chance (no capital letters in 8 bytes) about a quarter
    # of the time; the kept answers all follow it, so training on them must raise the share.
    # Measured: seed 0 mean adherence 0.22 -> 0.44, seed 1 0.27 -> 0.41 (96 judged answers each).
    cfg = GAttConfig(n_dialogues=64, turns=2, k=4, examples="every_turn", constraints=["lowercase"], eval_dialogues=32,
                     eval_zero_shot=4, eval_turns=3, eval_temperature=1.0, temperature=1.0, max_new_tokens=8, seed=0)
    train = SFTConfig(epochs=6, batch_size=8, micro_batch_size=8, lr=3e-3, max_length=512, checkpoint_every=0,
                      warmup_ratio=0.0)
    out = tmp_path / "gatt"
    manifest = gatt_step(ModelConfig(name_or_path="tiny", precision="fp32"), cfg, train,
                         SamplingConfig(max_new_tokens=8, batch_prompts=64), out)
    m = manifest["metrics"]
    before, after = m["adherence_by_turn"]["before"], m["adherence_by_turn"]["after"]
    assert set(before) == set(after) == {"1", "2", "3"}
    assert np.mean(list(after.values())) > np.mean(list(before.values())) + 0.1, (before, after)
    assert set(m["zero_shot"]) == {"before", "after"}
    assert 0 < m["n_dialogues"] <= 64 and m["n_examples"] >= m["n_dialogues"]
    # The outputs: a model directory, the training rows (instruction as system message only), Table 30's numbers.
    assert (out / "model.safetensors").is_file() and (out / "judgments.parquet").is_file()
    rows = [json.loads(line) for line in (out / "gatt_sft.jsonl").read_text().splitlines()]
    assert len(rows) == m["n_examples"] and all(r["messages"][0]["role"] == "system" for r in rows)
    table = pd.read_csv(out / "adherence.csv")
    assert set(table.model) == {"before", "after"} and set(table.set) == {"seen", "zero_shot"}
    judged = pd.read_parquet(out / "judgments.parquet")
    seen_after = judged[(judged.model == "after") & (judged.set == "seen")]
    by_turn = seen_after.groupby("turn").follows.mean().round(6).to_dict()
    assert by_turn == {int(turn): round(share, 6) for turn, share in after.items()}


def test_gatt_commands_run_the_phases_one_at_a_time(tmp_path, capsys):
    from rlhf.cli import main

    common = ["model=tiny", "model.precision=fp32", f"campaign.root={tmp_path}", "campaign.name=g",
              "gatt.constraints=[max_words-20]", "gatt.n_dialogues=4", "gatt.turns=2", "gatt.k=2",
              "gatt.eval_dialogues=3", "gatt.eval_zero_shot=2", "gatt.eval_turns=2", "sampling.max_new_tokens=6",
              "gatt.train.epochs=1", "gatt.train.batch_size=4", "gatt.train.micro_batch_size=4", "gatt.train.lr=1e-3"]
    here = tmp_path / "g" / "iter-1"
    assert main(["gatt", "data", *common]) == 0
    rows = [json.loads(line) for line in (here / "gatt-data" / "gatt_sft.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # 8 random bytes are always at most 20 words: every dialogue keeps both turns
    assert all(r["messages"][0]["content"] in ("Always answer in at most 20 words.", "Length: at most 20 words")
               for r in rows)
    assert main(["gatt", "train", *common]) == 0 and (here / "gatt-train" / "model.safetensors").is_file()
    assert main(["gatt", "eval", *common, f"model.name_or_path={here / 'gatt-train'}"]) == 0
    curves = json.loads((here / "gatt-eval" / "adherence.json").read_text())
    assert curves["seen"] == {"1": 1.0, "2": 1.0} and set(curves["zero_shot"]) == {"1", "2"}
    assert "turn 1: 100%" in capsys.readouterr().out
