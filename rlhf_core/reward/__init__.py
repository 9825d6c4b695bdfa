"""Reward models' pure parts: the ranking loss, evaluation metrics and the two-RM combination.

Only torch, numpy and pandas are imported here; the model and its training loop live elsewhere.
"""

from rlhf_core.reward.combine import combined_reward, whiten, whitened_combined_reward
from rlhf_core.reward.loss import MARGIN_TABLES, margins_for, ranking_loss
from rlhf_core.reward.metrics import accuracy_table, margin_ablation_table, pair_credit, reward_metrics

__all__ = [
    "MARGIN_TABLES", "accuracy_table", "combined_reward", "margin_ablation_table", "margins_for",
    "pair_credit", "ranking_loss", "reward_metrics", "whiten", "whitened_combined_reward",
]
