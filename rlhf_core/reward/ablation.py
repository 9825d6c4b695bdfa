"""The margin ablation of Llama 2's Table 28: the same RM trained with no, a small and a large margin.

Every variant starts from the same policy checkpoint and head init (same seed), sees the same training
pairs in the same order, and is tested on the same held-out pairs, so the margin table is the only
difference. The paper (helpfulness RM, accuracy % SB / B / SlB / NB, avg): no margin 79.1 / 66.9 /
59.8 / 54.5 (62.5); small 80.4 / 67.3 / 60.4 / 55.0 (63.0); large 80.7 / 67.5 / 60.5 / 54.3 (62.9).

A finished variant's test metrics are kept in ``<work_dir>/margin-<variant>/test_metrics.json``, so an
interrupted ablation reruns only the variants that had not finished (and resumes the one that was
running from its checkpoint).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..artifacts import write_json
from ..models import ModelConfig
from ..training import MetricsCallback
from .metrics import margin_ablation_table
from .model import reward_model_from_policy
from .train import RewardConfig, evaluate_reward_model, train_reward_model

VARIANTS = ("none", "small", "large")


def ablate_margins(model_cfg: ModelConfig, train_pairs: pd.DataFrame, test_pairs: pd.DataFrame,
                   cfg: RewardConfig, work_dir: str | Path, variants: Sequence[str] = VARIANTS,
                   on_metrics: MetricsCallback | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Train one RM per margin variant and test each on ``test_pairs``.

    Returns ``(table, results)``: ``table`` in the Table 28 layout (rows = variants, columns = the four
    levels strongest first and ``avg``, accuracy in %), ``results`` maps a variant to its
    :func:`~rlhf.core.reward.metrics.reward_metrics`. ``on_metrics(metrics, step)`` receives each
    training step's metrics with keys prefixed ``<variant>/``.
    """
    work_dir = Path(work_dir)
    results: dict[str, dict] = {}
    for variant in variants:
        variant_dir = work_dir / f"margin-{variant}"
        done = variant_dir / "test_metrics.json"
        if done.is_file():
            results[variant] = json.loads(done.read_text())
            continue
        rm, tokenizer = reward_model_from_policy(model_cfg, name=f"margin-{variant}", seed=cfg.seed,
                                                 max_length=cfg.max_length)
        forward = None if on_metrics is None else (
            lambda metrics, step, v=variant: on_metrics({f"{v}/{k}": x for k, x in metrics.items()}, step))
        train_reward_model(rm, tokenizer, train_pairs, replace(cfg, margin=variant), variant_dir, forward,
                           desc=f"rm margin={variant}", precision=model_cfg.precision)
        results[variant], _ = evaluate_reward_model(rm, tokenizer, test_pairs, cfg.eval_batch_size,
                                                    model_cfg.precision, cfg.pack_pairs)
        write_json(done, results[variant])
        shutil.rmtree(variant_dir / "checkpoints", ignore_errors=True)
    return margin_ablation_table(results), results
