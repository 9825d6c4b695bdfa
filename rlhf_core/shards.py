"""Shards of a step's work (docs/design.md#fan-out).

The sampling steps of an iteration (collect_pairs, search_temperature, rejection_sample, evaluate) and
the simulated annotation can be split into ``orchestration.shards`` pieces that run as separate tasks --
on other processes or machines -- and are merged into the step's usual output. A step lists its *units*
of work in a fixed order, and shard ``i`` of ``n`` takes every n-th of them from the i-th on.

The units are chosen so that a unit's result does not depend on which shard computes it:

- sampling: one batch of the engine's call (``rlhf.core.sampling.n_batches``). A batch is always the same
  prompts (the engine sorts the call's prompts by length, then cuts them into ``batch_prompts``), drawn
  with the same generator (seeded by the call's seed and the batch's number), and scored by the reward
  models as one group. So the shards' rows, merged, are the rows of the unsharded step bit for bit, in
  any precision -- not just close.
- annotation: one pair (the simulated rater seeds each pair's draw by its ``pair_id``).

The unsharded step is shard 0 of 1 followed by the same merge, so both paths run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the units ``index, index + count, ...`` of a step's list."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError("orchestration.shards", f"shard {self.index} of {self.count}: the number of shards "
                                                      "must be >= 1 and the shard between 0 and that number - 1")

    def take(self, units: Sequence[T]) -> list[T]:
        return list(units[self.index::self.count])

    @property
    def name(self) -> str:
        """``shard-<i>-of-<n>``: how the shard's output directory and task run are named."""
        return f"shard-{self.index}-of-{self.count}"


WHOLE = Shard()
