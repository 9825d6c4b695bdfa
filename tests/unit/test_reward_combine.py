"""Combining the Helpfulness and Safety RMs (Llama 2 §3.2.3) and whitening."""

import math

import pytest
import torch

from rlhf.core.reward.combine import combined_reward, whiten


def logit(p):
    return math.log(p / (1 - p))


def test_low_safety_score_switches_to_the_safety_rm():
    helpful = torch.tensor([5.0, 5.0, 5.0])
    # sigmoid(Rs) = 0.10 (< 0.15, unsafe answer), 0.50, 0.90
    safety = torch.tensor([logit(0.10), 0.0, logit(0.90)])
    out = combined_reward(helpful, safety)
    assert out.tolist() == pytest.approx([logit(0.10), 5.0, 5.0])


@pytest.mark.parametrize("threshold", [0.15, 0.1])  # float32(logit(t)) rounds up for 0.15, down for 0.1
def test_threshold_boundary_is_strict_on_the_probability_scale(threshold):
    helpful = torch.tensor([7.0, 7.0, 7.0])
    at = logit(threshold)
    safety = torch.tensor([at, at - 1e-3, at + 1e-3])
    assert combined_reward(helpful, safety, threshold=threshold).tolist() == pytest.approx([7.0, at - 1e-3, 7.0])


def test_threshold_reads_logits_as_probabilities():
    # a raw logit of 0.14 is not below 0.15 once read as a probability (sigmoid(0.14) ~ 0.53)
    assert combined_reward(torch.tensor([7.0]), torch.tensor([0.14])).item() == 7.0
    # threshold 0.5 is logit 0: every negative safety logit switches
    out = combined_reward(torch.tensor([7.0, 7.0]), torch.tensor([-0.01, 0.01]), threshold=0.5)
    assert out.tolist() == pytest.approx([-0.01, 7.0])


def test_unsafe_tag_forces_the_safety_rm():
    helpful, safety = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])
    assert combined_reward(helpful, safety, torch.tensor([True, False, True])).tolist() == [4.0, 2.0, 6.0]
    # tags from a DataFrame column: None / NaN mean untagged
    assert combined_reward(helpful, safety, [None, True, float("nan")]).tolist() == [1.0, 5.0, 3.0]


def test_one_rm_only_is_that_rm():
    helpful = torch.tensor([1.0, -4.0])
    assert combined_reward(helpful, None, torch.tensor([True, True])).tolist() == [1.0, -4.0]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        combined_reward(torch.zeros(2), torch.zeros(2), threshold=1.5)
    with pytest.raises(ValueError, match="safety must be"):
        combined_reward(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="unsafe_tag must be"):
        combined_reward(torch.zeros(2), torch.zeros(2), [True])


def test_whiten_hand_computed():
    x = torch.tensor([1.0, 2.0, 3.0])
    s = math.sqrt(1.5)  # 1 / sqrt(population variance 2/3)
    assert whiten(x, eps=0.0).tolist() == pytest.approx([-s, 0.0, s])
    assert whiten(x, eps=0.0, shift_mean=False).tolist() == pytest.approx([2 - s, 2.0, 2 + s])
    w = whiten(torch.tensor([3.0, -1.0, 10.0, 4.0]))
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)


def test_whiten_single_element_is_zero_not_nan():
    assert whiten(torch.tensor([3.0])).tolist() == [0.0]
