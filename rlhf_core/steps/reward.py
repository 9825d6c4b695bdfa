"""The reward-model steps: train an RM, evaluate one on held-out pairs, and the margin ablation.

``rm_train_step``'s output directory is itself a reward-model directory (``load_reward_model(out_dir)``;
layout in ``rlhf_core/reward/model.py``) with, beside the weights, ``manifest.json`` (config, inputs,
metrics incl. the test accuracy per level as ``test/accuracy/<level>``), ``metrics.jsonl`` (one line per
optimizer step), ``eval.csv`` (every test pair's scores) and ``accuracy_by_level.md`` (Table 8 layout).
Every step goes through ``run_step`` (cache key, start/end log lines, atomic output, manifest); as in the
SFT step, checkpoints live in a hidden ``.<name>.work`` sibling while the step runs, and are discarded
rather than resumed when the config or inputs changed.

``rm_train_step`` with ``launch.num_processes > 1`` trains on that many processes (``rlhf.core.launch``);
the main one alone evaluates and writes the RM directory.

Pairs come from files (``RMDataConfig.data``: JSONL/Parquet, the Anthropic HH format too) or, when none
are given, from the simulated rater (``rlhf_core/reward/synthetic.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..artifacts import stable_hash
from ..errors import ConfigError
from ..launch import LaunchConfig, is_main_process, keyed_launch, launches
from ..models import ModelConfig
from ..preferences import AXES, LEVELS, axis_pairs, has_two_axes, load_pairs, split_pairs
from ..reward.ablation import VARIANTS, ablate_margins
from ..reward.metrics import accuracy_table
from ..reward.model import load_reward_model, reward_model_from_policy, save_reward_model
from ..reward.synthetic import SOURCE as SYNTHETIC
from ..reward.synthetic import make_demo_pairs
from ..reward.train import RewardConfig, RMDataConfig, evaluate_reward_model, train_reward_model
from ..training import checkpoint_step, latest_checkpoint, steps_per_epoch
from .common import (
    MetricsLog,
    file_input,
    keyed,
    launched_step,
    log,
    model_input,
    run_step,
    save_model_output,
    work_dir_for,
)
from .outputs import METRICS, RM_ABLATION, rm_eval_outputs, rm_names, rm_outputs  # noqa: F401 (re-exported: the RM steps' contracts)

SHORT = {"significantly_better": "SB", "better": "B", "slightly_better": "SlB", "negligibly_better": "NB"}


# --------------------------------------------------------------------------------------------------
# inputs


def _load_files(data_cfg: RMDataConfig, split: str = "train") -> tuple[list[pd.DataFrame], dict[str, dict]]:
    """One frame per pair file of ``data_cfg`` (or one of synthetic pairs), and their input records."""
    if not data_cfg.data:
        pairs = make_demo_pairs(data_cfg.n_synthetic, data_cfg.seed, split, data_cfg.unsafe_share,
                                data_cfg.lookalike_share, axis=data_cfg.axis)
        return [pairs], {"pairs": {"path": f"synthetic:{split}",
                                   "digest": stable_hash({"split": split, **asdict(data_cfg)})}}
    frames, inputs = [], {}
    for i, path in enumerate(data_cfg.data):
        frame, report = load_pairs(path, data_cfg.on_bad_record, option="reward.<helpful|safety>.on_bad_record")
        frames.append(frame)
        log.info("pairs: %s", report.summary())
        inputs[f"pairs{i}"] = {**file_input(path), "format": report.format, "n_read": report.n_read,
                               "n_kept": report.n_kept, "n_skipped_bad": report.n_skipped_bad,
                               "skipped_lines": report.skipped_lines, "skipped": report.skipped[:100],
                               "n_dropped_identical": report.n_dropped_identical}
    return frames, inputs


def _safety_only(pairs: pd.DataFrame, data_cfg: RMDataConfig) -> pd.DataFrame:
    if not data_cfg.safety_only:
        return pairs
    pairs = pairs[pairs["safety"].eq(True)]  # untagged (None/NaN) is not unsafe
    if pairs.empty:
        raise ConfigError("reward.*.safety_only", "no pair is tagged safety=true in the given data; "
                          "tag the unsafe prompts' pairs or set safety_only=false")
    return pairs


def load_rm_pairs(data_cfg: RMDataConfig, split: str = "train") -> tuple[pd.DataFrame, dict[str, dict]]:
    """The pairs of ``data_cfg`` and their input records ``{name: {"path", "digest"}}`` for the manifest.

    Files are concatenated in order, each read as ``data_cfg.on_bad_record`` says; a file's record also
    says what was read from it (``format``, ``n_read``, ``n_kept``, ``n_skipped_bad``, ``skipped_lines``,
    ``skipped``: the first 100 ``file:line: reason``, ``n_dropped_identical``), and a line per file is
    logged. With no files, ``data_cfg.n_synthetic`` simulated-rater pairs on the rater's ``split`` prompts.
    ``safety_only`` keeps the pairs tagged unsafe. Two-axis labelled files are read as they are (their
    helpfulness preference): :func:`rm_pairs` splits them into the RM's axes.
    """
    frames, inputs = _load_files(data_cfg, split)
    return _safety_only(pd.concat(frames, ignore_index=True), data_cfg).reset_index(drop=True), inputs


@dataclass
class RMPairs:
    """One RM's training and held-out pairs (:func:`rm_pairs`)."""

    train: pd.DataFrame
    test: pd.DataFrame  # held-out pairs of the RM's axis people (or the simulated rater) labelled
    test_synthetic: pd.DataFrame  # held-out synthetic seed pairs (source "synthetic"), reported apart
    inputs: dict[str, dict]  # the input records of the manifest
    counts: dict[str, int]  # what the mix took: n_train_own_axis, n_train_other_axis, n_dropped_contradicting

    @property
    def held_out(self) -> pd.DataFrame:
        """The labelled test pairs, or the synthetic ones when there are none (a synthetic-only run)."""
        return self.test if len(self.test) else self.test_synthetic


