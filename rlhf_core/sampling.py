"""The sampling engine: K answers for each of many chat prompts, in large batches.

Sampling dominates the cost of an iteration (rejection sampling, temperature search, pair collection,
PPO rollouts, evaluation), so the default backend runs its own decode loop over the transformers model
rather than ``generate`` per prompt:

- prompts are sorted by length and left-padded in batches of ``batch_prompts``;
- each prompt is prefilled **once** and its KV cache repeated K times (``batch_repeat_interleave``);
- rows that hit a stop token leave the batch (``batch_select_indices``) once they are 1/16 of it, so a
  long straggler does not keep finished rows computing, and the cache is not copied for every single one;
- the KV cache appends in place into preallocated room (``_roomy_cache_class``) instead of ``torch.cat``;
- on bf16 CPUs the decode runs on a bf16 copy of the weights made once per call (not autocast per step);
- the LM head runs on the last position only (with a contiguous input: ``contiguous_head_input``);
  per-token log-probs of the chosen tokens under the model's own distribution (temperature 1, no top-p)
  are kept, since PPO needs ``log pi(a|s)``; draws invert the CDF in two levels (``_draw``).

Reproducible: a batch's random draws come from a ``torch.Generator`` seeded with ``(seed, batch)``, so the
same prompts, config and seed give the same samples. ``temperature=0`` is greedy.

Output: a DataFrame, one row per sample: ``prompt_index``, ``sample_index``, ``text`` (without the stop
token), ``token_ids`` and ``logprobs`` (including the stop token, when there is one), ``stop_reason``
(``"stop"``: a stop token was generated, ``"length"``: ``max_new_tokens`` reached), ``n_tokens`` and
``batch``, the batch of the call that drew it (the unit a sharded step deals out, docs/design.md#fan-out).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Collection, Protocol, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .chat import Message, pad_batch, render_prompt
from .errors import ConfigError
from .models import autocast, contiguous_head_input, resolve_precision
from .progress import progress, shown


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling; 1 = off
    max_new_tokens: int = 128
    batch_prompts: int = 32  # prompts per batch; each becomes k rows, so a batch holds k x this sequences
    seed: int = 0
    backend: str = "transformers"  # transformers | vllm (GPU only, pip install '.[gpu]')

    def validate(self) -> "SamplingConfig":
        if self.temperature < 0:
            raise ConfigError("sampling.temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_prompts < 1:
            raise ConfigError("sampling.max_new_tokens", "max_new_tokens and batch_prompts must be >= 1")
        return self


SAMPLE_COLUMNS = ["prompt_index", "sample_index", "text", "token_ids", "logprobs", "stop_reason", "n_tokens",
                  "batch"]


class SamplingBackend(Protocol):
    def sample(self, prompts: Sequence[Sequence[Message]], k: int, cfg: SamplingConfig,
               batches: Collection[int] | None = None) -> pd.DataFrame:
        """K samples per prompt, one row per sample (see the module docstring for the columns); with
        ``batches``, only the rows those batches of the whole call draw."""


def n_batches(n_prompts: int, cfg: SamplingConfig) -> int:
    """How many batches a call on ``n_prompts`` prompts decodes: the units a sharded step deals out."""
    return -(-n_prompts // cfg.batch_prompts)


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn and end-of-sequence ids: the tokenizer's EOS plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


_BLOCK = 256  # vocabulary block of the two-level draw
_RETIRE_SHARE = 1 / 16  # stopped rows leave the batch once they are this share of it (1/16 measured best)


def _draw(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``(b, v)`` non-negative weights (unnormalised), by inverting the CDF.

    Exact like ``torch.multinomial``, which draws ``v`` exponentials per row (with a 49k-token vocabulary
    that was a fifth of the decode time). Here one uniform per row goes through the CDF in two levels: the
    cumulative sums of blocks of ``_BLOCK`` weights choose a block, then the cumulative sum inside that
    block alone chooses the token, so no full-vocabulary cumulative sum is needed (``cumsum`` does not
    vectorise well; over 49k it cost as much as a softmax). ``u`` lies in (0, total], and each level
    picks the first entry whose running sum reaches it, so a zero-weight token is never chosen."""
    b, v = weights.shape
    blocks = (F.pad(weights, (0, -v % _BLOCK)) if v % _BLOCK else weights).view(b, -1, _BLOCK)
    block_cdf = blocks.sum(-1).cumsum(-1)
    u = (1 - torch.rand(b, 1, generator=generator, device=weights.device, dtype=weights.dtype)) * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, u).clamp(max=block_cdf.shape[1] - 1)
    below = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp(min=0)), torch.zeros_like(u))
    inner_cdf = blocks.gather(1, block[:, :, None].expand(b, 1, _BLOCK)).squeeze(1).cumsum(-1)
    # the block's own running sum may round a hair below block_cdf's: never step past its last token
    inside = torch.searchsorted(inner_cdf, torch.minimum(u - below, inner_cdf[:, -1:]))
    return (block * _BLOCK + inside).squeeze(-1)


