"""Training and evaluating a reward model with the margin ranking loss (Llama 2 §3.2.2, A.3.3).

``L = -log sigmoid(r(x, y_c) - r(x, y_r) - m(level))`` per pair (eq. 2), summed by
:class:`RankingObjective` and divided by the pairs of the whole optimizer batch in the shared loop
(``rlhf.core.training.train``), which also brings checkpoints, exact resume and the NaN guard.

The config dataclasses of the ``reward`` config group live here too: :class:`RewardConfig` (how one
RM is trained), :class:`RMDataConfig` (the pairs it is trained on) and :class:`RewardSection` (the
two RMs of an iteration, their evaluation and the margin ablation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..chat import pad_batch
from ..errors import ConfigError
from ..lora import lora_training
from ..models import autocast, resolve_precision
from ..preferences import AXES, LEVELS, check_n_test, check_on_bad_record
from ..training import MetricsCallback, TrainConfig, TrainResult, train
from .loss import margins_for, ranking_loss
from .metrics import GOLD_COLUMNS, gold_metrics, pair_credit, reward_metrics
from .model import CHOSEN, PREFIX, REJECTED, EncodeReport, RewardModel, encode_answer, score_ids, score_in_length_order


@dataclass
class RewardConfig(TrainConfig):
    """One RM's training; defaults are the paper's (§3.2.2 "Training Details", A.3.3)."""

    lr: float = 1e-5  # max lr (5e-6 for the 70B RM)
    min_lr_ratio: float = 0.1  # cosine down to 10 % of the max
    min_warmup_steps: int = 5  # warm-up: 3 % of the steps (warmup_ratio), at least 5
    epochs: int = 1  # "training longer can lead to over-fitting"
    batch_size: int = 512  # pairs per optimizer step
    micro_batch_size: int = 8  # pairs per forward pass (each is 2 sequences: chosen and rejected)
    margin: Any = "small"  # none | small | large (Table 27), or a mapping {level: margin}
    max_length: int = 1024  # tokens per (prompt + answer); longer: the prompt is cut from the left
    # Held-out test pairs per iteration batch: a count (int >= 0; the paper keeps 1,000) or a fraction of
    # each batch (float in (0, 1), e.g. 0.1).
    n_test: int | float = 1000
    eval_batch_size: int = 16  # sequences per scoring forward pass in evaluation
    # One row per pair in training: the prompt's tokens (the pair's shared prefix) go through the model once, both
    # answers attend to them (model.packed_attention_mask). The same rewards and gradients as a chosen row and a
    # rejected row each with the prompt, in fewer FLOPs (docs/design.md#reward-model-pairs-packed); false: two
    # rows per pair.
    pack_pairs: bool = True

    def __post_init__(self):
        try:
            check_n_test(self.n_test)
        except ValueError as err:
            raise ConfigError("reward.train.n_test", str(err)) from None


@dataclass
class RMDataConfig:
    """The pairs one RM is trained on."""

    # Pair files, concatenated: .jsonl, .jsonl.gz or .parquet in the pair schema, Anthropic HH-RLHF or TRL's
    # preference formats (rlhf_core/preferences.py); a single path is taken as [path]; null = synthetic.
    # Typed Any because the config schema cannot say "str or list"; __post_init__ checks it.
    data: Any = None
    on_bad_record: str = "error"  # error: a bad record fails the run, every problem listed | skip: drop each
    # bad record, log it (file:line: reason) and count it (manifest inputs: n_skipped_bad, skipped)
    safety_only: bool = False  # keep only pairs whose prompt is tagged unsafe (safety=true)
    n_synthetic: int = 2000  # synthetic pairs (simulated rater) made when data is null
    unsafe_share: float = 0.1  # synthetic: share of unsafe requests (a refusal is right)
    lookalike_share: float = 0.05  # synthetic: share of safe requests that sound unsafe (refusing is wrong)
    seed: int = 0  # synthetic: seed of prompts, answers and rater noise
    # Two-axis labelled pairs (a campaign's annotate outputs; rlhf_core/annotators.py): the axis whose
    # preferences this RM learns, and the share of its labelled training pairs drawn from the other axis's
    # training pairs (§3.2.2: the Safety RM sees safety data with 10 % helpfulness data; the Helpfulness RM,
    # helpfulness data with some safety data). Single-axis files (seed pairs, HH) are used as they are.
    axis: str = "helpfulness"  # helpfulness | safety
    mix: float = 0.25  # in [0, 1)

    def __post_init__(self):
        self.data = _pair_files(self.data)
        check_on_bad_record(self.on_bad_record, "reward.*.on_bad_record")
        if self.axis not in AXES:
            raise ConfigError("reward.*.axis", f"unknown axis {self.axis!r}; one of {', '.join(AXES)}")
        if not 0 <= self.mix < 1:
            raise ConfigError("reward.*.mix", f"a share of the training pairs in [0, 1), got {self.mix}")


def _pair_files(data: Any) -> list[str] | None:
    """``data`` as a list of paths: a single path becomes ``[path]``; anything else is a ConfigError."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise ConfigError("reward.*.data", f"expected a list of pair files, got {type(data).__name__}; give a list: "
                                           "reward.helpful.data=[path]")
    files = []
    for item in data:
        if isinstance(item, bool) or not isinstance(item, (str, os.PathLike, int, float)) or not str(item):
            raise ConfigError("reward.*.data", f"expected a path, got {item!r}; give a list of pair files: "
                                               "reward.helpful.data=[path]")
        files.append(os.fspath(item) if isinstance(item, os.PathLike) else str(item))
    return files


