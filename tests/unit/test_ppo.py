"""PPO's maths on hand-made numbers, and its invariants on the tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhf.core.chat import render_prompt
from rlhf.core.models import build_tiny_model
from rlhf.core.ppo import (
    PPOConfig,
    ValueModel,
    answer_logprobs,
    gae,
    make_batch,
    make_experience,
    masked_whiten,
    policy_loss,
    token_rewards,
    update,
    value_loss,
)
from rlhf.core.ppo_loop import batch_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def t(rows):
    return torch.tensor(rows, dtype=torch.float)


def test_gae_with_gamma_and_lambda_one_is_reward_to_go():
    rewards, values = t([[1, 2, 3], [4, 5, 0]]), t([[0.5, 0.5, 0.5], [1, 1, 7]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist() == [[6, 5, 3], [9, 5, 0]]  # the padded value (7) is never bootstrapped from
    assert advantages.tolist() == [[5.5, 4.5, 2.5], [8, 4, 0]]


def test_gae_discounted_by_hand():
    # delta_2 = 1 - 0.6 = 0.4; delta_1 = 0.5 * 0.6 - 0.4 = -0.1; delta_0 = 0.5 * 0.4 - 0.1 = 0.1
    # A_2 = 0.4; A_1 = -0.1 + 0.25 * 0.4 = 0; A_0 = 0.1 + 0.25 * 0 = 0.1
    advantages, returns = gae(t([[0, 0, 1]]), t([[0.1, 0.4, 0.6]]), t([[1, 1, 1]]), gamma=0.5, lam=0.5)
    torch.testing.assert_close(advantages, t([[0.1, 0.0, 0.4]]))
    torch.testing.assert_close(returns, t([[0.2, 0.4, 1.0]]))


def test_token_rewards_put_the_score_on_the_last_real_token():
    logp, ref = t([[-1, -2, -3], [-1, -1, 0]]), t([[-1.5, -1, -3], [-1, -2, 0]])
    rewards, kl = token_rewards(t([2, -1]), logp, ref, t([[1, 1, 1], [1, 1, 0]]), beta=0.1)
    torch.testing.assert_close(kl, t([[0.5, -1, 0], [0, 1, 0]]))
    torch.testing.assert_close(rewards, t([[-0.05, 0.1, 2.0], [0, -0.1 - 1, 0]]))


def test_clipped_surrogate_by_hand():
    old = t([[0.0, 0.0, 0.0, 0.0]])
    logp = torch.log(t([[1.5, 0.5, 1.5, 0.5]]))
    adv, mask = t([[1, 1, -1, -1]]), t([[1, 1, 1, 1]])
    loss, stats = policy_loss(logp, old, adv, mask, clip=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5
    # A=-1: max(1.5, 1.2) = 1.5, max(0.5, 0.8) = 0.8 (clipped)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert float(stats["clip_frac"]) == pytest.approx(0.5)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.5, 0.5)) / 4
    assert float(stats["approx_kl"]) == pytest.approx(expected_kl, rel=1e-5)
    # a padded token changes nothing
    padded, _ = policy_loss(torch.cat([logp, t([[5.0]])], 1), t([[0, 0, 0, 0, 0]]), t([[1, 1, -1, -1, 9]]),
                            t([[1, 1, 1, 1, 0]]), clip=0.2)
    assert float(padded) == pytest.approx(float(loss))


def test_clipped_value_loss_by_hand():
    loss, stats = value_loss(t([[2.0, 0.0]]), t([[1.0, 1.0]]), t([[1.5, 0.0]]), t([[1, 1]]), clip=0.2)
    # token 0: plain (2 - 1.5)^2 = 0.25, clipped (1.2 - 1.5)^2 = 0.09 -> 0.25
    # token 1: plain 0, clipped (0.8 - 0)^2 = 0.64 -> 0.64 (the clipped one wins)
    assert float(loss) == pytest.approx(0.5 * (0.25 + 0.64) / 2)
    assert float(stats["value_clip_frac"]) == pytest.approx(0.5)


def test_masked_whiten_ignores_padding():
    x, mask = t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]])
    w = masked_whiten(x, mask)
    assert w[0, 3] == 0
    torch.testing.assert_close(w[0, :3], t([-1, 0, 1]) * math.sqrt(3 / 2), rtol=1e-5, atol=1e-5)


def test_batch_plan_covers_every_prompt_once_per_epoch_and_is_repeatable():
    plan = [batch_prompts(10, 4, seed=3, step=s) for s in range(5)]  # 20 = two epochs
    flat = [i for b in plan for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert plan == [batch_prompts(10, 4, seed=3, step=s) for s in range(5)]
    assert plan != [batch_prompts(10, 4, seed=4, step=s) for s in range(5)]


@pytest.fixture
def tiny_batch():
    policy, tok = build_tiny_model(seed=0)
    prompts = [[{"role": "user", "content": c}] for c in ("hi", "a longer question here", "mid one")]
    answers = [torch.tensor(tok(a, add_special_tokens=False)["input_ids"]) for a in ("yes", "no way", "x")]
    batch = make_batch([render_prompt(tok, p) for p in prompts], answers, tok.pad_token_id)
    return policy, tok, prompts, answers, batch


def test_padded_batch_logprobs_equal_one_sequence_at_a_time(tiny_batch):
    policy, tok, prompts, answers, batch = tiny_batch
    assert batch.answer_ids[1].tolist() == answers[1].tolist()
    logp, _ = answer_logprobs(policy, batch, "fp32")
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids = torch.cat([render_prompt(tok, p), a]).unsqueeze(0)
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0, -len(a) - 1:-1]
        alone = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(logp[i, :len(a)].detach(), alone, atol=1e-5, rtol=1e-5)
        assert (logp[i, len(a):] == 0).all()


def test_kl_is_zero_and_first_ratio_is_one_when_policy_equals_reference(tiny_batch):
    policy, _, _, _, batch = tiny_batch
    cfg = PPOConfig(batch_size=3, mini_batch_size=3, micro_batch_size=2, beta=0.1)
    scores = t([1.0, -1.0, 0.5])
    value = ValueModel.from_policy(policy)
    exp = make_experience(policy, copy.deepcopy(policy), value, batch, scores, cfg, "fp32")
    assert (exp.kl == 0).all()
    expected = torch.zeros_like(exp.rewards)
    expected[torch.arange(3), batch.mask.sum(-1).long() - 1] = scores
    assert torch.equal(exp.rewards, expected)  # only the sequence rewards remain
    assert (exp.values == 0).all()  # a fresh value head starts at 0
    from rlhf.core.training import adamw

    stats = update(policy, value, adamw(policy, 1e-3, cfg), adamw(value, 1e-3, cfg), exp, cfg,
                   "fp32", torch.Generator().manual_seed(0))
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7) and stats["clip_frac"] == 0.0


def test_config_is_validated():
    from rlhf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="ppo.batch_size"):
        PPOConfig(batch_size=10, mini_batch_size=4).validate()
    with pytest.raises(ConfigError, match="ppo.value_init"):
        PPOConfig(batch_size=8, mini_batch_size=8, value_init="zeros").validate()


def _joint_update(policy, value, opt_policy, opt_value, exp, cfg, generator):
    """The update written the plain way: both backward passes of every micro-batch, then both steps."""
    from rlhf.core.ppo import answer_values

    for _ in range(cfg.epochs):
        order = torch.randperm(len(exp.scores), generator=generator)
        for start in range(0, len(order), cfg.mini_batch_size):
            mini = order[start:start + cfg.mini_batch_size]
            tokens = exp.batch.mask[mini].sum().clamp(min=1)
            opt_policy.zero_grad(set_to_none=True)
            opt_value.zero_grad(set_to_none=True)
            for m in range(0, len(mini), cfg.micro_batch_size):
                idx = mini[m:m + cfg.micro_batch_size]
                rows = exp.batch.rows(idx)
                share = rows.mask.sum() / tokens
                logp, _ = answer_logprobs(policy, rows, "fp32")
                (policy_loss(logp, exp.logp[idx], exp.advantages[idx], rows.mask, cfg.clip)[0] * share).backward()
                values = answer_values(value, rows, "fp32")
                (value_loss(values, exp.values[idx], exp.returns[idx], rows.mask, cfg.value_clip)[0]
                 * share).backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(value.parameters(), cfg.grad_clip)
            opt_policy.step()
            opt_value.step()


def test_update_steps_the_policy_before_the_value_backward_and_keeps_no_gradient(tiny_batch):
    """A value model of its own is updated after the policy has stepped and dropped its gradients: the
    weights come out bitwise those of the plain order (both backward passes, then both steps), while the
    policy holds no gradient during the value model's backward pass and nothing holds one afterwards."""
    from rlhf.core.training import adamw

    policy, _, _, _, batch = tiny_batch
    cfg = PPOConfig(batch_size=3, mini_batch_size=3, micro_batch_size=2, beta=0.1, epochs=2)
    scores = t([1.0, -1.0, 0.5])
    runs = []
    for ours in (True, False):
        pol = copy.deepcopy(policy)
        value = ValueModel.from_policy(policy)
        torch.nn.init.normal_(value.head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
        exp = make_experience(pol, copy.deepcopy(policy), value, batch, scores, cfg, "fp32")
        opt_p, opt_v = adamw(pol, 1e-3, cfg), adamw(value, 1e-3, cfg)
        seen = []
        hook = value.head.register_full_backward_hook(
            lambda *_, seen=seen, pol=pol: seen.append(all(p.grad is None for p in pol.parameters())))
        generator = torch.Generator().manual_seed(0)
        if ours:
            update(pol, value, opt_p, opt_v, exp, cfg, "fp32", generator)
            assert seen and all(seen)  # 2 epochs x 2 micro-batches, the policy's gradients gone every time
            assert all(p.grad is None for p in list(pol.parameters()) + list(value.parameters()))
        else:
            _joint_update(pol, value, opt_p, opt_v, exp, cfg, generator)
            assert seen and not any(seen)
        hook.remove()
        runs.append((pol.state_dict(), value.state_dict()))
    (pol_a, val_a), (pol_b, val_b) = runs
    assert all(torch.equal(pol_a[k], pol_b[k]) for k in pol_a)
    assert all(torch.equal(val_a[k], val_b[k]) for k in val_a)
    assert not torch.equal(pol_a["model.embed_tokens.weight"], policy.state_dict()["model.embed_tokens.weight"])


def test_gradient_checkpointing_keeps_less_and_updates_bitwise_the_same(tiny_batch):
    """``ppo.gradient_checkpointing`` (decoder layers recomputed in backward, in eval mode too): the policy's
    gradient pass keeps a fraction of the bytes for backward, and two update passes leave bitwise the same
    weights as without it, under bf16 autocast as in fp32."""
    from rlhf.core.lean_layers import checkpoint_layers, lean_activations, lean_attention
    from rlhf.core.training import adamw

    policy, _, _, _, batch = tiny_batch
    cfg = PPOConfig(batch_size=3, mini_batch_size=3, micro_batch_size=2, beta=0.1, epochs=2)
    scores = t([1.0, -1.0, 0.5])

    def kept_bytes(model, precision):
        kept = []

        def pack(tensor):
            kept.append(tensor.untyped_storage().nbytes())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            answer_logprobs(model, batch, precision)
        return sum(kept)

    for precision in ("fp32", "bf16"):
        runs, kept = [], []
        for checkpointed in (False, True):
            pol = copy.deepcopy(policy).eval()
            value = ValueModel.from_policy(policy).eval()
            torch.nn.init.normal_(value.head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
            for model in (pol, value):  # as PPORun can: lean norms, MLPs and attention, recomputed in backward too
                lean_activations(model)
                lean_attention(model)
            if checkpointed:
                n_layers = policy.config.num_hidden_layers
                assert checkpoint_layers(pol) == n_layers and checkpoint_layers(value) == n_layers
                assert checkpoint_layers(pol) == n_layers  # idempotent
            kept.append(kept_bytes(pol, precision))
            exp = make_experience(pol, copy.deepcopy(policy), value, batch, scores, cfg, precision)
            update(pol, value, adamw(pol, 1e-3, cfg), adamw(value, 1e-3, cfg), exp, cfg, precision,
                   torch.Generator().manual_seed(0))
            runs.append((pol.state_dict(), value.state_dict()))
        (pol_a, val_a), (pol_b, val_b) = runs
        assert all(torch.equal(pol_a[k], pol_b[k]) for k in pol_a), precision
        assert all(torch.equal(val_a[k], val_b[k]) for k in val_a), precision
        assert not torch.equal(pol_a["model.embed_tokens.weight"], policy.state_dict()["model.embed_tokens.weight"])
        assert kept[1] < 0.6 * kept[0], (precision, kept)


@pytest.mark.parametrize("switch", [False, True])
def test_lean_attention_is_a_switch_of_its_own(switch):
    """``ppo.lean_attention`` (off by default) gives the trained models, and only them, the ``lean_sdpa``
    attention; ``lean_activations`` alone leaves the attention as transformers built it."""
    from rlhf.core.lean_layers import LEAN_ATTENTION
    from rlhf.core.ppo_loop import PPORun
    from rlhf.core.sampling import SamplingConfig

    policy, tok = build_tiny_model(seed=0)
    reference, _ = build_tiny_model(seed=0)
    value = ValueModel.from_policy(policy)
    assert PPOConfig().lean_attention is False
    PPORun(policy, tok, reference, value, lambda *a: torch.zeros(len(a[1])), PPOConfig(lean_attention=switch),
           SamplingConfig(), "fp32")
    want = LEAN_ATTENTION if switch else "sdpa"
    assert (policy.config._attn_implementation, value.backbone.config._attn_implementation) == (want, want)
    assert reference.config._attn_implementation == "sdpa"