def _choose(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens ``(b,)`` from last-position logits ``(b, v)`` (greedy, or temperature + top-p), and
    their log-probs under the model's own distribution (temperature 1, no top-p), which PPO needs.

    Few passes over the ``(b, v)`` logits, each of them memory-bound: shift by the row maximum, one
    ``exp`` (shared by the draw and the log-normaliser at temperature 1), the block sums of ``_draw``."""
    shifted = logits - logits.amax(-1, keepdim=True)  # <= 0, so exp never overflows
    weights = shifted.exp()
    log_total = weights.sum(-1, keepdim=True).log()
    if cfg.temperature == 0:
        chosen = shifted.argmax(-1)
    else:
        if cfg.temperature != 1:
            weights = (shifted / cfg.temperature).exp()
        if cfg.top_p < 1:
            sorted_weights, order = weights.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            mass = sorted_weights.cumsum(-1)
            drop = mass - sorted_weights >= cfg.top_p * mass[:, -1:]
            chosen = order.gather(-1, _draw(sorted_weights.masked_fill(drop, 0.0), generator)[:, None]).squeeze(-1)
        else:
            chosen = _draw(weights, generator)
    return chosen, (shifted.gather(-1, chosen[:, None]) - log_total).squeeze(-1)


@lru_cache(maxsize=1)
def _roomy_cache_class():
    """A ``DynamicCache`` whose layers append in place (defined on first use: transformers loads lazily).

    transformers' ``DynamicLayer`` appends each decode step with ``torch.cat``, copying the layer's whole
    cache every step (a tenth of the decode time here). These layers keep keys and values as views of
    buffers with room for ``ROOM`` more positions, and write new positions into the room; selecting rows
    (retiring finished samples) keeps the room. Anything else that replaces the tensors (repeating rows)
    leaves compact tensors, and the next append moves them into a new buffer. The views differ from
    compact tensors only in their strides, which SDPA and the eager attention take as they are."""
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class RoomyLayer(DynamicLayer):
        ROOM = 64

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.keys.numel() == 0:
                return super().update(key_states, value_states, *args, **kwargs)
            length, new = self.keys.shape[-2], key_states.shape[-2]
            buffers = getattr(self, "_buffers", None)
            if (buffers is None or buffers[0].data_ptr() != self.keys.data_ptr()
                    or buffers[0].shape[:2] != self.keys.shape[:2] or length + new > buffers[0].shape[-2]):
                buffers = tuple(t.new_empty((*t.shape[:2], length + new + self.ROOM, t.shape[-1]))
                                for t in (self.keys, self.values))
                buffers[0][..., :length, :], buffers[1][..., :length, :] = self.keys, self.values
                self._buffers = buffers
            buffers[0][..., length:length + new, :] = key_states
            buffers[1][..., length:length + new, :] = value_states
            self.keys, self.values = buffers[0][..., :length + new, :], buffers[1][..., :length + new, :]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            buffers = getattr(self, "_buffers", None)
            if buffers is None or buffers[0].data_ptr() != self.keys.data_ptr():
                return super().batch_select_indices(indices)
            length = self.keys.shape[-2]  # keep the room: the rows left go on appending in place
            self._buffers = tuple(t[indices] for t in buffers)
            self.keys, self.values = self._buffers[0][..., :length, :], self._buffers[1][..., :length, :]

    class RoomyCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=RoomyLayer)

    return RoomyCache


def _bar_desc(k: int, cfg: SamplingConfig) -> str:
    """The sampling bar's label, e.g. ``sample T=0.8 x4`` (the bar counts prompts; each gets k answers)."""
    return f"sample T={cfg.temperature:g}" + (f" x{k}" if k > 1 else "")


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``copy.deepcopy(model).to(dtype)`` without the full-precision copy of the weights in between: each
    floating-point parameter is cast straight into the copy (tied weights stay tied: one cast each), then the
    copy's ``.to(dtype)`` casts what is left (buffers) as before. The same module as the two-step version, at
    the memory of the cast copy alone -- the intermediate was a copy of the whole model, which the C heap
    then kept resident."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=p.requires_grad)
            for p in model.parameters() if p.is_floating_point()}
    return copy.deepcopy(model, memo).to(dtype)


