"""Reward-model training on the tiny Llama: it learns a separable preference, its accuracy rises with
the preference level, resume is exact, the step's output reloads and is cached, and the margin ablation
has the Table 28 layout.

The data: an answer is 12 characters of ``x`` and ``o``; its latent quality is its number of ``x``.
The level says how far apart chosen and rejected are (8, 4, 2 or 1 more ``x``). With ``noise`` the
label comes from a Bradley-Terry rater, who prefers the worse answer with probability
``sigmoid(-noise * gap)``: rare for a gap of 8, common for a gap of 1, as with real annotators.
"""

import json
import logging
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf.core.models import ModelConfig
from rlhf.core.preferences import LEVELS, split_pairs
from rlhf.core.reward.metrics import TABLE_COLUMNS
from rlhf.core.reward.model import load_reward_model, reward_model_from_policy, score
from rlhf.core.reward.train import RewardConfig, RMDataConfig, evaluate_reward_model, train_reward_model
from rlhf.core.steps.reward import rm_ablate_step, rm_eval_step, rm_train_step
from rlhf.core.training import InjectedFault

GAP = dict(zip(LEVELS, (8, 4, 2, 1)))
TINY = ModelConfig(name_or_path="tiny", precision="fp32")


pytestmark = pytest.mark.usefixtures("one_thread")


def counting_pairs(n: int, seed: int, noise: float = 0.0) -> pd.DataFrame:
    rng = random.Random(seed)

    def answer(n_x: int) -> str:
        chars = list("x" * n_x + "o" * (12 - n_x))
        rng.shuffle(chars)
        return "".join(chars)

    rows = []
    for i in range(n):
        level = LEVELS[i % 4]
        low = rng.randint(0, 12 - GAP[level])
        better, worse = answer(low + GAP[level]), answer(low)
        if noise and rng.random() < 1 / (1 + math.exp(noise * GAP[level])):
            better, worse = worse, better
        rows.append({"prompt": [{"role": "user", "content": "Rate this."}], "chosen": better, "rejected": worse,
                     "level": level, "source": "test", "iteration": 0, "safety": False})
    return pd.DataFrame(rows)


def rm_cfg(**overrides) -> RewardConfig:
    base = dict(lr=1e-3, epochs=2, batch_size=32, micro_batch_size=16, max_length=64, n_test=200,
                checkpoint_every=0, margin="small")
    return RewardConfig(**{**base, **overrides})


def trained(pairs: pd.DataFrame, cfg: RewardConfig, work_dir, seed: int = 0):
    rm, tok = reward_model_from_policy(TINY, seed=seed, max_length=cfg.max_length)
    train, test = split_pairs(pairs, cfg.n_test, seed=cfg.seed)
    result, _ = train_reward_model(rm, tok, train, cfg, work_dir, precision="fp32")
    return rm, tok, test, result


def test_learns_a_separable_preference(tmp_path):
    pairs = counting_pairs(800, seed=0)
    rm, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    _, test = split_pairs(pairs, 200, seed=0)
    before, _ = evaluate_reward_model(rm, tok, test)
    rm, tok, test, result = trained(pairs, rm_cfg(), tmp_path)
    after, scores = evaluate_reward_model(rm, tok, test)
    assert before["accuracy"] < 0.75, before["accuracy"]  # a random head does not already know
    assert after["accuracy"] >= 0.9, after["accuracy"]
    assert after["accuracy/significantly_better"] >= 0.95
    assert after["reward_gap/significantly_better"] > after["reward_gap/negligibly_better"] > 0
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert len(scores) == 200 and set(scores.columns) >= {"level", "chosen_score", "rejected_score", "credit"}


def test_accuracy_rises_with_the_preference_level(tmp_path):
    pairs = counting_pairs(1400, seed=1, noise=0.6)
    rm, tok, test, _ = trained(pairs, rm_cfg(n_test=600, epochs=2), tmp_path)
    metrics, _ = evaluate_reward_model(rm, tok, test)
    by_level = [metrics[f"accuracy/{level}"] for level in LEVELS]
    assert all(a > b for a, b in zip(by_level, by_level[1:])), by_level
    assert by_level[0] >= 0.9 and by_level[-1] < 0.8, by_level


def test_resume_after_a_crash_gives_the_same_model(tmp_path):
    pairs = counting_pairs(96, seed=2)
    cfg = rm_cfg(epochs=2, batch_size=16, micro_batch_size=8, n_test=32, checkpoint_every=2)
    straight, tok, test, _ = trained(pairs, cfg, tmp_path / "straight")
    with pytest.raises(InjectedFault):
        trained(pairs, rm_cfg(**{**cfg.__dict__, "fail_after_steps": 3}), tmp_path / "crashed")
    resumed, _, _, result = trained(pairs, cfg, tmp_path / "crashed")
    assert result.resumed_from == 2 and result.steps == 8
    prompts, answers = list(test["prompt"]), list(test["chosen"])
    torch.testing.assert_close(score(resumed, tok, prompts, answers), score(straight, tok, prompts, answers),
                               atol=1e-6, rtol=1e-6)


