"""Leaner training passes for Llama-family models: the same forward, fewer activations kept for backward.

Under bf16 autocast a transformers Llama layer keeps, per token, more than its backward needs
(docs/design.md, "Activation memory"):

- **RMSNorm** (``weight * (x * rsqrt(mean(x^2) + eps))``, computed in fp32) keeps the fp32 product
  ``x * rsqrt(...)`` for the weight's gradient, and autocast then casts the norm's fp32 output to bf16 once
  per projection that reads it -- three copies before attention (q, k, v), two before the MLP (gate, up) --
  each kept by its matmul for backward.
- **SwiGLU** (``silu(gate) * up``) keeps ``silu(gate)`` besides ``gate`` and ``up``.

:func:`lean_activations` replaces the ``forward`` of those modules, while gradients are being recorded, by
autograd functions that compute the same forward values and keep only what the backward needs:

- the norm keeps its input (the residual stream, which autograd holds anyway) and the per-token
  ``rsqrt``, recomputes the product in backward, and returns its output already in autocast's dtype, so
  the projections that read it share one bf16 copy;
- SwiGLU keeps ``gate`` and ``up`` and recomputes ``silu(gate)`` in backward (one elementwise pass).

The forward is bitwise the one transformers computes (same fp32 operations, then the cast autocast would
have made). The backward is the same mathematics in another order of rounding: in fp32 the gradients
agree to ~1e-7 relative; under bf16 the three projections' gradients into the norm's output are summed in
bf16 (autograd accumulates in a tensor's own dtype) instead of fp32, and measured against fp32 gradients
the error is the same as transformers' own bf16 pass (``tests/unit/test_lean_layers.py``). Without
gradients (sampling, scoring, evaluation) the modules run transformers' own forward, untouched.

Only module classes whose forward is known to be exactly the one above are switched (``NORMS``,
``MLPS``); any other architecture trains as transformers builds it.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

# transformers classes whose forward is the Llama one (fp32 RMSNorm scaled by its weight; a SwiGLU MLP)
NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})
MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP"})
_MARK = "_lean_original_forward"


class _RMSNorm(torch.autograd.Function):
    """``(weight * (x * rsqrt(mean(x^2) + eps))).to(out_dtype)`` for fp32 ``x`` and ``weight``; keeps ``x``
    and the per-row ``rsqrt``."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, out_dtype: torch.dtype):
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, inv, weight)
        return (weight * (x * inv)).to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        x, inv, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            grad = grad.float()
            normed = x * inv
            grad_weight = (grad * normed).reshape(-1, normed.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
            scaled = grad * weight
            # d/dx of x * inv with inv = (mean(x^2) + eps)^-1/2: inv * (g - normed * mean(g * normed))
            grad_x = inv * (scaled - normed * (scaled * normed).mean(-1, keepdim=True))
        return grad_x, grad_weight, None, None


class _SwiGLU(torch.autograd.Function):
    """``silu(gate) * up``; keeps ``gate`` and ``up``, recomputes ``silu(gate)`` in backward. The backward is
    the one autograd builds for the two ops (aten's ``silu_backward``), so its values are bitwise the same."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


def _norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if not (torch.is_grad_enabled() and hidden_states.dtype == torch.float32 == self.weight.dtype):
        return getattr(self, _MARK)(hidden_states)
    device = hidden_states.device.type
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    with torch.autocast(device, enabled=False):
        return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon, out_dtype)


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return getattr(self, _MARK)(x)
    return self.down_proj(_SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def lean_activations(model: torch.nn.Module) -> int:
    """Switch ``model``'s Llama-family norms and MLPs to the lean training forward (idempotent); returns how
    many modules use it. A module of another class is left as it is."""
    switched = 0
    for module in model.modules():
        name = type(module).__name__
        if name in MLPS and getattr(getattr(module, "config", None), "hidden_act", "silu") != "silu":
            continue
        forward = _norm_forward if name in NORMS else _mlp_forward if name in MLPS else None
        if forward is None:
            continue
        _replace_forward(module, _MARK, forward)
        switched += 1
    return switched


def _replace_forward(module: torch.nn.Module, mark: str, forward) -> None:
    """``module.forward = forward`` (bound), its own forward kept as attribute ``mark``; once per mark."""
    if not hasattr(module, mark):
        setattr(module, mark, module.forward)
        module.forward = types.MethodType(forward, module)


_CHECKPOINTED = "_checkpointed_original_forward"


def _checkpointed_forward(self, *args, **kwargs):
    original = getattr(self, _CHECKPOINTED)
    cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
    if not torch.is_grad_enabled() or cache is not None:  # a KV cache would get the recomputed keys appended twice
        return original(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(original, *args, use_reentrant=False, **kwargs)


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Recompute each decoder layer's forward in backward instead of keeping its activations (activation
    checkpointing), whatever the model's train/eval mode; idempotent; returns how many layers it wraps.

    transformers' own ``gradient_checkpointing_enable`` acts in train mode only, and PPO's passes run in eval
    mode (no dropout: the ratio compares one function at two weights). A layer then keeps only its input for
    backward, and the recomputation repeats exactly the forward's operations (autocast state included), so the
    gradients are the ones without it -- at the cost of one more forward pass of the layers per backward. A pass
    given a KV cache (``use_cache``) runs as it is: the training passes here ask for none."""
    wrapped = 0
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            _replace_forward(module, _CHECKPOINTED, _checkpointed_forward)
            wrapped += 1
    return wrapped
