"""`rlhf rm train | eval | ablate` end to end on the tiny model with the simulated rater's pairs."""

import pytest

from rlhf import cli

SMALL = ["model=tiny", "reward=demo", "reward.helpful.n_synthetic=40", "reward.safety.n_synthetic=40",
         "reward.n_eval_synthetic=16", "reward.train.n_test=8", "reward.train.batch_size=16",
         "reward.train.epochs=1", "reward.train.max_length=128", "reward.train.lr=1e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_eval_ablate(tmp_path, capsys):
    campaign = [f"campaign.root={tmp_path}", "campaign.name=c"]
    assert cli.main(["rm", "train", *SMALL, *campaign]) == 0
    out = capsys.readouterr().out
    assert "helpful RM:" in out and "safety RM:" in out and "| significantly_better |" in out
    iteration = tmp_path / "c" / "iter-1"
    assert (iteration / "rm-helpful" / "reward_head.safetensors").is_file()
    assert (iteration / "rm-safety" / "manifest.json").is_file()

    assert cli.main(["rm", "eval", *SMALL, *campaign]) == 0
    assert "16 simulated-rater pairs on held-out prompts" in capsys.readouterr().out
    assert (iteration / "rm-safety-eval" / "eval.csv").is_file()

    assert cli.main(["rm", "ablate", *SMALL, *campaign, "reward.ablation=[none,large]"]) == 0
    out = capsys.readouterr().out
    assert "| none |" in out and "| large |" in out and "| small |" not in out


def test_eval_without_trained_rms_says_what_to_run(tmp_path, capsys):
    assert cli.main(["rm", "eval", *SMALL, f"campaign.root={tmp_path}", "reward.train_safety=false"]) == 2
    assert "run `rlhf rm train`" in capsys.readouterr().err