class TransformersBackend:
    """The default backend: a transformers causal LM on CPU or one GPU."""

    def __init__(self, model, tokenizer, precision: str = "auto"):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.stop_ids = torch.tensor(stop_token_ids(model, tokenizer), device=self.device)

    @torch.inference_mode()
    def sample(self, prompts: Sequence[Sequence[Message]], k: int, cfg: SamplingConfig,
               shard: tuple[int, int] | None = None, batches: Collection[int] | None = None) -> pd.DataFrame:
        """``k`` answers to each prompt (rows sorted by ``prompt_index``, ``sample_index``; ``batch`` says
        which of the call's batches drew a row). With ``shard=(i, n)`` only every n-th of the batches the
        whole call would decode, from the i-th on; with ``batches``, only those. Either way the rows are
        exactly those the whole call draws in those batches (same batches, same seeds), so processes or
        tasks that split one call's batches and gather the rows get what one call would have sampled."""
        cfg.validate()
        index, shards = shard or (0, 1)
        wanted = set(range(n_batches(len(prompts), cfg))) if batches is None else set(batches)
        was_training = self.model.training
        self.model.eval()
        # bf16 on CPU: decode with a bf16 copy of the weights, made once per call (~0.1 s for 135M), instead
        # of autocast casting every fp32 weight at every decode step (a quarter of the decode time). A copy
        # per call, so a policy being trained (PPO) is always sampled with its current weights.
        bf16_copy = self.precision == "bf16" and self.device.type == "cpu"
        decoder = cast_copy(self.model, torch.bfloat16) if bf16_copy else self.model
        cast = "fp32" if bf16_copy else self.precision  # the copy is bf16 already: no autocast
        encoded = [render_prompt(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        rows = []
        mine = [(b, order[start:start + cfg.batch_prompts])
                for b, start in enumerate(range(0, len(order), cfg.batch_prompts)) if b % shards == index
                and b in wanted]
        with progress(sum(len(chunk) for _, chunk in mine), _bar_desc(k, cfg), "prompt") as bar:
            for b, chunk in mine:
                generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + b)
                rows += [row | {"batch": b} for row in self._sample_batch(decoder, cast, [encoded[i] for i in chunk],
                                                                           chunk, k, cfg, generator)]
                bar.update(len(chunk))
        self.model.train(was_training)
        if not rows:  # a shard with no batch (more shards than batches)
            return pd.DataFrame(columns=SAMPLE_COLUMNS)
        frame = pd.DataFrame(rows).sort_values(["prompt_index", "sample_index"], kind="stable")
        return frame.reset_index(drop=True)

    def _sample_batch(self, decoder, cast: str, encoded, prompt_indices, k, cfg, generator) -> list[dict]:
        rows = [(ids, torch.ones_like(ids), torch.zeros_like(ids, dtype=torch.bool)) for ids in encoded]
        input_ids, attention_mask, _ = pad_batch(rows, self.tokenizer.pad_token_id, side="left")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = _roomy_cache_class()()
        with autocast(cast, self.device), contiguous_head_input(decoder):
            out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          past_key_values=cache, use_cache=True, logits_to_keep=1)
        # 1. Prefill once per prompt, then give each of the k samples its own copy of the cache.
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        logits = out.logits[:, -1].float().repeat_interleave(k, dim=0)
        attention_mask = attention_mask.repeat_interleave(k, dim=0)
        next_position = positions[:, -1:].repeat_interleave(k, dim=0) + 1
        n = logits.shape[0]
        active = torch.arange(n, device=self.device)  # row of the full batch held by each cache row
        finished = torch.zeros(n, dtype=torch.bool, device=self.device)  # per cache row: stopped already
        tokens = [[] for _ in range(n)]
        logprobs = [[] for _ in range(n)]
        stopped = [False] * n
        # 2. Decode: choose, record log pi(token) of the rows still running, retire stopped rows, step.
        for step in range(cfg.max_new_tokens):
            chosen, chosen_logprobs = _choose(logits, cfg, generator)
            is_stop = torch.isin(chosen, self.stop_ids)
            for row, token, logprob, stop, done in zip(active.tolist(), chosen.tolist(), chosen_logprobs.tolist(),
                                                       is_stop.tolist(), finished.tolist()):
                if not done:
                    tokens[row].append(token)
                    logprobs[row].append(logprob)
                    stopped[row] = stop
            finished |= is_stop
            n_finished = int(finished.sum())
            if n_finished == len(finished) or step == cfg.max_new_tokens - 1:
                break
            # Retiring rows copies the whole KV cache; stopped rows are only carried until they are a
            # sizeable share of the batch (their tokens are ignored meanwhile).
            if n_finished >= max(1, _RETIRE_SHARE * len(finished)):
                keep = (~finished).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                active, chosen, finished = active[keep], chosen[keep], finished[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=-1)
            with autocast(cast, self.device):
                out = decoder(input_ids=chosen[:, None], attention_mask=attention_mask,
                              position_ids=next_position, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            next_position = next_position + 1
        # 3. Rows: text without the stop token; ids and log-probs with it.
        results = []
        for row in range(n):
            prompt_index, sample_index = prompt_indices[row // k], row % k
            ids = tokens[row]
            text_ids = ids[:-1] if stopped[row] else ids
            results.append({
                "prompt_index": prompt_index, "sample_index": sample_index,
                "text": self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                "token_ids": ids, "logprobs": logprobs[row],
                "stop_reason": "stop" if stopped[row] else "length", "n_tokens": len(ids),
            })
        return results


class VLLMBackend:
    """vLLM behind the same interface, for GPU users (``pip install '.[gpu]'``). Log-probs are those of
    the chosen tokens (``logprobs=0``), under the raw model distribution as with the default backend."""

    def __init__(self, model_path: str, tokenizer, dtype: str = "auto", **engine_kwargs):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ConfigError("sampling.backend", "vllm is not installed: pip install '.[gpu]' on a GPU "
                                                  "machine, or use sampling.backend=transformers") from err
        self.tokenizer = tokenizer
        self.llm = LLM(model=model_path, dtype=dtype, **engine_kwargs)

    def sample(self, prompts: Sequence[Sequence[Message]], k: int, cfg: SamplingConfig,
               batches: Collection[int] | None = None) -> pd.DataFrame:
        """As :meth:`TransformersBackend.sample`; a batch here is ``batch_prompts`` consecutive prompts
        (vLLM schedules its own batches). Every request carries the seed, so a prompt's samples do not
        depend on which other prompts share the call: a shard's rows are the whole call's."""
        from vllm import SamplingParams

        cfg.validate()
        params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, logprobs=0, seed=cfg.seed)
        chosen = [i for i in range(len(prompts))
                  if batches is None or i // cfg.batch_prompts in set(batches)]
        texts = [self.tokenizer.apply_chat_template(list(prompts[i]), tokenize=False, add_generation_prompt=True)
                 for i in chosen]
        rows = []
        # vLLM draws its own bar (prompts done, rate); it follows the same on/off rules as ours.
        for prompt_index, request in zip(chosen, self.llm.generate(texts, params, use_tqdm=shown())):
            for sample_index, completion in enumerate(request.outputs):
                ids = list(completion.token_ids)
                lps = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
                rows.append({"prompt_index": prompt_index, "sample_index": sample_index,
                             "text": completion.text.strip(), "token_ids": ids, "logprobs": lps,
                             "stop_reason": "length" if completion.finish_reason == "length" else "stop",
                             "n_tokens": len(ids), "batch": prompt_index // cfg.batch_prompts})
        return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def make_backend(cfg: SamplingConfig, model, tokenizer, precision: str = "auto", model_path: str | None = None):
    if cfg.backend == "transformers":
        return TransformersBackend(model, tokenizer, precision)
    if cfg.backend == "vllm":
        return VLLMBackend(model_path, tokenizer)
    raise ConfigError("sampling.backend", f"unknown backend {cfg.backend!r}; use transformers or vllm")