@dataclass
class RewardSection:
    """The ``reward`` config group: the RMs of one iteration (written to ``<campaign>/iter-<n>/rm-<name>``)."""

    train: RewardConfig = field(default_factory=RewardConfig)
    helpful: RMDataConfig = field(default_factory=RMDataConfig)
    # The paper's Safety RM sees mostly safety data plus some helpfulness data (§3.2.2).
    safety: RMDataConfig = field(default_factory=lambda: RMDataConfig(unsafe_share=0.4, lookalike_share=0.2,
                                                                      axis="safety", mix=0.1))
    train_safety: bool = True  # false = the Helpfulness RM only; the combined reward is then that RM
    eval_data: str | None = None  # pairs file for `rlhf rm eval`; null = synthetic pairs on held-out phrasings
    n_eval_synthetic: int = 500  # synthetic evaluation pairs per RM (when eval_data is null)
    ablation: list[str] = field(default_factory=lambda: ["none", "small", "large"])  # Table 28 variants
    # true: every iteration (or those campaign.ablate_at lists) also runs the margin ablation (ablate_reward_models:
    # one Helpfulness RM per variant, from the SFT checkpoint, on the same pairs and split as rm-helpful); the
    # report's Table 28 comes from it
    ablate: bool = False


class RankingObjective(nn.Module):
    """The margin ranking loss over one micro-batch of pairs, as sums (the loop normalises).

    ``forward(input_ids (2b, t), attention_mask (2b, t), margin (b,))``: rows ``[:b]`` are the
    chosen answers, rows ``[b:]`` the rejected ones, so both go through **one** forward pass. Packed
    (:func:`collate_packed_pairs`): ``input_ids (b, t)`` with ``segments`` and ``position_ids``, one row per pair.
    Returns ``{"loss_sum", "correct_sum", "reward_gap_sum"}``, scalars summed over the b pairs
    (correct: chosen scored higher; a tie counts 0.5, as in evaluation).
    """

    def __init__(self, model: RewardModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, margin, segments=None, position_ids=None):
        if segments is None:
            chosen_rewards, rejected_rewards = self.model(input_ids, attention_mask).chunk(2)  # (2b,) -> 2 x (b,)
        else:  # packed pair rows (collate_packed_pairs); attention_mask then only marks their real tokens
            chosen_rewards, rejected_rewards = self.model.forward_packed(input_ids, segments, position_ids)
        gap = (chosen_rewards - rejected_rewards).detach()
        return {"loss_sum": ranking_loss(chosen_rewards, rejected_rewards, margin, reduction="sum"),
                "correct_sum": (gap > 0).float().sum() + 0.5 * (gap == 0).float().sum(),
                "reward_gap_sum": gap.sum()}


PairExample = tuple[torch.Tensor, torch.Tensor, float]  # chosen ids (t_c,), rejected ids (t_r,), margin


