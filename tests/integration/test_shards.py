"""Sharded sampling steps (docs/design.md#fan-out): every shard split of a step, merged, is the unsharded
step's output exactly -- candidates, scores, pool, pairs, labels, answers, win rates -- in fp32 and in bf16
(a unit is a whole engine batch, drawn with its own seed and scored by the RMs as one group)."""

from pathlib import Path

import pandas as pd
import pytest
from model_files import tiny_rms  # beside this file

from rlhf.core.annotators import AnnotatorConfig
from rlhf.core.artifacts import read_manifest
from rlhf.core.evaluation import EvalConfig
from rlhf.core.models import ModelConfig
from rlhf.core.prompt_sets import PromptsConfig
from rlhf.core.rejection import RejectionConfig
from rlhf.core.sampling import SamplingConfig
from rlhf.core.shards import Shard
from rlhf.core.steps.evaluate import evaluate_shard_step, evaluate_step
from rlhf.core.steps.pairs import annotate_shard_step, annotate_step
from rlhf.core.steps.rejection import (
    collect_pairs_shard_step,
    collect_pairs_step,
    rejection_sample_shard_step,
    rejection_sample_step,
    search_temperature_shard_step,
    search_temperature_step,
)

PROMPTS = PromptsConfig(n=7, seed=0)  # 7 prompts in batches of 2: 4 batches, the last one short
SAMPLING = SamplingConfig(max_new_tokens=10, batch_prompts=2)
REJECTION = RejectionConfig(k=3, temperatures=[0.7, 1.2], probe_prompts=5, n_prompts=7)
EVAL = EvalConfig(n_prompts=7, n_bootstrap=50, max_new_tokens=10)


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = ModelConfig("tiny", precision=request.param)
    return root, model, tiny_rms(root / "rms", model)


def _shard_rows(root: Path, name: str, count: int, run) -> list[Path]:
    """``run(shard, out_dir)`` for every shard of ``count``; their rows files."""
    paths = []
    for index in range(count):
        out = root / f"{name}-{count}-{index}"
        run(Shard(index, count), out)
        paths.append(out / "rows.parquet")
    return paths


def _same(whole: Path, merged: Path, files: list[str]) -> None:
    for name in files:
        pd.testing.assert_frame_equal(pd.read_parquet(whole / name), pd.read_parquet(merged / name), check_exact=True)


@pytest.mark.parametrize("count", [2, 3, 5])
def test_rejection_sample_shards_merge_into_the_unsharded_candidates_and_pool(setup, count):
    root, model, rms = setup
    # the pool also re-scores an earlier iteration's candidates, in the merge
    rejection_sample_step(ModelConfig("tiny", precision=model.precision, tiny_seed=3), PROMPTS, SAMPLING, REJECTION,
                          rms, 1, [], root / "earlier")
    history = [root / "earlier" / "candidates.parquet"]
    whole = root / "whole-rs"
    rejection_sample_step(model, PROMPTS, SAMPLING, REJECTION, rms, 2, history, whole)
    shards = _shard_rows(root, "rs", count, lambda shard, out: rejection_sample_shard_step(
        model, PROMPTS, SAMPLING, REJECTION, rms, shard, out))
    sizes = [len(pd.read_parquet(path)) for path in shards]
    assert sum(sizes) == 7 * 3 and (count < 4) == all(sizes)  # 4 batches: a fifth shard has none
    merged = root / f"merged-rs-{count}"
    rejection_sample_step(model, PROMPTS, SAMPLING, REJECTION, rms, 2, history, merged, shards)
    _same(whole, merged, ["candidates.parquet", "pool.parquet"])
    assert (whole / "pool_sft.jsonl").read_bytes() == (merged / "pool_sft.jsonl").read_bytes()
    assert read_manifest(whole)["metrics"]["gain"] == read_manifest(merged)["metrics"]["gain"]


def test_search_collect_annotate_and_evaluate_shards_merge_exactly(setup):
    root, model, rms = setup
    count = 3
    # search_temperature: units are (temperature, batch) pairs
    whole, merged = root / "whole-st", root / "merged-st"
    search_temperature_step(model, PROMPTS, SAMPLING, REJECTION, rms, whole)
    rows = _shard_rows(root, "st", count, lambda shard, out: search_temperature_shard_step(
        model, PROMPTS, SAMPLING, REJECTION, rms, shard, out))
    search_temperature_step(model, PROMPTS, SAMPLING, REJECTION, rms, merged, rows)
    _same(whole, merged, ["samples.parquet"])
    assert read_manifest(whole)["metrics"]["curve"] == read_manifest(merged)["metrics"]["curve"]
    # collect_pairs: units are (answer, batch) pairs
    whole, merged = root / "whole-cp", root / "merged-cp"
    collect_pairs_step(model, PROMPTS, SAMPLING, [0.7, 1.1], 1, whole)
    rows = _shard_rows(root, "cp", count, lambda shard, out: collect_pairs_shard_step(
        model, PROMPTS, SAMPLING, [0.7, 1.1], shard, out))
    collect_pairs_step(model, PROMPTS, SAMPLING, [0.7, 1.1], 1, merged, rows)
    _same(whole, merged, ["pairs.parquet"])
    # annotate (the simulated rater): units are pairs
    pairs = whole / "pairs.parquet"
    simulated = AnnotatorConfig()
    annotate_step(pairs, simulated, root / "whole-an")
    rows = _shard_rows(root, "an", count, lambda shard, out: annotate_shard_step(pairs, simulated, shard, out))
    annotate_step(pairs, simulated, root / "merged-an", rows)
    _same(root / "whole-an", root / "merged-an", ["pairs.parquet"])
    # evaluate: units are (model, batch) pairs; the RM judge scores with the answers
    baselines = {"sft": ModelConfig("tiny", precision=model.precision, tiny_seed=7), "previous": model}
    whole, merged = root / "whole-ev", root / "merged-ev"
    evaluate_step(model, baselines, None, SAMPLING, rms, EVAL, whole)
    rows = _shard_rows(root, "ev", count, lambda shard, out: evaluate_shard_step(
        model, baselines, SAMPLING, rms, EVAL, shard, out))
    evaluate_step(model, baselines, None, SAMPLING, rms, EVAL, merged, rows)
    _same(whole, merged, ["answers.parquet", "judgments.parquet"])
    assert read_manifest(whole)["metrics"]["win_rate"] == read_manifest(merged)["metrics"]["win_rate"]
    assert set(read_manifest(whole)["metrics"]["win_rate"]) >= {"sft/gold", "sft/rm", "previous/rm_safety"}


def test_a_missing_shard_is_an_error_not_a_smaller_output(setup):
    root, model, rms = setup
    out = root / "cp-half"
    collect_pairs_shard_step(model, PROMPTS, SAMPLING, [0.7, 1.1], Shard(0, 2), out)
    with pytest.raises(ValueError, match="no answer for prompts"):
        collect_pairs_step(model, PROMPTS, SAMPLING, [0.7, 1.1], 1, root / "cp-merged-half", [out / "rows.parquet"])
    assert not (root / "cp-merged-half").exists()


def test_shard_numbers_are_checked():
    with pytest.raises(Exception, match="orchestration.shards"):
        Shard(2, 2)
    assert Shard(1, 3).take(list(range(8))) == [1, 4, 7]
