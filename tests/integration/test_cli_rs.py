"""`rlhf rs`: one rejection-sampling round by hand on the tiny model, against two tiny RMs: the temperature
search, the pool, and the policy's fine-tune on it with the ``train_policy`` section (as in a campaign)."""

import json

import pytest
from model_files import tiny_rms  # beside this file

from rlhf import cli
from rlhf.core.models import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_round_fine_tunes_with_the_train_policy_section(tmp_path, capsys):
    rms = tiny_rms(tmp_path / "rms", ModelConfig(name_or_path="tiny", precision="fp32"))
    assert cli.main(["rs", "model=tiny", "model.precision=fp32", f"campaign.root={tmp_path}", "campaign.name=c",
                     "campaign.iteration=1", f"scorer.helpful={rms.helpful}", f"scorer.safety={rms.safety}",
                     "rejection.k=2", "rejection.temperatures=[0.7,1.0]", "rejection.probe_prompts=4",
                     "rejection.n_prompts=8", "sampling.max_new_tokens=8", "train_policy.epochs=1",
                     "train_policy.batch_size=4", "train_policy.micro_batch_size=4", "train_policy.lr=0.0123",
                     "train_policy.max_length=128", "sft.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "chosen" in out and "new policy:" in out
    here = tmp_path / "c" / "iter-1"
    manifest = json.loads((here / "train_policy" / "manifest.json").read_text())
    assert manifest["config"]["sft"]["lr"] == 0.0123  # train_policy's settings, not sft's
    assert (here / "rejection_sample" / "pool.parquet").is_file()
