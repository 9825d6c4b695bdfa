"""The reward model: a causal-LM backbone with a scalar head (Llama 2 §3.2.2).

The paper initialises both RMs from the chat model "with the classification head for next-token
prediction replaced with a regression head that outputs a scalar reward", so the RM knows what the
policy knows. Here: ``load_model(ModelConfig)`` loads the policy, ``model.base_model`` (the transformer
without its LM head) becomes the backbone, and ``nn.Linear(hidden, 1)`` the head. The LM head is never
run (a 49k-vocabulary projection per position would be most of the step) and is dropped.

Head init: normal with std ``1 / sqrt(hidden + 1)`` and zero bias (the value-head init of the
InstructGPT line of work), so initial rewards are O(1) and the backbone gets a gradient from the first
step; a zero head would give every answer the same reward and no backbone gradient at step 1.

Reading the reward: at the **last non-pad token** of each sequence (the end-of-turn markup that closes
the answer), located with ``attention_mask``, so a sequence's reward does not depend on how much
padding its batch needs. Batches are padded on the right.

Tokenising ``(prompt, answer)``: ``render_conversation(prompt + [assistant answer])`` with the model's
chat template. A sequence longer than ``max_length`` keeps its **last** ``max_length`` tokens: the
prompt is cut from the left (its oldest turns, the system prompt first) and the answer is kept, since
the answer is what is judged and its end is where the reward is read. An answer longer than
``max_length`` on its own loses its start too; both cases are counted in :class:`EncodeReport`, measured
on the final answer (earlier assistant turns of a multi-turn prompt are prompt).

On disk (``save_reward_model`` / ``load_reward_model``)::

    config.json, model.safetensors    the backbone, ``save_pretrained`` (loads with ``AutoModel``)
    tokenizer files                   the tokenizer incl. its chat template
    reward_head.safetensors           ``weight (1, hidden)``, ``bias (1,)``
    reward_config.json                name, margin table, max_length, what it was initialised from
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..artifacts import write_json
from ..chat import Message, pad_batch, render_conversation
from ..errors import ConfigError
from ..models import ModelConfig, autocast, check_not_pruned, load_model, resolve_precision, save_model
from ..progress import progress

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
FORMAT = "rlhf-reward-model/1"


class RewardModel(nn.Module):
    """``forward(input_ids (b, t), attention_mask (b, t)) -> rewards (b,)``, fp32 logits.

    ``info`` is what ``reward_config.json`` holds (name, margin table, max_length, init source).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None, info: dict | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1 / math.sqrt(hidden + 1))
            nn.init.zeros_(head.bias)
        self.head = head
        self.info = {"name": "reward", "max_length": 1024, **(info or {})}

    @property
    def config(self):
        return self.backbone.config

    @property
    def max_length(self) -> int:
        return int(self.info["max_length"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state  # (b, t, h)
        last = last_token_index(attention_mask)  # (b,)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (b, h)
        return self.head(picked).squeeze(-1).float()

    def forward_packed(self, input_ids: torch.Tensor, segments: torch.Tensor,
                       position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen rewards (b,), rejected rewards (b,))`` of packed pair rows (:func:`packed_attention_mask`).

        Each row holds a pair as ``[shared prefix, chosen suffix, rejected suffix]`` (``segments`` 1, 2, 3; 0 is
        padding), the rejected suffix at the positions it has in its own sequence. Each answer's tokens see the
        prefix and their own suffix only, so each reward is the one :meth:`forward` gives the whole sequence --
        the prompt's tokens just go through the layers once instead of twice.
        """
        hidden = self.backbone(input_ids=input_ids, attention_mask=packed_attention_mask(segments),
                               position_ids=position_ids, use_cache=False).last_hidden_state  # (b, t, h)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        picked = torch.cat([hidden[rows, last_token_index(segments == CHOSEN)],
                            hidden[rows, last_token_index(segments == REJECTED)]])  # (2b, h)
        return self.head(picked).squeeze(-1).float().chunk(2)


PREFIX, CHOSEN, REJECTED = 1, 2, 3  # segment ids of a packed pair row; 0 is padding


def packed_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """``(b, 1, t, t)`` boolean mask (True: attend) of packed pair rows with ``segments (b, t)``.

    Causal, and a token sees the keys of the shared prefix and of its own segment: the rejected answer does
    not see the chosen one packed before it. A padding position sees only itself (a query row with no key
    would make the attention NaN, and NaN times a zero weight is NaN again in the rows that do count).
    """
    t = segments.shape[1]
    index = torch.arange(t, device=segments.device)
    query, key = segments[:, :, None], segments[:, None, :]
    seen = ((query != 0) & (key != 0) & ((key == PREFIX) | (key == query))
            & (index[None, :, None] >= index[None, None, :]))
    return (seen | torch.eye(t, dtype=torch.bool, device=segments.device))[:, None]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(b,)`` position of each row's last attended token in a ``(b, t)`` mask (either padding side)."""
    t = attention_mask.shape[1]
    return t - 1 - attention_mask.flip(-1).int().argmax(-1)


def reward_model_from_policy(model_cfg: ModelConfig, name: str = "reward", seed: int = 0,
                             max_length: int = 1024) -> tuple[RewardModel, object]:
    """A fresh RM from a policy checkpoint: ``(reward_model, tokenizer)``; the head init is seeded."""
    policy, tokenizer = load_model(model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rm = RewardModel(policy.base_model, info={"name": name, "max_length": max_length,
                                                  "init_from": model_cfg.name_or_path})
    return rm, tokenizer


def save_reward_model(rm: RewardModel, tokenizer, out_dir: str | Path) -> Path:
    """Write the RM directory (layout in the module docstring) into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(rm.backbone, tokenizer, out_dir)
    save_file({k: v.detach().cpu().contiguous() for k, v in rm.head.state_dict().items()}, out_dir / HEAD_FILE)
    write_json(out_dir / CONFIG_FILE, {"format": FORMAT, **rm.info})
    return out_dir


def load_reward_model(rm_dir: str | Path) -> tuple[RewardModel, object]:
    """``(reward_model, tokenizer)`` from a directory written by :func:`save_reward_model`."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    rm_dir = Path(rm_dir)
    check_not_pruned(rm_dir, "scorer.helpful")
    if not (rm_dir / CONFIG_FILE).is_file() or not (rm_dir / HEAD_FILE).is_file():
        raise ConfigError("reward model", f"{rm_dir} is not a reward-model directory (no {CONFIG_FILE} or "
                          f"{HEAD_FILE}); give the output directory of `rlhf rm train`")
    info = json.loads((rm_dir / CONFIG_FILE).read_text())
    info.pop("format", None)
    backbone = AutoModel.from_pretrained(rm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    head = nn.Linear(backbone.config.hidden_size, 1)
    head.load_state_dict(load_file(rm_dir / HEAD_FILE))
    return RewardModel(backbone, head, info), tokenizer


# --------------------------------------------------------------------------------------------------
# tokenising (prompt, answer) sequences


@dataclass
class EncodeReport:
    """What fitting sequences into ``max_length`` did, for the step's log line and manifest."""

    n_sequences: int = 0
    n_prompt_truncated: int = 0  # the prompt lost its oldest tokens; the (final) answer is whole
    n_answer_truncated: int = 0  # the final answer alone was longer than max_length: its start is gone too
    n_tokens: int = 0

    def summary(self) -> str:
        return (f"{self.n_sequences} sequences, {self.n_tokens} tokens; {self.n_prompt_truncated} with the "
                f"prompt cut from the left, {self.n_answer_truncated} with the answer cut too")


def encode_answer(tokenizer, prompt: Sequence[Message], answer: str, max_length: int,
                  report: EncodeReport | None = None) -> torch.Tensor:
    """Token ids ``(t,)``, ``t <= max_length``, of ``prompt`` + the assistant ``answer`` (left-truncated).

    ``report`` counts a cut sequence as prompt-truncated when ``answer`` is whole, as answer-truncated
    when ``answer`` lost tokens too; the answer's start is its first token in the rendered sequence
    (``mode="last"``: assistant turns inside a multi-turn ``prompt`` are prompt, not answer).
    """
    ids, _, answer_mask = render_conversation(tokenizer, [*prompt, {"role": "assistant", "content": answer}],
                                              mode="last")
    if report is not None:
        report.n_sequences += 1
        if len(ids) > max_length:
            answer_start = int(answer_mask.int().argmax())
            cut_answer = len(ids) - answer_start > max_length
            report.n_answer_truncated += cut_answer
            report.n_prompt_truncated += not cut_answer
        report.n_tokens += min(len(ids), max_length)
    return ids[-max_length:]


# --------------------------------------------------------------------------------------------------
# scoring


@torch.no_grad()
def score_in_length_order(rm: RewardModel, sizes: Sequence[int], batch_size: int, rows: int, unit: str,
                          score_batch: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
    """``(rows, n)`` fp32 rewards of ``n`` items, in their order: ``score_batch(indices)`` returns the
    ``(rows, len(indices))`` rewards of a batch of ``batch_size`` items cut from the items sorted by ``sizes``,
    longest first (similar lengths, little padding). ``rm`` runs in eval mode; its mode is restored."""
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    order = sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True)
    rewards = torch.empty(rows, len(sizes), dtype=torch.float32)
    was_training = rm.training
    rm.eval()
    try:
        with progress(len(order), f"score {rm.info['name']}", unit) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                rewards[:, chunk] = score_batch(chunk).float().cpu().reshape(rows, len(chunk))
                bar.update(len(chunk))
    finally:
        rm.train(was_training)
    return rewards


def score_ids(rm: RewardModel, sequences: Sequence[torch.Tensor], pad_id: int, batch_size: int = 16,
              precision: str = "auto") -> torch.Tensor:
    """``(n,)`` fp32 rewards of tokenised sequences, in their order, scored in batches of similar lengths
    (:func:`score_in_length_order`)."""
    device = next(rm.parameters()).device
    precision = resolve_precision(precision, device)

    def score_batch(chunk: list[int]) -> torch.Tensor:
        input_ids, attention_mask = pad_batch([sequences[i] for i in chunk], pad_id)
        with autocast(precision, device):
            return rm(input_ids.to(device), attention_mask.to(device))

    return score_in_length_order(rm, [len(s) for s in sequences], batch_size, 1, "answer", score_batch)[0]


def score(rm: RewardModel, tokenizer, prompts: Sequence[Sequence[Message]], answers: Sequence[str],
          batch_size: int = 16, precision: str = "auto", max_length: int | None = None) -> torch.Tensor:
    """``(n,)`` rewards of ``answers[i]`` to ``prompts[i]`` (lists of chat messages), under no_grad.

    ``max_length`` defaults to the RM's own (``reward_config.json``); ``precision`` ``auto`` uses bf16
    autocast only where bf16 matmuls are fast (weights stay fp32).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"one prompt per answer: got {len(prompts)} prompts and {len(answers)} answers")
    max_length = max_length or rm.max_length
    sequences = [encode_answer(tokenizer, p, a, max_length) for p, a in zip(prompts, answers)]
    return score_ids(rm, sequences, tokenizer.pad_token_id, batch_size, precision)
