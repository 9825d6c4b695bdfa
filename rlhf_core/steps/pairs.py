"""Preference-data steps of a campaign: the seed pairs, and the annotation of an iteration's new pairs.

- ``seed_pairs/`` (iteration 0): ``helpful.parquet`` and ``safety.parquet``, the pairs every RM starts
  from -- the analog of the open-source and earlier vendor data Llama 2's RMs were trained on beside
  Meta's own batches (§3.2.1). They come from ``reward.helpful.data`` / ``reward.safety.data`` when
  given, else from the simulated rater.
- ``annotate/pairs.parquet`` (iteration n): the iteration's collected pairs labelled by the configured
  annotator, in the pair schema (``prompt``, ``chosen``, ``rejected``, ``level``, ``source``,
  ``iteration``, ``safety``). Every RM of iteration n trains on the seed pairs plus *all* labelled
  pairs of iterations 1..n.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..annotators import AnnotatorConfig, make_annotator, read_pairs
from ..errors import ConfigError
from ..preferences import AXES, SAFETY_VIEW, preference_by_variant
from ..reward.train import RewardSection
from ..shards import Shard
from .common import file_input, run_step
from .outputs import ANNOTATE, SEED_PAIRS
from .reward import load_rm_pairs
from .shards import merged, shard_inputs, shard_step


def seed_pairs_step(reward: RewardSection, out_dir: str | Path) -> dict:
    """Write the seed pairs of the helpfulness and safety RMs; returns the manifest."""
    frames, inputs = {}, {}
    for name in ("helpful", "safety"):
        frames[name], found = load_rm_pairs(getattr(reward, name))
        inputs |= {f"{name}_{k}": v for k, v in found.items()}

    def body(tmp: Path) -> dict:
        for name, frame in frames.items():
            frame.to_parquet(tmp / SEED_PAIRS[name])
        return {f"n_{name}": len(frame) for name, frame in frames.items()} | {
            f"levels_{name}": {str(k): int(v) for k, v in frame.level.fillna("unknown").value_counts().items()}
            for name, frame in frames.items()}

    config = {"helpful": asdict(reward.helpful), "safety": asdict(reward.safety)}
    return run_step("seed_pairs", out_dir, config, inputs, body,
                    f"{len(frames['helpful'])} helpfulness / {len(frames['safety'])} safety pairs",
                    lambda m: f"{m['n_helpful']} + {m['n_safety']} pairs")


def annotate_step(pairs_path: str | Path, annotator: AnnotatorConfig, out_dir: str | Path,
                  shards: Sequence[str | Path] = ()) -> dict:
    """Label ``pairs_path`` (collect_pairs' output) with ``annotator``; returns the manifest.

    A human annotator blocks here until its labels file exists (``annotator.poll_seconds``,
    ``annotator.timeout_seconds``); the file is validated against the exported pairs. With ``shards``
    (the simulated annotator's :func:`annotate_shard_step` for every shard) the labels are theirs."""
    pairs_path = Path(pairs_path)
    inputs = {"pairs": file_input(pairs_path), **shard_inputs(shards)}
    if annotator.name != "simulated" and annotator.labels_path and Path(annotator.labels_path).exists():
        inputs["labels"] = file_input(annotator.labels_path)

    def body(tmp: Path) -> dict:
        pairs = read_pairs(pairs_path)
        labelled = merged(shards, [ROW]).drop(columns=ROW) if shards else \
            make_annotator(annotator.name, annotator).label(pairs)
        if len(labelled) != len(pairs) and shards:
            raise ValueError(f"annotate: the shards labelled {len(labelled)} of {len(pairs)} pairs")
        labelled.to_parquet(tmp / ANNOTATE["pairs"])
        return {"n_pairs": len(pairs), "n_labelled": len(labelled), "annotator": annotator.name,
                "levels": _counts(labelled.level), "by_variant": preference_by_variant(labelled),
                **_label_ceilings(labelled)}

    def summary(m: dict) -> str:
        ceilings = ", ".join(f"{axis} {100 * m[f'label_ceiling/{axis}']:.1f} %" for axis in AXES
                             if m.get(f"label_ceiling/{axis}") is not None)
        return (f"{m['n_labelled']} labelled pairs, levels {m['levels']}"
                + (f"; the labels' ceiling (the accuracy of the gold order on them): {ceilings}" if ceilings else ""))

    return run_step("annotate", out_dir, {"annotator": asdict(annotator)}, inputs, body,
                    f"{pairs_path} with the {annotator.name} annotator"
                    + (f", merging {len(shards)} shards" if shards else ""), summary)


def _label_ceilings(labelled: pd.DataFrame) -> dict:
    """``label_ceiling/<axis>``: the mean chance that the batch's labels of that axis agree with the gold order
    (the simulated rater's ``p_agree``, ``safety_p_agree``); nothing for people's labels."""
    out = {}
    for axis, column in (("helpfulness", "p_agree"), ("safety", SAFETY_VIEW["p_agree"])):
        if column in labelled.columns and labelled[column].notna().any():
            out[f"label_ceiling/{axis}"] = float(labelled[column].mean())  # NaN (no safety preference) skipped
    return out


ROW = "pair_row"  # a shard's labelled rows keep their pairs' positions, so the merge restores the order


def annotate_shard_step(pairs_path: str | Path, annotator: AnnotatorConfig, shard: Shard,
                        out_dir: str | Path) -> dict:
    """This shard's labels of :func:`annotate_step`: every n-th pair. Only the simulated annotator is
    sharded: it labels each pair on its own (seeded by the pair's id), so a pair's label does not depend on
    the shard; a person's labels file is one file."""
    if annotator.name != "simulated":
        raise ConfigError("annotator.name", f"only the simulated annotator runs in shards, not {annotator.name!r}")
    pairs_path = Path(pairs_path)

    def rows() -> pd.DataFrame:
        pairs = read_pairs(pairs_path)
        positions = shard.take(range(len(pairs)))
        if not positions:
            return pd.DataFrame()
        labelled = make_annotator(annotator.name, annotator).label(pairs.iloc[positions].reset_index(drop=True))
        return labelled.assign(**{ROW: positions})

    return shard_step("annotate", shard, out_dir, {"annotator": asdict(annotator)},
                      {"pairs": file_input(pairs_path)}, rows, f"{pairs_path}, {shard.name}")


def _counts(levels: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in levels.fillna("unknown").value_counts().items()}
