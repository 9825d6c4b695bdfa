"""The ranking loss with margin (Llama 2 §3.2.2 eq. 2) and the level -> margin tables."""

import math

import pytest
import torch

from rlhf.core.errors import ConfigError
from rlhf.core.reward.loss import MARGIN_TABLES, margins_for, ranking_loss


def test_loss_hand_computed():
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    # -log sigmoid(2 - 1 - 1) = -log(1/2) = log 2
    assert ranking_loss(chosen, rejected, torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # -log sigmoid(1) = log(1 + e^-1)
    assert ranking_loss(chosen, rejected, 0.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_loss_is_the_batch_mean_with_per_pair_margins():
    loss = ranking_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    # both pairs have difference - margin = 0: mean(log 2, log 2)
    assert loss.item() == pytest.approx(math.log(2))
    loss = ranking_loss(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2)


def test_gradient_signs():
    chosen = torch.tensor([0.5, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 2.0], requires_grad=True)
    ranking_loss(chosen, rejected, torch.tensor([1.0, 0.0])).backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    # d/dc -log sigmoid(d) = -(1 - sigmoid(d)) / b, with d = 0.5 - 0 - 1
    assert chosen.grad[0].item() == pytest.approx(-(1 - torch.sigmoid(torch.tensor(-0.5)).item()) / 2)


def test_loss_is_finite_for_large_negative_difference():
    loss = ranking_loss(torch.tensor([-200.0]), torch.tensor([200.0]), 3.0)
    assert loss.item() == pytest.approx(403.0)


def test_loss_refuses_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match="must both be"):
        ranking_loss(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="margin"):
        ranking_loss(torch.zeros(4), torch.zeros(4), torch.zeros(4, 1))


def test_margin_tables():
    levels = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    assert margins_for(levels, "none").tolist() == [0, 0, 0, 0]
    assert margins_for(levels, "small").tolist() == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert margins_for(levels, "large").tolist() == [3, 2, 1, 0]
    assert set(MARGIN_TABLES) == {"none", "small", "large"}


def test_unknown_or_missing_level_gets_zero_margin():
    assert margins_for([None, float("nan"), "unsure", "better"], "large").tolist() == [0, 0, 0, 2]


def test_custom_mapping_and_its_validation():
    custom = {"significantly_better": 4, "better": 0.5}
    assert margins_for(["better", "significantly_better", "slightly_better"], custom).tolist() == [0.5, 4, 0]
    with pytest.raises(ConfigError, match="reward.margin.*'much_better'.*significantly_better"):
        margins_for(["better"], {"much_better": 1.0})
    with pytest.raises(ConfigError, match="reward.margin.better"):
        margins_for(["better"], {"better": "2"})
    with pytest.raises(ConfigError, match="unknown margin table 'huge'"):
        margins_for(["better"], "huge")


def test_margins_dtype_and_shape():
    m = margins_for(["better"] * 3, "small", dtype=torch.float64)
    assert m.shape == (3,) and m.dtype == torch.float64
