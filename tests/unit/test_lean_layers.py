"""The lean training layers (rlhf_core/lean_layers.py): the same forward, the same gradients to rounding, and
exactly the activations the module docstring says they drop (counted by autograd's saved-tensor hooks)."""

import copy

import pytest
import torch

from rlhf.core.lean_layers import lean_activations
from rlhf.core.models import autocast, build_tiny_model

IDS = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def models():
    model, _ = build_tiny_model(seed=3)
    lean = copy.deepcopy(model)
    # per decoder layer an input norm, a post-attention norm and an MLP, and the final norm
    assert lean_activations(lean) == 3 * model.config.num_hidden_layers + 1
    assert lean_activations(lean) == 3 * model.config.num_hidden_layers + 1  # idempotent
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
        # reading them, 2h each) become two; silu(gate) in bf16 (2i)
        per_layer = 2 * 4 * h + 3 * 2 * h + 2 * i
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


def test_other_architectures_are_left_alone():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    assert lean_activations(mlp) == 0
    assert "forward" not in vars(mlp[1])