def rm_pairs(data_cfg: RMDataConfig, rm_cfg: RewardConfig) -> RMPairs:
    """The pairs an RM trains and is tested on, per batch and per annotation axis.

    Each file is one batch and keeps its held-out test pairs (``reward.train.n_test``, chosen per pair, so a
    pair is held out on both axes or on neither). A two-axis labelled file gives the RM its own axis's pairs
    (``data_cfg.axis``) plus, as ``data_cfg.mix`` says, a seeded uniform sample of the other axis's *training*
    pairs making that share of its labelled training pairs (all of them when there are fewer). A single-axis
    file (seed pairs, HH data) gives its pairs as they are. Held-out pairs are the RM's own axis only; those
    with source ``synthetic`` are kept apart (``test_synthetic``).
    """
    frames, inputs = _load_files(data_cfg)
    other_axis = next(a for a in AXES if a != data_cfg.axis)
    train, test, own, other = [], [], [], []
    dropped = 0
    for frame in frames:
        frame = _safety_only(frame, data_cfg)
        train_rows, test_rows = _split(frame, rm_cfg)
        if not has_two_axes(frame):
            train.append(train_rows)
            test.append(test_rows)
            continue
        mine, n_mine = axis_pairs(frame, data_cfg.axis)
        theirs, _ = axis_pairs(frame, other_axis)
        dropped += n_mine
        own.append(mine[mine.index.isin(train_rows.index)])
        test.append(mine[mine.index.isin(test_rows.index)])
        other.append(theirs[theirs.index.isin(train_rows.index)])
    own_train = pd.concat(own, ignore_index=True) if own else pd.DataFrame()
    other_train = pd.concat(other, ignore_index=True) if other else pd.DataFrame()
    n_other = min(len(other_train), round(data_cfg.mix / (1 - data_cfg.mix) * len(own_train)))
    mixed_in = np.sort(np.random.default_rng([rm_cfg.seed, 1]).permutation(len(other_train))[:n_other])
    train += [own_train, other_train.iloc[mixed_in]]
    test_all = pd.concat(test, ignore_index=True)
    synthetic = test_all["source"].eq(SYNTHETIC)
    train_all = pd.concat([t for t in train if len(t)], ignore_index=True)
    if train_all.empty:
        raise ConfigError("reward.train.n_test", "no pair is left to train on: hold out fewer test pairs (a smaller "
                                                 "count, or a fraction such as 0.1)")
    return RMPairs(train_all, test_all[~synthetic].reset_index(drop=True),
                   test_all[synthetic].reset_index(drop=True), inputs,
                   {"n_train_own_axis": len(own_train), "n_train_other_axis": n_other,
                    "n_dropped_contradicting": dropped})


def _sources(pair_inputs: dict[str, dict]) -> str:
    return ", ".join(Path(item["path"]).name for item in pair_inputs.values())


def _pairs_in_steps(n_train: int, cfg: RewardConfig, start: int, end: int) -> int:
    """Pairs trained on in optimizer steps ``[start, end)`` (an epoch's last batch may be short)."""
    per_epoch = steps_per_epoch(n_train, cfg)
    last_batch = n_train - (per_epoch - 1) * cfg.batch_size
    return sum(last_batch if (step + 1) % per_epoch == 0 else cfg.batch_size for step in range(start, end))