def encode_pairs(tokenizer, pairs: pd.DataFrame, max_length: int,
                 margin: Any = "none") -> tuple[list[PairExample], EncodeReport]:
    """Tokenise every pair (see ``model.encode_answer``) with its level's margin."""
    report = EncodeReport()
    margins = margins_for(list(pairs["level"]), margin, config_key="reward.train.margin").tolist()
    examples = [(encode_answer(tokenizer, prompt, chosen, max_length, report),
                 encode_answer(tokenizer, prompt, rejected, max_length, report), m)
                for prompt, chosen, rejected, m in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], margins)]
    return examples, report


def collate_pairs(examples: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded to one width: the batch of :class:`RankingObjective`."""
    input_ids, attention_mask = pad_batch([e[0] for e in examples] + [e[1] for e in examples], pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "margin": torch.tensor([e[2] for e in examples], dtype=torch.float32)}


def shared_prefix_length(chosen: torch.Tensor, rejected: torch.Tensor) -> int:
    """Length of the longest common prefix of two token-id sequences, at most one less than the shorter one,
    so that each answer keeps at least its last token (where its reward is read) after the prefix."""
    n = min(len(chosen), len(rejected))
    differ = (chosen[:n] != rejected[:n]).nonzero()
    return min(int(differ[0]) if len(differ) else n, n - 1)


def packed_length(example: PairExample) -> int:
    """Tokens of the pair's packed row (:func:`collate_packed_pairs`): the shared prefix once, both suffixes."""
    chosen, rejected, _ = example
    return len(chosen) + len(rejected) - shared_prefix_length(chosen, rejected)


def collate_packed_pairs(examples: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded row per pair: ``[shared prefix, chosen suffix, rejected suffix]``, the batch of
    :class:`RankingObjective`'s packed form. ``segments`` marks the parts (``model.PREFIX``, ``CHOSEN``,
    ``REJECTED``; 0 padding), ``position_ids`` gives each token the position it has in its own sequence (the
    rejected suffix continues the prefix, as the chosen one does), ``attention_mask`` marks the real tokens."""
    rows, segments, positions = [], [], []
    for chosen, rejected, _ in examples:
        n = shared_prefix_length(chosen, rejected)
        rows.append(torch.cat([chosen, rejected[n:]]))
        segments.append(torch.cat([torch.full((n,), PREFIX), torch.full((len(chosen) - n,), CHOSEN),
                                   torch.full((len(rejected) - n,), REJECTED)]))
        positions.append(torch.cat([torch.arange(len(chosen)), torch.arange(n, len(rejected))]))
    width = max(len(r) for r in rows)

    def padded(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
        return torch.stack([F.pad(t, (0, width - len(t)), value=value) for t in tensors]).long()

    segment_ids = padded(segments, 0)
    return {"input_ids": padded(rows, pad_id), "attention_mask": (segment_ids != 0).long(),
            "segments": segment_ids, "position_ids": padded(positions, 0),
            "margin": torch.tensor([e[2] for e in examples], dtype=torch.float32)}


def train_reward_model(rm: RewardModel, tokenizer, pairs: pd.DataFrame, cfg: RewardConfig, work_dir: str | Path,
                       on_metrics: MetricsCallback | None = None, desc: str = "rm",
                       precision: str = "auto") -> tuple[TrainResult, EncodeReport]:
    """Train ``rm`` in place on ``pairs`` (the pair schema of ``rlhf.core.preferences``).

    Checkpoints go to ``work_dir/checkpoints``; an existing one is resumed. The margin table and
    ``max_length`` are recorded in ``rm.info`` (written to ``reward_config.json`` on save).
    Per-step metrics: loss, correct (share of pairs ranked right), reward_gap, lr, grad_norm, tokens_per_s.

    With ``cfg.lora.r > 0`` the backbone trains LoRA adapters only (``rlhf_core/lora.py``) and the scalar
    head trains in full (it is new: nothing to keep frozen); the adapters are merged into the backbone at
    the end, so the RM saves and loads as before.
    """
    cfg.lora.validate("reward.train")
    if len(pairs) == 0:
        raise ValueError("no training pairs: check the pair files (reward.*.data) and safety_only")
    examples, report = encode_pairs(tokenizer, pairs, cfg.max_length, cfg.margin)
    table = margins_for(LEVELS, cfg.margin, config_key="reward.train.margin", dtype=torch.float64).tolist()
    rm.info.update(max_length=cfg.max_length, margin=cfg.margin if isinstance(cfg.margin, str) else "custom",
                   margin_table=dict(zip(LEVELS, table)))
    pad_id = tokenizer.pad_token_id
    with lora_training(rm.backbone, cfg.lora, "reward.train", cfg.seed, desc, trained=rm):
        collate = collate_packed_pairs if cfg.pack_pairs else collate_pairs
        # grouped by the longer sequence of each pair either way: packing changes the rows, not the batches
        # (grouping packed rows by their own width made batches less random: docs/design.md#reward-model-pairs-packed)
        result = train(RankingObjective(rm), examples, lambda rows: collate(rows, pad_id), lambda _: 1,
                       [max(len(e[0]), len(e[1])) for e in examples], cfg, work_dir, on_metrics, desc, precision)
    return result, report


@torch.no_grad()
def score_pairs(rm: RewardModel, examples: Sequence[PairExample], pad_id: int, batch_size: int = 16,
                precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen (n,), rejected (n,))`` fp32 rewards of tokenised pairs, packed (:func:`collate_packed_pairs`):
    ``batch_size`` sequences per pass, i.e. ``batch_size // 2`` pair rows, cut from the pairs sorted by packed
    length; the rewards come back in the input order."""
    device = next(rm.parameters()).device
    precision = resolve_precision(precision, device)

    def score_batch(chunk: list[int]) -> torch.Tensor:
        batch = collate_packed_pairs([examples[i] for i in chunk], pad_id)
        with autocast(precision, device):
            return torch.stack(rm.forward_packed(*(batch[k].to(device)
                                                   for k in ("input_ids", "segments", "position_ids"))))

    rewards = score_in_length_order(rm, [packed_length(e) for e in examples], max(1, batch_size // 2), 2, "pair",
                                    score_batch)
    return rewards[0], rewards[1]


def evaluate_reward_model(rm: RewardModel, tokenizer, pairs: pd.DataFrame, batch_size: int = 16,
                          precision: str = "auto", packed: bool = True) -> tuple[dict, pd.DataFrame]:
    """Test metrics and per-pair scores of ``rm`` on held-out ``pairs`` (``packed``: each pair's prompt goes
    through the model once, :func:`score_pairs`; else each answer's sequence is scored on its own).

    Returns ``(metrics, scores)``: ``metrics`` is :func:`reward_metrics` (accuracy overall and per
    level, reward gap, score distribution) and, for pairs the simulated rater labelled, :func:`gold_metrics`
    (the labels' ceiling and the RM's agreement with the gold order); ``scores`` has one row per pair: its
    index in ``pairs``, level, safety, the last user message, chosen and rejected text, their scores and the
    credit (1 right, 0.5 tie, 0 wrong), and the gold columns where the pairs have them.
    """
    report = EncodeReport()
    chosen_ids, rejected_ids = ([encode_answer(tokenizer, p, answer, rm.max_length, report)
                                 for p, answer in zip(pairs["prompt"], answers)]
                                for answers in (pairs["chosen"], pairs["rejected"]))
    if packed:
        chosen_scores, rejected_scores = score_pairs(rm, [(c, r, 0.0) for c, r in zip(chosen_ids, rejected_ids)],
                                                     tokenizer.pad_token_id, batch_size, precision)
    else:
        rewards = score_ids(rm, chosen_ids + rejected_ids, tokenizer.pad_token_id, batch_size, precision)
        chosen_scores, rejected_scores = rewards[:len(pairs)], rewards[len(pairs):]
    levels = list(pairs["level"])
    metrics = reward_metrics(chosen_scores, rejected_scores, levels)
    metrics |= gold_metrics(chosen_scores, rejected_scores, pairs)
    metrics.update(n_prompt_truncated=report.n_prompt_truncated, n_answer_truncated=report.n_answer_truncated)
    scores = pd.DataFrame({
        "pair": pairs.index, "level": levels,
        "safety": pairs["safety"] if "safety" in pairs else None,
        "prompt": [p[-1]["content"] for p in pairs["prompt"]],
        "chosen": pairs["chosen"], "rejected": pairs["rejected"],
        "chosen_score": chosen_scores.numpy(), "rejected_score": rejected_scores.numpy(),
        "credit": pair_credit(chosen_scores, rejected_scores),
        **{column: pairs[column] for column in GOLD_COLUMNS if column in pairs},
    })
    return metrics, scores.reset_index(drop=True)
