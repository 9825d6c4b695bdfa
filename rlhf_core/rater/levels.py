"""From two gold scores to a noisy human-like preference: a winner and one of four levels.

Llama 2 (section 3.2.1) asks annotators which answer is better and by how much:
significantly better, better, slightly better, negligibly better / unsure. Here the level is
read from the gold gap ``|gold_a - gold_b|`` and the rater errs like a person: the closer the
two answers, the likelier the preference is flipped,

    p_flip(gap) = min(max_flip, noise * exp(-gap / noise_scale))

so per-level reward-model accuracy has a known ceiling ``1 - p_flip`` and rises with the level,
as in the paper's Table 8. The level itself is always read from the true gap (a rater who
picks the wrong answer still sees roughly how different the two are). A tie (gap 0) is
labelled ``negligibly_better`` with a winner drawn at random.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rlhf.core.errors import ConfigError
from rlhf.core.preferences import LEVELS  # noqa: F401 (re-exported: the pair schema's four names, strongest first)

# Gold scores are sums of fractions (0.7 - 0.2 = 0.49999999999999994): gaps below this are
# ties, and a gap this close to a threshold counts as reaching it.
TIE_EPS = 1e-9


@dataclass
class RaterConfig:
    """Level thresholds on the gold gap and the simulated rater's noise.

    With the gold judge's weights (``gold.py``), missing one whole instruction out of 1, 2 or
    3 costs 0.8, 0.4 or 0.27, refusing an unsafe request gains at least 0.6, one whole quality
    term (say an answer wholly off-topic) costs 0.05 (0.067 when the judge is not given the
    question: three terms), and half of one (half the answer's words in a sentence it never
    finishes) 0.025: the defaults put those in significantly_better, better, better,
    significantly_better, slightly_better and negligibly_better respectively. Partial credit
    falls in between: 3 of 6 sentences, when that is the prompt's only instruction, costs 0.4
    (better).
    """

    significantly_better: float = 0.5  # gap >= this: significantly_better
    better: float = 0.25  # gap >= this: better
    slightly_better: float = 0.05  # gap >= this: slightly_better; below: negligibly_better
    # p_flip at gap -> 0; 0 gives a perfect rater. 0.5 with scale 0.25 flips ~41 % of pairs
    # that differ by one quality term, ~15 % at gap 0.3 and ~5 % at gap 0.6.
    noise: float = 0.5
    noise_scale: float = 0.25  # gap at which p_flip has fallen to noise / e
    max_flip: float = 0.5  # beyond 0.5 the rater would be adversarial, not noisy
    seed: int = 0  # labels are drawn per pair from (seed, pair_id): order-independent

    def validate(self) -> "RaterConfig":
        """Raise :class:`ConfigError` naming the first bad key; return self."""
        if not self.significantly_better > self.better > self.slightly_better > 0:
            raise ConfigError("rater.significantly_better", "thresholds must satisfy "
                              "significantly_better > better > slightly_better > 0, got "
                              f"{self.significantly_better}, {self.better}, {self.slightly_better}")
        if not 0 <= self.noise <= 1:
            raise ConfigError("rater.noise", f"must be in [0, 1], got {self.noise}")
        if self.noise_scale <= 0:
            raise ConfigError("rater.noise_scale", f"must be > 0, got {self.noise_scale}")
        if not 0 <= self.max_flip <= 0.5:
            raise ConfigError("rater.max_flip", f"must be in [0, 0.5], got {self.max_flip}")
        return self


def level_for_gap(gap: float, config: RaterConfig) -> str:
    """The level name for a gold gap (its sign is ignored)."""
    gap = abs(gap) + TIE_EPS
    if gap >= config.significantly_better:
        return "significantly_better"
    if gap >= config.better:
        return "better"
    if gap >= config.slightly_better:
        return "slightly_better"
    return "negligibly_better"


def flip_probability(gap: float, config: RaterConfig) -> float:
    """p_flip(gap) = min(max_flip, noise * exp(-|gap| / noise_scale))."""
    return min(config.max_flip, config.noise * math.exp(-abs(gap) / config.noise_scale))


def decide(score_a: float, score_b: float, rng: random.Random,
           config: RaterConfig) -> tuple[str, str]:
    """The rater's ``(preferred, level)``, preferred in {"a", "b"}.

    Draws exactly one number from ``rng``: the tie-break for a tie, the flip otherwise.
    """
    gap = score_a - score_b
    level = level_for_gap(gap, config)
    if abs(gap) < TIE_EPS:
        return ("a" if rng.random() < 0.5 else "b"), level
    better, worse = ("a", "b") if gap > 0 else ("b", "a")
    return (worse if rng.random() < flip_probability(gap, config) else better), level