def _split(pairs: pd.DataFrame, cfg: RewardConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` as ``reward.train.n_test`` says (a count or a fraction per batch); a ConfigError
    naming that key if it is neither or if a count exceeds a batch."""
    try:
        return split_pairs(pairs, cfg.n_test, seed=cfg.seed)
    except ValueError as err:
        raise ConfigError("reward.train.n_test", str(err)) from err


# --------------------------------------------------------------------------------------------------
# reports


def markdown_table(table: pd.DataFrame, digits: int = 1) -> str:
    """A pipe table of ``table`` (index as the first column), numbers rounded; NaN shown as ``-``."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(name), *map(cell, row)]) + " |" for name, row in zip(table.index, table.values)]
    return "\n".join(lines) + "\n"


def _levels_line(metrics: dict, prefix: str = "") -> str:
    """``SB 90.0 / B 70.0 / SlB 61.0 / NB 52.0 (avg 65.3)`` from :func:`reward_metrics` keys after ``prefix``,
    then the labels' ceiling and the gold agreement where the pairs have gold scores (:func:`gold_metrics`)."""
    parts = [f"{SHORT[level]} {_pct(metrics.get(f'{prefix}accuracy/{level}'))}" for level in LEVELS]
    line = " / ".join(parts) + f" (avg {_pct(metrics.get(f'{prefix}accuracy'))})"
    if metrics.get(f"{prefix}label_ceiling") is not None:
        line += (f", labels' ceiling {_pct(metrics[f'{prefix}label_ceiling'])}, "
                 f"gold agreement {_pct(metrics.get(f'{prefix}gold_agreement'))}")
    return line


def _gold_sentence(metrics: dict) -> str:
    """What :func:`gold_metrics` says, in words (for metrics that have its keys)."""
    return (f"Against the simulated rater's gold judge: the labels' ceiling is {_pct(metrics['label_ceiling'])} % "
            f"(the accuracy on these labels of an RM that orders every pair as the gold judge does, over "
            f"{metrics['n_gold']} pairs), and this RM orders {_pct(metrics['gold_agreement'])} % of the "
            f"{metrics['n_gold_ordered']} pairs with a gold order as the gold judge does.\n")


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _finite(metrics: dict) -> dict:
    """NaN (a level without pairs) as null, so manifest.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


HELD_OUT = {"test": "held-out labelled pairs", "test_synthetic": "held-out synthetic (simulated-rater seed) pairs"}


def _write_eval(out: Path, name: str, results: dict[str, tuple[dict, pd.DataFrame]]) -> dict:
    """``eval.csv`` (every test pair's scores, ``test_set`` naming its set) + ``accuracy_by_level.md`` (one
    Table 8 per set, with 95 % intervals) in ``out``, for ``results`` ``{prefix: (metrics, scores)}``, prefix
    one of :data:`HELD_OUT`; returns the metrics as ``<prefix>/<key>`` (NaN as null)."""
    frames, text, flat = [], [f"# {name}: test accuracy (%) per preference level (Llama 2 Table 8 layout)\n"], {}
    for prefix, (metrics, scores) in results.items():
        frames.append(scores.assign(test_set=prefix))
        counts = ", ".join(f"{SHORT[level]} {metrics[f'n/{level}']}" for level in LEVELS)
        intervals = ", ".join(f"{SHORT[level]} [{_pct(metrics[f'ci95_lo/{level}'])}, "
                              f"{_pct(metrics[f'ci95_hi/{level}'])}]" for level in LEVELS)
        text += [f"## {HELD_OUT[prefix]}\n", markdown_table(accuracy_table({name: metrics})),
                 f"{metrics['n_test']} test pairs: {counts}, unknown level {metrics['n/unknown']}. 95 % intervals: "
                 f"avg [{_pct(metrics['ci95_lo'])}, {_pct(metrics['ci95_hi'])}], {intervals}.\n"]
        text += [_gold_sentence(metrics)] if metrics.get("label_ceiling") is not None else []
        flat |= {f"{prefix}/{k}": v for k, v in _finite(metrics).items()}
    pd.concat(frames, ignore_index=True).to_csv(out / rm_eval_outputs(name)["eval"], index=False)
    (out / rm_eval_outputs(name)["accuracy"]).write_text("\n".join(text))
    return flat


def _evaluate_sets(rm, tokenizer, sets: dict[str, pd.DataFrame], cfg: RewardConfig,
                   precision: str) -> dict[str, tuple[dict, pd.DataFrame]]:
    """:func:`evaluate_reward_model` on each non-empty set of ``{prefix: pairs}``."""
    return {prefix: evaluate_reward_model(rm, tokenizer, pairs, cfg.eval_batch_size, precision, cfg.pack_pairs)
            for prefix, pairs in sets.items() if len(pairs)}


# --------------------------------------------------------------------------------------------------
# steps


def rm_train_step(model_cfg: ModelConfig, data_cfg: RMDataConfig, rm_cfg: RewardConfig, out_dir: str | Path,
                  on_metrics: Callable[[dict, int], None] | None = None, name: str = "helpful",
                  launch: LaunchConfig | None = None) -> dict:
    """Train the RM ``name`` from ``model_cfg``'s checkpoint (or reuse a finished output with the same
    key); returns the output's manifest. ``launch`` with more than one process trains on that many (the
    key then names the number of processes)."""
    out_dir = Path(out_dir)
    data = rm_pairs(data_cfg, rm_cfg)  # §3.2.2: held-out test pairs from every batch
    train_pairs, pair_inputs = data.train, data.inputs
    inputs = {"model": model_input(model_cfg), **pair_inputs}
    config = {"name": name, "model": asdict(model_cfg), "data": asdict(data_cfg), "reward": keyed(rm_cfg),
              **keyed_launch(launch)}
    if launches(launch):
        return launched_step("rm_train", out_dir, config, inputs, launch, rm_train_step,
                             {"model_cfg": model_cfg, "data_cfg": data_cfg, "rm_cfg": rm_cfg, "out_dir": out_dir,
                              "name": name, "launch": launch}, {"reward.train": rm_cfg}, on_metrics)

    def body(tmp: Path | None) -> dict:
        # 1. The RM: the policy's transformer with a fresh scalar head.
        rm, tokenizer = reward_model_from_policy(model_cfg, name=name, seed=rm_cfg.seed, max_length=rm_cfg.max_length)
        # 2. Train (resumes from the work dir's latest checkpoint).
        work = work_dir_for(out_dir)  # prepared for this key by run_step
        resume = latest_checkpoint(work)
        if resume:
            log.info("rm_train %s: resuming from %s", name, resume)
        metrics_log = MetricsLog(work / METRICS, checkpoint_step(resume), on_metrics)
        started = time.perf_counter()
        result, report = train_reward_model(rm, tokenizer, train_pairs, rm_cfg, work, metrics_log,
                                            desc=f"rm {name}", precision=model_cfg.precision)
        train_seconds = time.perf_counter() - started
        log.info("rm_train %s: data: %s", name, report.summary())
        if not is_main_process():  # the other ranks of a launched step train their share only
            return {}
        if result.full_state is not None:  # launch=fsdp: the trained module holds shards; a whole copy is saved
            whole, tokenizer = reward_model_from_policy(model_cfg, name=name, seed=rm_cfg.seed,
                                                        max_length=rm_cfg.max_length)
            whole.load_state_dict(result.full_state)
            whole.info = rm.info
            rm = whole
        # 3. The RM directory, its per-step metrics and its test accuracy per level.
        history = save_model_output(tmp, rm, tokenizer, work / METRICS, save=save_reward_model)
        metrics = {
            "steps": result.steps, "resumed_from_step": result.resumed_from,
            "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"],
            "train_correct_last": history[-1]["correct"], "n_train": len(train_pairs), "n_test": len(data.test),
            "n_test_synthetic": len(data.test_synthetic), "axis": data_cfg.axis, **data.counts,
            "pairs_per_s": _pairs_in_steps(len(train_pairs), rm_cfg, result.resumed_from, result.steps) / train_seconds,
            "tokens_per_s": sum(h["tokens_per_s"] for h in history) / len(history),
            "n_prompt_truncated": report.n_prompt_truncated, "n_answer_truncated": report.n_answer_truncated,
        }
        results = _evaluate_sets(rm, tokenizer, {"test": data.test, "test_synthetic": data.test_synthetic},
                                 rm_cfg, model_cfg.precision)
        if results:
            metrics |= _write_eval(tmp, name, results)
        return metrics

    def summary(m: dict) -> str:
        tested = [f"{HELD_OUT[p]} {_levels_line(m, f'{p}/')}" for p in HELD_OUT if f"{p}/accuracy" in m]
        return (f"{m['steps']} steps, train loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}, "
                f"test accuracy: {'; '.join(tested) or '(no test pairs)'}")

    describe = (f"{name} RM ({data_cfg.axis} axis) from {model_cfg.name_or_path}, {len(train_pairs)} train "
                f"({data.counts['n_train_other_axis']} from the other axis) / {len(data.test)} labelled + "
                f"{len(data.test_synthetic)} synthetic test pairs ({_sources(pair_inputs)}), margin {rm_cfg.margin}")
    return run_step("rm_train", out_dir, config, inputs, body, describe, summary)


def rm_eval_step(rm_dir: str | Path, pairs_path: str | Path | None, out_dir: str | Path,
                 batch_size: int = 16, precision: str = "auto", synthetic: RMDataConfig | None = None) -> dict:
    """Test the RM in ``rm_dir`` on ``pairs_path``; writes ``eval.csv``, ``accuracy_by_level.md`` and
    ``manifest.json`` to ``out_dir`` and returns the manifest.

    ``pairs_path`` None: simulated-rater pairs on the rater's held-out *eval* prompt phrasings, made
    as ``synthetic`` says (its ``data`` is ignored; default ``RMDataConfig(n_synthetic=500)``).
    """
    rm_dir = Path(rm_dir)
    data_cfg = (RMDataConfig(data=[str(pairs_path)]) if pairs_path
                else replace(synthetic or RMDataConfig(n_synthetic=500), data=None))
    pairs, pair_inputs = load_rm_pairs(data_cfg, split="eval")
    inputs = {"reward_model": file_input(rm_dir), **pair_inputs}
    config = {"data": asdict(data_cfg), "batch_size": batch_size, "precision": precision}

    def body(tmp: Path) -> dict:
        rm, tokenizer = load_reward_model(rm_dir)
        results = {("test" if data_cfg.data else "test_synthetic"): evaluate_reward_model(rm, tokenizer, pairs,
                                                                                          batch_size, precision)}
        return _write_eval(tmp, rm.info.get("name", rm_dir.name), results)

    describe = f"{rm_dir} on {len(pairs)} pairs ({_sources(pair_inputs)})"
    prefix = "test" if data_cfg.data else "test_synthetic"
    return run_step("rm_eval", out_dir, config, inputs, body, describe,
                    lambda m: f"accuracy {_levels_line(m, f'{prefix}/')}")


def rm_ablate_step(model_cfg: ModelConfig, data_cfg: RMDataConfig, rm_cfg: RewardConfig, out_dir: str | Path,
                   variants: Sequence[str] = VARIANTS, on_metrics: Callable[[dict, int], None] | None = None) -> dict:
    """Table 28: one RM per margin variant on the same pairs, split and seed; writes ``table28.csv``,
    ``table28.md`` and ``manifest.json`` (every variant's test metrics, keys ``<variant>/accuracy/...``)."""
    out_dir = Path(out_dir)
    data = rm_pairs(data_cfg, rm_cfg)
    train_pairs, test_pairs, pair_inputs = data.train, data.held_out, data.inputs
    if test_pairs.empty:
        raise ConfigError("reward.train.n_test", "the ablation compares test accuracy: hold out test pairs "
                                                 "(n_test > 0)")
    inputs = {"model": model_input(model_cfg), **pair_inputs}
    config = {"model": asdict(model_cfg), "data": asdict(data_cfg), "reward": keyed(rm_cfg),
              "variants": list(variants)}

    held_out = HELD_OUT["test" if len(data.test) else "test_synthetic"]

    def body(tmp: Path) -> dict:
        table, results = ablate_margins(model_cfg, train_pairs, test_pairs, rm_cfg,
                                        work_dir_for(out_dir), variants, on_metrics)
        table.to_csv(tmp / RM_ABLATION["table_csv"], float_format="%.2f")
        (tmp / RM_ABLATION["table_md"]).write_text(
            "# Margin ablation (Llama 2 Table 28 layout): test accuracy (%) per preference level\n\n"
            f"{markdown_table(table)}\n{len(train_pairs)} train / {len(test_pairs)} test pairs ({held_out}), same "
            "seed and split for every variant.\n")
        return {"n_train": len(train_pairs), "n_test": len(test_pairs), "test_set": held_out} | {
            f"{variant}/{k}": v for variant, m in results.items() for k, v in _finite(m).items()}

    describe = (f"margins {'/'.join(variants)} from {model_cfg.name_or_path}, {len(train_pairs)} train / "
                f"{len(test_pairs)} test pairs ({_sources(pair_inputs)})")
    return run_step("rm_ablate", out_dir, config, inputs, body, describe,
                    lambda m: "; ".join(f"{v}: {_levels_line(m, f'{v}/')}" for v in variants))
