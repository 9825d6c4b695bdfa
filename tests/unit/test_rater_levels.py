"""Level thresholds, the flip model and its observed rate, ties, and config validation."""

import math
import random

import pytest

from rlhf.core.errors import ConfigError
from rlhf.core.rater.levels import LEVELS, RaterConfig, decide, flip_probability, level_for_gap


@pytest.mark.parametrize("gap,level", [
    (0.8, "significantly_better"), (0.5, "significantly_better"), (-0.5, "significantly_better"),
    (0.49, "better"), (0.25, "better"), (0.24, "slightly_better"), (0.05, "slightly_better"),
    (0.049, "negligibly_better"), (0.0, "negligibly_better")])
def test_level_thresholds(gap, level):
    assert level_for_gap(gap, RaterConfig()) == level


def test_level_names_are_the_papers_four():
    assert LEVELS == ("significantly_better", "better", "slightly_better", "negligibly_better")


def test_flip_probability_by_hand():
    config = RaterConfig(noise=0.4, noise_scale=0.2, max_flip=0.5)
    assert flip_probability(0.2, config) == pytest.approx(0.4 * math.exp(-1))
    assert flip_probability(-0.2, config) == pytest.approx(0.4 * math.exp(-1))
    assert flip_probability(0.0, RaterConfig(noise=0.9)) == 0.5  # capped
    probabilities = [flip_probability(gap, config) for gap in (0.1, 0.3, 0.6)]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("gap", [0.05, 0.2, 0.6])
def test_observed_flip_rate_matches_the_model(gap):
    config = RaterConfig(noise=0.4, noise_scale=0.25)
    rng = random.Random(123)
    n = 4000
    flips = sum(decide(0.5 + gap, 0.5, rng, config)[0] == "b" for _ in range(n))
    # binomial sd at p <= 0.4 and n = 4000 is <= 0.008: 0.03 is ~4 sd
    assert abs(flips / n - flip_probability(gap, config)) < 0.03


def test_perfect_rater_never_flips():
    rng = random.Random(0)
    config = RaterConfig(noise=0.0)
    assert all(decide(0.51, 0.5, rng, config)[0] == "a" for _ in range(1000))
    assert all(decide(0.2, 0.7, rng, config) == ("b", "significantly_better") for _ in range(100))


def test_tie_is_negligible_with_a_random_winner():
    rng = random.Random(0)
    picks = [decide(0.5, 0.5, rng, RaterConfig(noise=0.0)) for _ in range(2000)]
    assert {level for _, level in picks} == {"negligibly_better"}
    share_a = sum(p == "a" for p, _ in picks) / len(picks)
    assert 0.45 < share_a < 0.55


def test_level_comes_from_the_true_gap_even_when_flipped():
    rng = random.Random(1)
    config = RaterConfig(noise=1.0, max_flip=0.5, noise_scale=10.0)  # ~50 % flips at any gap
    picks = {decide(0.9, 0.3, rng, config) for _ in range(200)}
    assert picks == {("a", "significantly_better"), ("b", "significantly_better")}


@pytest.mark.parametrize("kwargs,key", [
    ({"better": 0.6}, "rater.significantly_better"), ({"slightly_better": 0.0},
                                                       "rater.significantly_better"),
    ({"noise": 1.5}, "rater.noise"), ({"noise_scale": 0.0}, "rater.noise_scale"),
    ({"max_flip": 0.7}, "rater.max_flip")])
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        RaterConfig(**kwargs).validate()
    assert err.value.key == key
