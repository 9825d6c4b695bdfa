"""Render conversations with a model's chat template into ``(input_ids, attention_mask, loss_mask)``.

One mask convention everywhere: ``loss_mask`` True = this token is trained on. It is True exactly on the
tokens of assistant content and the end-of-turn token that closes it (Llama 2 §3.1: the loss is zeroed
on user and system tokens). The template's own markup around a turn (``<|im_start|>assistant\\n``, the
newline after ``<|im_end|>``) is never a target.

How the assistant spans are found, for any template: render the conversation up to turn *i* with the
generation prompt (``P``) and up to and including turn *i* (``Q``); the characters of ``Q`` after ``P``,
minus trailing whitespace, are turn *i*'s target. This needs a *prefix-stable* template (rendering a
longer conversation extends the shorter one), which holds for ChatML, Llama 2, Zephyr and most others;
templates that rewrite earlier turns (e.g. strip reasoning) are rejected with a clear error. A token is
a target when it starts inside a target span.

Modes: ``"all"`` trains every assistant turn (SFT); ``"last"`` only the final one (Ghost Attention, §3.3:
the loss is zeroed on all tokens of previous turns, assistant turns included).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import ConfigError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
MODES = ("all", "last")


def _render(tokenizer, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(tokenizer, messages: Sequence[Message], mode: str = "all") -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the ``[start, end)`` character spans of its target assistant turns."""
    if mode not in MODES:
        raise ConfigError("loss_mode", f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    text = _render(tokenizer, messages, add_generation_prompt=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if mode == "last":
        turns = turns[-1:]
    spans = []
    for i in turns:
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise ConfigError(
                "model.chat_template",
                "the chat template is not prefix-stable (rendering turn %d changes earlier text), so "
                "assistant tokens cannot be located; use a template that renders turns append-only" % i,
            )
        target = through[len(before):].rstrip()
        spans.append((len(before), len(before) + len(target)))
    return text, spans


def render_conversation(tokenizer, messages: Sequence[Message], mode: str = "all"):
    """Tokenise one conversation.

    Returns ``(input_ids, attention_mask, loss_mask)``, each a 1-D tensor of shape ``(t,)``:
    int64 token ids, all-ones int64 attention mask, and a bool mask True on target tokens.
    """
    text, spans = assistant_spans(tokenizer, messages, mode)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in enc["offset_mapping"]]
    loss_mask = [any(lo <= s < hi for lo, hi in spans) for s in starts]
    input_ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    return input_ids, torch.ones_like(input_ids), torch.tensor(loss_mask, dtype=torch.bool)


def render_prompt(tokenizer, messages: Sequence[Message]) -> torch.Tensor:
    """Token ids ``(t,)`` of a chat prompt followed by the generation prompt (for sampling)."""
    text = _render(tokenizer, messages, add_generation_prompt=True)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def pad_batch(rows: Sequence[torch.Tensor | Sequence[torch.Tensor]], pad_id: int, side: str = "right"):
    """Stack rows into ``(b, t)`` tensors, ``t`` the longest row's length: the one way batches are padded.

    A row is a tuple of same-length 1-D tensors, token ids first (``(input_ids, attention_mask, loss_mask)``
    from :func:`render_conversation`), or bare token ids ``(t_i,)``, which get an all-ones attention mask.
    Returns one tensor per column, in the rows' dtypes: ``(input_ids, attention_mask[, loss_mask])``.
    Padding gets ``pad_id`` in the ids and 0 / False elsewhere; ``side="left"`` is for generation and
    prompts (every row ends in the last column).
    """
    if isinstance(rows[0], torch.Tensor):
        rows = [(ids, torch.ones_like(ids)) for ids in rows]
    width = max(len(r[0]) for r in rows)
    out = []
    for k in range(len(rows[0])):
        batch = torch.full((len(rows), width), pad_id if k == 0 else 0, dtype=rows[0][k].dtype)
        for b, row in enumerate(rows):
            n = len(row[k])
            if side == "right":
                batch[b, :n] = row[k]
            else:
                batch[b, width - n:] = row[k]
        out.append(batch)
    return tuple(out)
