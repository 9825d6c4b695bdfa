"""Reward models (Llama 2 §3.2.2, §3.2.3): from preference pairs to the reward PPO and rejection
sampling use.

- ``loss``: the margin ranking loss and its margin tables;
- ``metrics``: accuracy per preference level and the Table 8 / Table 28 layouts;
- ``combine``: the Helpfulness/Safety combination and whitening;
- ``model``: the RM itself (a policy's transformer with a scalar head), saving, loading and scoring;
- ``train``: its training on the shared loop and its evaluation on held-out pairs;
- ``scorer``: one or two trained RMs behind the scoring function rejection sampling and PPO call;
- ``synthetic``: simulated-rater pairs, for runs without a pair file;
- ``ablation``: the margin ablation (Table 28).

The package re-exports the names of the first three (torch, numpy and pandas only); the others are
imported by module (``from rlhf.core.reward.model import ...``), so importing the package does not load
the model code.
"""

from rlhf.core.reward.combine import combined_reward, whiten
from rlhf.core.reward.loss import MARGIN_TABLES, margins_for, ranking_loss
from rlhf.core.reward.metrics import accuracy_table, margin_ablation_table, pair_credit, reward_metrics

__all__ = [
    "MARGIN_TABLES", "accuracy_table", "combined_reward", "margin_ablation_table", "margins_for",
    "pair_credit", "ranking_loss", "reward_metrics", "whiten",
]
