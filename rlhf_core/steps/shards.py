"""The frame of a shard of a sampling step (``rlhf.core.shards``, docs/design.md#fan-out).

A shard is a step of its own: its output directory (``<step>-shard-<i>-of-<n>``, ``rlhf.core.steps.outputs``)
holds ``rows.parquet`` -- the rows its units computed -- and a manifest keyed by the step's config, its
inputs and the shard, so each shard is cached on its own and a failed one reruns alone. The step's merge
reads every shard's rows (:func:`merged`) in place of computing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..rejection import in_order
from ..shards import Shard
from .common import file_input, run_step
from .outputs import shard_outputs


def shard_step(step: str, shard: Shard, out_dir: str | Path, config: dict, inputs: dict[str, dict],
               rows: Callable[[], pd.DataFrame], describe: str) -> dict:
    """Run ``rows()`` (this shard's share of ``step``) into ``out_dir/rows.parquet``; returns the manifest."""
    contract = shard_outputs(step, shard.index, shard.count)

    def body(tmp: Path) -> dict:
        frame = rows()
        frame.to_parquet(tmp / contract["rows"])
        return {"n_rows": len(frame), "shard": shard.index, "shards": shard.count}

    return run_step(contract.dirname, out_dir, config | {"shard": [shard.index, shard.count]}, inputs, body,
                    describe, lambda m: f"{m['n_rows']} rows")


def shard_inputs(paths: Sequence[str | Path]) -> dict[str, dict]:
    """The shards' rows as a merging step's inputs (their digests enter its key)."""
    return {f"shard_{i}": file_input(path) for i, path in enumerate(paths)}


def merged(paths: Sequence[str | Path], order: list[str]) -> pd.DataFrame:
    """Every shard's rows as the one frame the unsharded step computes."""
    return in_order([pd.read_parquet(path) for path in paths], order)
