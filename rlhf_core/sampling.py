"""The sampling engine: K answers for each of many chat prompts, in large batches.

Sampling dominates the cost of an iteration (rejection sampling, temperature search, pair collection,
PPO rollouts, evaluation), so the default backend runs its own decode loop over the transformers model
rather than ``generate`` per prompt:

- prompts are sorted by length and left-padded in batches of ``batch_prompts``;
- each prompt is prefilled **once** and its KV cache repeated K times (``batch_repeat_interleave``);
- rows that hit a stop token leave the batch (``batch_select_indices``), so a long straggler does not
  keep finished rows computing;
- the LM head runs on the last position only; per-token log-probs of the chosen tokens under the model's
  own distribution (temperature 1, no top-p) are kept, since PPO needs ``log pi(a|s)``.

Reproducible: a batch's random draws come from a ``torch.Generator`` seeded with ``(seed, batch)``, so the
same prompts, config and seed give the same samples. ``temperature=0`` is greedy.

Output: a DataFrame, one row per sample: ``prompt_index``, ``sample_index``, ``text`` (without the stop
token), ``token_ids`` and ``logprobs`` (including the stop token, when there is one), ``stop_reason``
(``"stop"``: a stop token was generated, ``"length"``: ``max_new_tokens`` reached) and ``n_tokens``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .chat import Message, pad_batch, render_prompt
from .errors import ConfigError
from .models import autocast, resolve_precision


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


class SamplingBackend(Protocol):
    def sample(self, prompts: Sequence[Sequence[Message]], k: int, cfg: SamplingConfig) -> pd.DataFrame:
        """K samples per prompt, one row per sample (see the module docstring for the columns)."""


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn and end-of-sequence ids: the tokenizer's EOS plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``(b, v)`` non-negative weights, by inverting the CDF with one uniform per row.

    Exact like ``torch.multinomial``, but ``multinomial`` draws ``v`` exponentials per row (a 49k-token
    vocabulary made it a fifth of the decode time); this is one cumulative sum and a binary search. ``u``
    lies in (0, 1], so a zero-weight token is never chosen."""
    cdf = probs.cumsum(-1)
    u = (1 - torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _choose(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """Next tokens ``(b,)`` from last-position logits ``(b, v)``: greedy, or temperature + top-p."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= cfg.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        return order.gather(-1, _draw(sorted_probs, generator)[:, None]).squeeze(-1)
    return _draw(probs, generator)


class TransformersBackend:
    """The default backend: a transformers causal LM on CPU or one GPU."""

    def __init__(self, model, tokenizer, precision: str = "auto"):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.stop_ids = torch.tensor(stop_token_ids(model, tokenizer), device=self.device)

    @torch.inference_mode()
    def sample(self, prompts: Sequence[Sequence[Message]], k: int, cfg: SamplingConfig) -> pd.DataFrame:
        cfg.validate()
        was_training = self.model.training
        self.model.eval()
        # bf16 on CPU: decode with a bf16 copy of the weights, made once per call (~0.1 s for 135M), instead
        # of autocast casting every fp32 weight at every decode step (a quarter of the decode time). A copy
        # per call, so a policy being trained (PPO) is always sampled with its current weights.
        bf16_copy = self.precision == "bf16" and self.device.type == "cpu"
        decoder = copy.deepcopy(self.model).to(torch.bfloat16) if bf16_copy else self.model
        cast = "fp32" if bf16_copy else self.precision  # the copy is bf16 already: no autocast
        encoded = [render_prompt(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        rows = []
        for b, start in enumerate(range(0, len(order), cfg.batch_prompts)):
            chunk = order[start:start + cfg.batch_prompts]
            generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + b)
            rows += self._sample_batch(decoder, cast, [encoded[i] for i in chunk], chunk, k, cfg, generator)
        self.model.train(was_training)
        frame = pd.DataFrame(rows).sort_values(["prompt_index", "sample_index"], kind="stable")
        return frame.reset_index(drop=True)

    def _sample_batch(self, decoder, cast: str, encoded, prompt_indices, k, cfg, generator) -> list[dict]:
        rows = [(ids, torch.ones_like(ids), torch.zeros_like(ids, dtype=torch.bool)) for ids in encoded]
        input_ids, attention_mask, _ = pad_batch(rows, self.tokenizer.pad_token_id, side="left")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache()
        with autocast(cast, self.device):
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
        tokens = [[] for _ in range(n)]
        logprobs = [[] for _ in range(n)]
        stopped = [False] * n
        # 2. Decode: choose, record log pi(token), retire rows that stopped, step the rest.
        for step in range(cfg.max_new_tokens):
            chosen = _choose(logits, cfg, generator)
            chosen_logprobs = F.log_softmax(logits, dim=-1).gather(-1, chosen[:, None]).squeeze(-1)
            is_stop = torch.isin(chosen, self.stop_ids)
            for row, token, logprob, stop in zip(active.tolist(), chosen.tolist(), chosen_logprobs.tolist(),
                                                 is_stop.tolist()):
                tokens[row].append(token)
                logprobs[row].append(logprob)
                stopped[row] = stop
            keep = (~is_stop).nonzero().squeeze(-1)
            if keep.numel() == 0 or step == cfg.max_new_tokens - 1:
                break
            if keep.numel() < active.numel():
                cache.batch_select_indices(keep)
                active, chosen = active[keep], chosen[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(keep), 1)], dim=-1)
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

    def sample(self, prompts: Sequence[Sequence[Message]], k: int, cfg: SamplingConfig) -> pd.DataFrame:
        from vllm import SamplingParams

        cfg.validate()
        params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, logprobs=0, seed=cfg.seed)
        texts = [self.tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        rows = []
        for prompt_index, request in enumerate(self.llm.generate(texts, params)):
            for sample_index, completion in enumerate(request.outputs):
                ids = list(completion.token_ids)
                lps = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
                rows.append({"prompt_index": prompt_index, "sample_index": sample_index,
                             "text": completion.text.strip(), "token_ids": ids, "logprobs": lps,
                             "stop_reason": "length" if completion.finish_reason == "length" else "stop",
                             "n_tokens": len(ids)})
        return pd.DataFrame(rows)


def make_backend(cfg: SamplingConfig, model, tokenizer, precision: str = "auto", model_path: str | None = None):
    if cfg.backend == "transformers":
        return TransformersBackend(model, tokenizer, precision)
    if cfg.backend == "vllm":
        return VLLMBackend(model_path, tokenizer)
    raise ConfigError("sampling.backend", f"unknown backend {cfg.backend!r}; use transformers or vllm")
