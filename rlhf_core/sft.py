"""Supervised fine-tuning with the loss on assistant tokens only (Llama 2 §3.1).

Also the policy-update step of rejection sampling (§3.2.3: "fine-tune on the best answers exactly like
SFT") and of Ghost Attention (§3.3, ``loss_mode="last"``). Any of them can train LoRA adapters instead of
every weight (``lora.r > 0``; ``rlhf_core/lora.py``), merged into the weights when training ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .chat import pad_batch
from .data import TokenizeReport, tokenize_conversations
from .errors import ConfigError
from .lora import lora_training
from .progress import progress
from .training import MetricsCallback, TrainConfig, TrainResult, train

# Models whose logits are post-processed after the LM head (Gemma's soft-capping, Cohere's scale):
# for them the cheap "head only on target positions" path would change the loss, so use the full one.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


@dataclass
class SFTConfig(TrainConfig):
    max_length: int = 1024  # tokens per conversation (paper: 4096); longer ones follow `overlong`
    overlong: str = "truncate"  # truncate (keep the start) | drop; counts are reported either way
    loss_mode: str = "all"  # all = every assistant turn; last = the final turn only (Ghost Attention)


def head_on_targets_ok(config) -> bool:
    return not any(getattr(config, name, None) for name in _LOGIT_POSTPROCESSING)


class CausalLMObjective(nn.Module):
    """Summed next-token cross-entropy over target tokens.

    ``forward(input_ids (b, t), attention_mask (b, t), loss_mask (b, t))`` returns ``{"loss_sum": ()}``.
    Position ``j`` predicts token ``j + 1``, which is a target when ``loss_mask[:, j + 1]``.
    The LM head runs only on the target positions: with a 49k vocabulary the head is a large share of
    the step, and most positions of a chat (system, user, padding) are not targets.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, loss_mask):
        targets = loss_mask[:, 1:]
        labels = input_ids[:, 1:][targets]
        if head_on_targets_ok(self.model.config):
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                           use_cache=False).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[:, :-1][targets])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                use_cache=False).logits[:, :-1][targets]
        return {"loss_sum": F.cross_entropy(logits.float(), labels, reduction="sum")}


def target_count(example) -> int:
    """Targets of one ``(input_ids, attention_mask, loss_mask)`` example (the first token never is one)."""
    return int(example[2][1:].sum())


def run_sft(model, tokenizer, conversations: list[dict], cfg: SFTConfig, work_dir: str | Path,
            on_metrics: MetricsCallback | None = None, desc: str = "sft", precision: str = "auto",
            config_key: str | None = None) -> tuple[TrainResult, TokenizeReport]:
    """Fine-tune ``model`` in place on ``conversations`` (rows with ``messages``).

    Checkpoints go to ``work_dir/checkpoints``; an existing checkpoint there is resumed. With
    ``cfg.lora.r > 0`` only LoRA adapters train, and they are merged into ``model``'s weights at the end,
    so ``model`` is a plain transformers model afterwards either way (the checkpoints hold the model with
    its adapters; a resumed run adds the same adapters before loading one). ``config_key`` is the config
    section errors name (``sft``, ``train_policy``, ``gatt.train``); by default ``gatt.train`` for
    ``desc="gatt"``, else ``sft``.
    """
    key = config_key or ("gatt.train" if desc == "gatt" else "sft")
    cfg.lora.validate(key)
    examples, report = tokenize_conversations(tokenizer, conversations, cfg.max_length, cfg.loss_mode,
                                              cfg.overlong)
    if not examples:
        raise ConfigError(f"{key}.max_length", f"no trainable conversations left ({report.summary()}): give more "
                                               f"conversations, or raise {key}.max_length, or keep over-long ones "
                                               f"truncated ({key}.overlong=truncate)")
    pad_id = tokenizer.pad_token_id

    def collate(rows):
        input_ids, attention_mask, loss_mask = pad_batch(rows, pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}

    with lora_training(model, cfg.lora, key, cfg.seed, desc):
        result = train(CausalLMObjective(model), examples, collate, target_count,
                       [len(e[0]) for e in examples], cfg, work_dir, on_metrics, desc, precision)
    return result, report


@torch.no_grad()
def mean_target_loss(model, tokenizer, conversations: list[dict], max_length: int = 1024,
                     mode: str = "all", batch_size: int = 8) -> float:
    """Mean per-token loss on the target tokens of ``conversations`` (evaluation, no grad)."""
    examples, _ = tokenize_conversations(tokenizer, conversations, max_length, mode)
    objective = CausalLMObjective(model).eval()
    total, n = 0.0, 0
    with progress(len(examples), "eval loss", "conversation") as bar:
        for i in range(0, len(examples), batch_size):
            rows = examples[i:i + batch_size]
            input_ids, attention_mask, loss_mask = pad_batch(rows, tokenizer.pad_token_id)
            total += float(objective(input_ids, attention_mask, loss_mask)["loss_sum"])
            n += sum(target_count(r) for r in rows)
            bar.update(len(rows))
    return total / max(1, n)
