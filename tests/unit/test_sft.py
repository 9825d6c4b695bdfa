"""SFT on the tiny model: it learns, accumulation does not change a step, resume is exact, NaN stops."""

import pytest
import torch

from rlhf.core.models import build_tiny_model
from rlhf.core.sft import CausalLMObjective, SFTConfig, mean_target_loss, run_sft
from rlhf.core.training import InjectedFault, NonFiniteLossError, checkpoint_step, latest_checkpoint

WORDS = ["apple", "kiwi", "plum", "fig", "pear", "lime", "date", "melon"]


def convs(n=8):
    # Different lengths on purpose: per-micro-batch averaging would then differ from per-token averaging.
    return [{"messages": [{"role": "user", "content": f"Say {w}"},
                          {"role": "assistant", "content": f"{w} " * (1 + i % 3) + "!"}]}
            for i, w in enumerate(WORDS[:n])]


def cfg(**overrides):
    base = dict(lr=3e-3, epochs=1, batch_size=8, micro_batch_size=8, checkpoint_every=0, warmup_ratio=0.0,
                weight_decay=0.0)
    return SFTConfig(**{**base, **overrides})


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_overfits_a_handful_of_conversations(tiny, tmp_path):
    model, tok = tiny
    data = convs(4)
    before = mean_target_loss(model, tok, data)
    result, _ = run_sft(model, tok, data, cfg(epochs=150, batch_size=4, micro_batch_size=4, min_lr_ratio=1.0),
                        tmp_path)
    after = mean_target_loss(model, tok, data)
    assert before > 5.0  # ~log(261) for a random model
    assert after < 0.15, f"loss {before:.2f} -> {after:.2f}"
    assert result.steps == 150


def test_every_trainable_parameter_changes(tiny, tmp_path):
    model, tok = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_sft(model, tok, convs(), cfg(max_steps=1), tmp_path)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, start[n])]
    # The input embeddings of bytes that never occur cannot change; everything else must.
    assert unchanged == ["model.embed_tokens.weight"] or unchanged == []


def test_accumulation_invariance_8x1_equals_1x8(tmp_path):
    results, weights = [], []
    for micro in (8, 1):
        model, tok = build_tiny_model(seed=0)
        result, _ = run_sft(model, tok, convs(), cfg(max_steps=1, micro_batch_size=micro),
                            tmp_path / f"m{micro}", precision="fp32")  # exact only without bf16 rounding
        results.append(result.final)
        weights.append(params(model))
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
    assert results[0]["grad_norm"] == pytest.approx(results[1]["grad_norm"], rel=1e-4)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_resume_mid_epoch_equals_straight_run(tmp_path):
    settings = dict(epochs=3, batch_size=2, micro_batch_size=1, lr=1e-3)  # 4 steps/epoch, 12 in all
    straight, tok = build_tiny_model(seed=0)
    run_sft(straight, tok, convs(), cfg(**settings), tmp_path / "straight")

    crashed, tok = build_tiny_model(seed=0)
    with pytest.raises(InjectedFault):  # crash after step 6, mid-epoch 2; checkpoint at step 5
        run_sft(crashed, tok, convs(), cfg(**settings, checkpoint_every=5, fail_after_steps=6),
                tmp_path / "resumed")
    assert latest_checkpoint(tmp_path / "resumed").name == "step-5"
    resumed, tok = build_tiny_model(seed=1)  # different init: everything must come from the checkpoint
    result, _ = run_sft(resumed, tok, convs(), cfg(**settings, checkpoint_every=5), tmp_path / "resumed")
    assert result.resumed_from == 5 and result.steps == 12 and len(result.history) == 7
    assert torch.allclose(params(straight), params(resumed), atol=1e-6)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    """A truncated weights file in the newest checkpoint: set aside with a warning, the run resumes from
    the checkpoint before it, and still ends where a straight run does."""
    settings = dict(epochs=3, batch_size=2, micro_batch_size=1, lr=1e-3)
    straight, tok = build_tiny_model(seed=0)
    run_sft(straight, tok, convs(), cfg(**settings), tmp_path / "straight")
    crashed, tok = build_tiny_model(seed=0)
    with pytest.raises(InjectedFault):  # checkpoints at steps 3 and 6, crash after step 7
        run_sft(crashed, tok, convs(), cfg(**settings, checkpoint_every=3, fail_after_steps=7), tmp_path / "run")
    weights = tmp_path / "run" / "checkpoints" / "step-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert latest_checkpoint(tmp_path / "run").name == "step-3"
    assert "step-6 is damaged (model.safetensors has 1000 bytes" in caplog.text
    resumed, tok = build_tiny_model(seed=1)
    result, _ = run_sft(resumed, tok, convs(), cfg(**settings, checkpoint_every=3), tmp_path / "run")
    assert result.resumed_from == 3 and result.steps == 12
    assert torch.allclose(params(straight), params(resumed), atol=1e-6)


def test_no_whole_checkpoint_means_a_fresh_start(tmp_path, caplog):
    model, tok = build_tiny_model(seed=0)
    with pytest.raises(InjectedFault):
        run_sft(model, tok, convs(), cfg(epochs=2, batch_size=2, micro_batch_size=2, checkpoint_every=2,
                                         keep_checkpoints=1, fail_after_steps=3), tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "step-2" / "trainer_state.json").write_text('{"st')
    assert latest_checkpoint(tmp_path / "run") is None and "trainer_state.json is unreadable" in caplog.text


class NaNAtStep(CausalLMObjective):
    """Fault injection: the loss becomes NaN on the n-th forward pass."""

    def __init__(self, model, at):
        super().__init__(model)
        self.calls, self.at = 0, at

    def forward(self, *args, **kwargs):
        self.calls += 1
        out = super().forward(*args, **kwargs)
        return {"loss_sum": out["loss_sum"] * float("nan")} if self.calls == self.at else out


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr("rlhf.core.sft.CausalLMObjective", lambda m: NaNAtStep(m, at=3))
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 3.*step-2"):
        run_sft(model, tok, convs(), cfg(epochs=5, batch_size=4, micro_batch_size=4, checkpoint_every=1,
                                         keep_checkpoints=1), tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-2" and checkpoint_step(ckpt) == 2 and checkpoint_step(None) == 0