@pytest.fixture
def pair_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with path.open("w") as handle:
        for row in counting_pairs(240, seed=3).to_dict("records"):
            handle.write(json.dumps(row) + "\n")
    return path


def test_rm_train_step_output_reloads_and_is_cached(tmp_path, pair_file, caplog):
    out = tmp_path / "iter-1" / "rm-helpful"
    cfg = rm_cfg(n_test=40, checkpoint_every=3)
    manifest = rm_train_step(TINY, RMDataConfig(data=[str(pair_file)]), cfg, out, name="helpful")
    m = manifest["metrics"]
    assert manifest["step"] == "rm_train" and m["n_train"] == 200 and m["n_test"] == 40 and m["steps"] == 14
    assert m["test/accuracy"] >= 0.9 and m["test/n/significantly_better"] == 10
    assert all(f"test/accuracy/{level}" in m for level in LEVELS)
    assert manifest["inputs"]["pairs0"]["path"] == str(pair_file)
    assert not (tmp_path / "iter-1" / ".rm-helpful.work").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 14
    assert "| significantly_better |" in (out / "accuracy_by_level.md").read_text()

    rm, tok = load_reward_model(out)
    assert rm.info["name"] == "helpful" and rm.info["margin_table"]["significantly_better"] == 1.0
    scores = pd.read_csv(out / "eval.csv")
    prompts = [[{"role": "user", "content": p}] for p in scores["prompt"]]
    reloaded = score(rm, tok, prompts, list(scores["chosen"]), precision=TINY.precision)  # as the step scored
    np.testing.assert_allclose(reloaded.numpy(), scores["chosen_score"], atol=1e-5)

    caplog.set_level(logging.INFO, logger="rlhf")
    again = rm_train_step(TINY, RMDataConfig(data=[str(pair_file)]), cfg, out, name="helpful")
    assert "cached" in caplog.text and again["created"] == manifest["created"]

    evaluated = rm_eval_step(out, pair_file, tmp_path / "rm-helpful-eval")
    assert evaluated["metrics"]["test/n_test"] == 240 and (tmp_path / "rm-helpful-eval" / "eval.csv").is_file()


def test_rm_train_step_resumes_its_checkpoint_unless_the_config_changed(tmp_path, pair_file):
    out, data = tmp_path / "rm-helpful", RMDataConfig(data=[str(pair_file)])
    with pytest.raises(InjectedFault):
        rm_train_step(TINY, data, rm_cfg(n_test=40, checkpoint_every=3, fail_after_steps=4), out)
    assert rm_train_step(TINY, data, rm_cfg(n_test=40, checkpoint_every=3), out)["metrics"]["resumed_from_step"] == 3
    with pytest.raises(InjectedFault):
        rm_train_step(TINY, data, rm_cfg(n_test=40, checkpoint_every=3, fail_after_steps=4, lr=5e-4), out)
    # Another lr: the old run's checkpoint would mix two configs, so training starts over.
    assert rm_train_step(TINY, data, rm_cfg(n_test=40, checkpoint_every=3, lr=2e-4), out)["metrics"][
        "resumed_from_step"] == 0


def test_rm_steps_run_on_the_synthetic_default_pairs(tmp_path):
    data = RMDataConfig(n_synthetic=48)
    out = tmp_path / "rm-safety"
    manifest = rm_train_step(TINY, data, rm_cfg(n_test=16, epochs=1, batch_size=16, max_length=160), out, name="safety")
    m = manifest["metrics"]
    assert m["n_train"] == 32 and m["n_prompt_truncated"] > 0  # byte tokens: the long prompts get cut
    # synthetic pairs only: their held-out share is reported apart, not as the labelled pairs' Table 8
    assert m["n_test"] == 0 and m["n_test_synthetic"] == 16 and "test/accuracy" not in m
    assert m["test_synthetic/n_test"] == 16 and "synthetic" in (out / "accuracy_by_level.md").read_text()
    assert manifest["inputs"]["pairs"]["path"] == "synthetic:train"
    evaluated = rm_eval_step(out, None, tmp_path / "eval", synthetic=RMDataConfig(n_synthetic=24))
    assert evaluated["inputs"]["pairs"]["path"] == "synthetic:eval"
    assert evaluated["metrics"]["test_synthetic/n_test"] == 24


def test_margin_ablation_has_the_table28_layout(tmp_path, pair_file):
    out = tmp_path / "rm-ablation"
    manifest = rm_ablate_step(TINY, RMDataConfig(data=[str(pair_file)]), rm_cfg(n_test=80, epochs=1), out)
    table = pd.read_csv(out / "table28.csv", index_col="margin")
    assert list(table.index) == ["none", "small", "large"] and list(table.columns) == list(TABLE_COLUMNS)
    assert ((table >= 0) & (table <= 100)).all().all()
    assert table.loc["small", "significantly_better"] > 50  # trained, not chance
    assert (out / "table28.md").read_text().count("\n| ") == 4  # separator + 3 rows after the header
    assert {key.split("/")[0] for key in manifest["metrics"] if "/" in key} == {"none", "small", "large"}
    assert manifest["metrics"]["large/n_test"] == 80
    assert not (tmp_path / ".rm-ablation.work").exists()
