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

**Attention (opt-in: :func:`lean_attention`, ``<section>.lean_attention``).** Under bf16 autocast the CPU's
fused attention kernel is fast forward and slow backward: measured on a 2-core Xeon with AMX (torch 2.13,
SmolLM2's 9 heads of 64 and 3 key/value heads, 8 rows), its forward + backward took 10 / 18 / 20 / 36 ms per layer
at 96 / 160 / 256 / 384 tokens in bf16, and 4 / 9 / 18 / 39 ms in fp32 (docs/design.md, "Activation memory").
While gradients are being recorded, the attention of a switched model keeps transformers' SDPA forward
(bitwise: it calls it) and, for at most ``LEAN_ATTENTION_MAX_TOKENS`` keys, takes its gradient from the same
kernel run again in fp32 on fp32 copies of the saved query, keys and values: the same mathematics, rounded less
than the bf16 backward. Longer sequences and fp32 passes keep the kernel's own backward. It is switched as an
attention implementation of its own (``lean_sdpa``, registered with transformers, with SDPA's masks): without
gradients it *is* SDPA, so sampling and scoring are untouched.

Only module classes whose forward is known to be exactly the one above are switched (``NORMS``,
``MLPS``; ``ATTENTIONS`` under SDPA); any other architecture trains as transformers builds it.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

# transformers classes whose forward is the Llama one (fp32 RMSNorm scaled by its weight; a SwiGLU MLP)
NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})
MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP"})
ATTENTIONS = frozenset({"LlamaAttention", "MistralAttention", "Qwen2Attention"})
_MARK = "_lean_original_forward"
LEAN_ATTENTION = "lean_sdpa"
# the longest key sequence whose attention gradient comes from the fp32 kernel: measured above, the bf16
# kernel's own backward is as fast from ~256 tokens on and faster from ~384 (then fp32 costs more)
LEAN_ATTENTION_MAX_TOKENS = 256


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


class _Attention(torch.autograd.Function):
    """transformers' SDPA attention (``sdpa``) forward as it is; the gradient from the same function on fp32
    copies of ``query``, ``key`` and ``value``, recomputed in backward. Keeps the three (half-precision)
    inputs, as the kernel's own backward does (which keeps its output and log-sum-exp too)."""

    @staticmethod
    def forward(ctx, module, query, key, value, attention_mask, scaling, is_causal):
        ctx.module, ctx.scaling, ctx.is_causal = module, scaling, is_causal
        ctx.save_for_backward(query, key, value, attention_mask)
        return _sdpa(module, query, key, value, attention_mask, scaling, is_causal)

    @staticmethod
    def backward(ctx, grad):
        query, key, value, attention_mask = ctx.saved_tensors
        inputs = [t.detach().float().requires_grad_(t.requires_grad) for t in (query, key, value)]
        with torch.enable_grad(), torch.autocast(query.device.type, enabled=False):
            out = _sdpa(ctx.module, *inputs, attention_mask, ctx.scaling, ctx.is_causal)
            wanted = [t for t in inputs if t.requires_grad]
            found = iter(torch.autograd.grad(out, wanted, grad.float()))
        grads = [next(found).to(t.dtype) if t.requires_grad else None for t in (query, key, value)]
        return None, *grads, None, None, None


def _sdpa(module, query, key, value, attention_mask, scaling, is_causal):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs = {} if is_causal is None else {"is_causal": is_causal}
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                  **kwargs)[0]


def lean_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """The ``lean_sdpa`` attention implementation: transformers' ``sdpa`` unless gradients are being recorded
    through a half-precision attention of at most ``LEAN_ATTENTION_MAX_TOKENS`` keys (then :class:`_Attention`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    device = query.device.type  # under autocast the kernel runs in its dtype, whatever the rotary output's
    kernel_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    lean = (torch.is_grad_enabled() and dropout == 0.0 and kernel_dtype in (torch.bfloat16, torch.float16)
            and key.shape[2] <= LEAN_ATTENTION_MAX_TOKENS
            and any(t.requires_grad for t in (query, key, value))
            and all(kwargs.get(k) is None for k in ("position_bias", "cache", "softcap", "output_attentions"))
            and (attention_mask is None or attention_mask.dtype == torch.bool))
    if not lean:
        if is_causal is not None:
            kwargs["is_causal"] = is_causal
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    # the kernel's inputs in its dtype, cast here rather than by autocast inside it (the same cast, so the same
    # values): these half-precision copies are what backward keeps, not the fp32 rotary outputs
    query, key, value = (t.to(kernel_dtype) for t in (query, key, value))
    return _Attention.apply(module, query, key, value, attention_mask, scaling, is_causal), None


def _register_lean_attention() -> None:
    """Make ``lean_sdpa`` an attention implementation transformers knows, with SDPA's masks (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(LEAN_ATTENTION, lean_attention_forward)
    AttentionMaskInterface.register(LEAN_ATTENTION, sdpa_mask)


def lean_attention(model: torch.nn.Module) -> int:
    """Give every transformers model inside ``model`` whose attention layers are all Llama-family SDPA the
    ``lean_sdpa`` implementation (idempotent); returns how many attention layers use it. Off by default in every
    training section (``lean_attention``): see the module docstring for what it changes and docs/design.md
    ("Activation memory") for why it is opt-in."""
    switched = 0
    for module in model.modules():
        config = getattr(module, "config", None)
        if not (hasattr(module, "set_attn_implementation") and config is not None
                and getattr(config, "_attn_implementation", None) in ("sdpa", LEAN_ATTENTION)):
            continue
        layers = [m for m in module.modules() if type(m).__name__.endswith("Attention")]
        if not layers or any(type(m).__name__ not in ATTENTIONS for m in layers):
            continue
        if config._attn_implementation == "sdpa":
            _register_lean_attention()
            config._attn_implementation = LEAN_ATTENTION
        switched = max(switched, len(layers))  # a causal LM and its inner model share one config
    return switched


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
