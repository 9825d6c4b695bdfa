"""The lean training layers (rlhf_core/lean_layers.py): the same forward, the same gradients to rounding, and
exactly the activations the module docstring says they drop (counted by autograd's saved-tensor hooks)."""

import copy

import pytest
import torch

from rlhf.core import lean_layers
from rlhf.core.lean_layers import LEAN_ATTENTION, lean_activations, lean_attention
from rlhf.core.models import autocast, build_tiny_model

IDS = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def models():
    model, _ = build_tiny_model(seed=3)
    lean = copy.deepcopy(model)
    # per decoder layer an input norm, a post-attention norm and an MLP, and the final norm
    assert lean_activations(lean) == 3 * model.config.num_hidden_layers + 1
    assert lean_activations(lean) == 3 * model.config.num_hidden_layers + 1  # idempotent
    assert lean.config._attn_implementation == "sdpa"  # the attention is a switch of its own
    assert lean_attention(lean) == lean_attention(lean) == model.config.num_hidden_layers
    assert (lean.config._attn_implementation, model.config._attn_implementation) == (LEAN_ATTENTION, "sdpa")
    return model, lean


def saved_bytes(model, precision: str) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct non-parameter storages autograd keeps for backward in one forward pass."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(precision):
        logits = model(input_ids=IDS).logits
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in kept.items() if ptr not in params), logits


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forward_is_bitwise_the_same_and_drops_the_counted_activations(models, precision):
    model, lean = models
    h, i, layers = model.config.hidden_size, model.config.intermediate_size, model.config.num_hidden_layers
    tokens = IDS.numel()
    eager, eager_logits = saved_bytes(model, precision)
    mine, lean_logits = saved_bytes(lean, precision)
    assert torch.equal(eager_logits, lean_logits)
    if precision == "fp32":
        # per token and layer: two norms' fp32 x * rsqrt (4h bytes each) and silu(gate) (4i)
        per_layer = 2 * 4 * h + 4 * i
    else:
        # two norms' fp32 products (4h each); five bf16 casts of the norms' outputs (one per projection
        # reading them, 2h each) become two; silu(gate) in bf16 (2i); the attention kernel's fp32 log-sum-exp
        # per head (4 x heads), which the fp32 recomputation does not need (its output is the o_proj's input,
        # kept either way)
        per_layer = 2 * 4 * h + 3 * 2 * h + 2 * i + 4 * model.config.num_attention_heads
    final_norm = 4 * h  # its product; its bf16 cast for the head is kept either way
    assert eager - mine == tokens * (layers * per_layer + final_norm)


def grads(model, precision: str) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with autocast(precision):
        logits = model(input_ids=IDS).logits
    weights = torch.linspace(-1, 1, logits.shape[-1])
    (logits.float().log_softmax(-1) * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def relative_error(got: dict, want: dict) -> float:
    return (sum((got[n] - want[n]).norm() ** 2 for n in want) / sum(want[n].norm() ** 2 for n in want)).sqrt().item()


def test_gradients_match_in_fp32_and_are_as_accurate_under_bf16(models):
    model, lean = models
    reference = grads(model, "fp32")
    mine = grads(lean, "fp32")
    assert relative_error(mine, reference) < 1e-5
    for name in reference:  # every parameter's own gradient, norms' weights included (measured: <= 3e-7)
        assert relative_error({name: mine[name]}, {name: reference[name]}) < 1e-5, name
    eager_error = relative_error(grads(model, "bf16"), reference)
    lean_error = relative_error(grads(lean, "bf16"), reference)
    assert 0 < lean_error < 1.25 * eager_error + 1e-4, (lean_error, eager_error)


def test_without_gradients_the_modules_run_transformers_forward(models):
    model, lean = models
    with torch.no_grad(), autocast("bf16"):
        assert torch.equal(model(input_ids=IDS).logits, lean(input_ids=IDS).logits)
    norm = lean.model.norm
    with torch.no_grad():  # the switched forward leaves the module's own dtype handling alone
        x = torch.randn(2, 3, model.config.hidden_size)
        assert norm(x).dtype == torch.float32


def attention_grads(model, precision: str, ids: torch.Tensor, attention: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradients of the attention projections for a left-padded batch (as PPO lays its rollouts out)."""
    model.zero_grad()
    with autocast(precision):
        logits = model(input_ids=ids, attention_mask=attention).logits
    weights = torch.linspace(-1, 1, logits.shape[-1])
    ((logits.float().log_softmax(-1) * weights).sum(-1) * attention).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if "self_attn" in n}


def test_attention_gradient_comes_from_fp32_and_is_more_accurate_than_the_bf16_kernels(models, monkeypatch):
    model, lean = models
    ids = torch.randint(5, 200, (3, 40), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[0, :7] = attention[1, :19] = 0  # left padding: masked keys, and query rows that see nothing
    calls = []
    original = lean_layers._Attention.apply
    monkeypatch.setattr(lean_layers._Attention, "apply", lambda *a: calls.append(a[1].dtype) or original(*a))
    reference = attention_grads(model, "fp32", ids, attention)
    assert relative_error(attention_grads(lean, "fp32", ids, attention), reference) < 1e-5
    assert calls == []  # fp32: the kernel's own backward is already fp32
    with torch.no_grad(), autocast("bf16"):  # the forward is transformers' own, padding and all
        assert torch.equal(model(input_ids=ids, attention_mask=attention).logits,
                           lean(input_ids=ids, attention_mask=attention).logits)
    kernel = relative_error(attention_grads(model, "bf16", ids, attention), reference)
    mine = relative_error(attention_grads(lean, "bf16", ids, attention), reference)
    assert calls == [torch.bfloat16] * model.config.num_hidden_layers  # the kernel read bf16 copies
    assert all(torch.isfinite(g).all() for g in attention_grads(lean, "bf16", ids, attention).values())
    # the projections' own matmuls still run in bf16, so the gain is the attention's share of the error
    assert 0 < mine < kernel, (mine, kernel)
    calls.clear()
    monkeypatch.setattr(lean_layers, "LEAN_ATTENTION_MAX_TOKENS", ids.shape[1] - 1)  # longer: the kernel's backward
    attention_grads(lean, "bf16", ids, attention)
    assert calls == []


def test_other_architectures_are_left_alone():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    assert lean_activations(mlp) == 0
    assert "forward" not in vars(mlp[1])
