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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..artifacts import stable_hash
from ..errors import ConfigError
from ..launch import LaunchConfig, is_main_process, keyed_launch, launches
from ..models import ModelConfig
from ..preferences import LEVELS, load_pairs, split_pairs
from ..reward.ablation import VARIANTS, ablate_margins
from ..reward.metrics import accuracy_table
from ..reward.model import load_reward_model, reward_model_from_policy, save_reward_model
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


def load_rm_pairs(data_cfg: RMDataConfig, split: str = "train") -> tuple[pd.DataFrame, dict[str, dict]]:
    """The pairs of ``data_cfg`` and their input records ``{name: {"path", "digest"}}`` for the manifest.

    Files are concatenated in order, each read as ``data_cfg.on_bad_record`` says; a file's record also
    says what was read from it (``format``, ``n_read``, ``n_kept``, ``n_skipped_bad``, ``skipped_lines``,
    ``skipped``: the first 100 ``file:line: reason``, ``n_dropped_identical``), and a line per file is
    logged. With no files, ``data_cfg.n_synthetic`` simulated-rater pairs on the rater's ``split`` prompts.
    ``safety_only`` keeps the pairs tagged unsafe.
    """
    if data_cfg.data:
        frames, inputs = [], {}
        for i, path in enumerate(data_cfg.data):
            frame, report = load_pairs(path, data_cfg.on_bad_record, option="reward.<helpful|safety>.on_bad_record")
            frames.append(frame)
            log.info("pairs: %s", report.summary())
            inputs[f"pairs{i}"] = {**file_input(path), "format": report.format, "n_read": report.n_read,
                                   "n_kept": report.n_kept, "n_skipped_bad": report.n_skipped_bad,
                                   "skipped_lines": report.skipped_lines, "skipped": report.skipped[:100],
                                   "n_dropped_identical": report.n_dropped_identical}
        pairs = pd.concat(frames, ignore_index=True)
    else:
        pairs = make_demo_pairs(data_cfg.n_synthetic, data_cfg.seed, split, data_cfg.unsafe_share,
                                data_cfg.lookalike_share)
        inputs = {"pairs": {"path": f"synthetic:{split}", "digest": stable_hash({"split": split, **asdict(data_cfg)})}}
    if data_cfg.safety_only:
        pairs = pairs[pairs["safety"].eq(True)].reset_index(drop=True)  # untagged (None/NaN) is not unsafe
        if pairs.empty:
            raise ConfigError("reward.*.safety_only", "no pair is tagged safety=true in the given data; "
                              "tag the unsafe prompts' pairs or set safety_only=false")
    return pairs, inputs


def _sources(pair_inputs: dict[str, dict]) -> str:
    return ", ".join(Path(item["path"]).name for item in pair_inputs.values())


def _pairs_in_steps(n_train: int, cfg: RewardConfig, start: int, end: int) -> int:
    """Pairs trained on in optimizer steps ``[start, end)`` (an epoch's last batch may be short)."""
    per_epoch = steps_per_epoch(n_train, cfg)
    last_batch = n_train - (per_epoch - 1) * cfg.batch_size
    return sum(last_batch if (step + 1) % per_epoch == 0 else cfg.batch_size for step in range(start, end))


def _split(pairs: pd.DataFrame, cfg: RewardConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` as ``reward.train.n_test`` says (a count or a fraction per batch); a ConfigError
    naming that key if it is neither, if a count exceeds a batch, or if no pair is left to train on."""
    try:
        train, test = split_pairs(pairs, cfg.n_test, seed=cfg.seed)
    except ValueError as err:
        raise ConfigError("reward.train.n_test", str(err)) from err
    if train.empty and not test.empty:
        raise ConfigError("reward.train.n_test", f"{cfg.n_test!r} holds out all {len(test)} pairs as test, none is "
                                                 "left to train on; give a smaller count or a fraction, e.g. 0.1")
    return train, test


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
    """``SB 90.0 / B 70.0 / SlB 61.0 / NB 52.0 (avg 65.3)`` from :func:`reward_metrics` keys after ``prefix``."""
    parts = [f"{SHORT[level]} {_pct(metrics.get(f'{prefix}accuracy/{level}'))}" for level in LEVELS]
    return " / ".join(parts) + f" (avg {_pct(metrics.get(f'{prefix}accuracy'))})"


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _finite(metrics: dict) -> dict:
    """NaN (a level without pairs) as null, so manifest.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _write_eval(out: Path, name: str, metrics: dict, scores: pd.DataFrame) -> dict:
    """``eval.csv`` + ``accuracy_by_level.md`` in ``out``; returns the metrics as ``test/<key>`` (NaN as null)."""
    scores.to_csv(out / rm_eval_outputs(name)["eval"], index=False)
    table = accuracy_table({name: metrics})
    counts = ", ".join(f"{SHORT[level]} {metrics[f'n/{level}']}" for level in LEVELS)
    (out / rm_eval_outputs(name)["accuracy"]).write_text(
        f"# {name}: test accuracy (%) per preference level (Llama 2 Table 8 layout)\n\n"
        f"{markdown_table(table)}\n{metrics['n_test']} test pairs: {counts}, unknown level "
        f"{metrics['n/unknown']}.\n")
    return {f"test/{k}": v for k, v in _finite(metrics).items()}


# --------------------------------------------------------------------------------------------------
# steps


def rm_train_step(model_cfg: ModelConfig, data_cfg: RMDataConfig, rm_cfg: RewardConfig, out_dir: str | Path,
                  on_metrics: Callable[[dict, int], None] | None = None, name: str = "helpful",
                  launch: LaunchConfig | None = None) -> dict:
    """Train the RM ``name`` from ``model_cfg``'s checkpoint (or reuse a finished output with the same
    key); returns the output's manifest. ``launch`` with more than one process trains on that many (the
    key then names the number of processes)."""
    out_dir = Path(out_dir)
    pairs, pair_inputs = load_rm_pairs(data_cfg)
    train_pairs, test_pairs = _split(pairs, rm_cfg)  # §3.2.2: held-out test pairs from every batch
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
            "train_correct_last": history[-1]["correct"], "n_train": len(train_pairs), "n_test": len(test_pairs),
            "pairs_per_s": _pairs_in_steps(len(train_pairs), rm_cfg, result.resumed_from, result.steps) / train_seconds,
            "tokens_per_s": sum(h["tokens_per_s"] for h in history) / len(history),
            "n_prompt_truncated": report.n_prompt_truncated, "n_answer_truncated": report.n_answer_truncated,
        }
        if len(test_pairs):
            test_metrics, scores = evaluate_reward_model(rm, tokenizer, test_pairs, rm_cfg.eval_batch_size,
                                                         model_cfg.precision)
            metrics |= _write_eval(tmp, name, test_metrics, scores)
        return metrics

    def summary(m: dict) -> str:
        return (f"{m['steps']} steps, train loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}, "
                f"test accuracy {_levels_line(m, 'test/') if m['n_test'] else '(no test pairs)'}")

    describe = (f"{name} RM from {model_cfg.name_or_path}, {len(train_pairs)} train / {len(test_pairs)} test pairs "
                f"({_sources(pair_inputs)}), margin {rm_cfg.margin}")
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
        test_metrics, scores = evaluate_reward_model(rm, tokenizer, pairs, batch_size, precision)
        return _write_eval(tmp, rm.info.get("name", rm_dir.name), test_metrics, scores)

    describe = f"{rm_dir} on {len(pairs)} pairs ({_sources(pair_inputs)})"
    return run_step("rm_eval", out_dir, config, inputs, body, describe,
                    lambda m: f"accuracy {_levels_line(m, 'test/')}")


def rm_ablate_step(model_cfg: ModelConfig, data_cfg: RMDataConfig, rm_cfg: RewardConfig, out_dir: str | Path,
                   variants: Sequence[str] = VARIANTS, on_metrics: Callable[[dict, int], None] | None = None) -> dict:
    """Table 28: one RM per margin variant on the same pairs, split and seed; writes ``table28.csv``,
    ``table28.md`` and ``manifest.json`` (every variant's test metrics, keys ``<variant>/accuracy/...``)."""
    out_dir = Path(out_dir)
    pairs, pair_inputs = load_rm_pairs(data_cfg)
    train_pairs, test_pairs = _split(pairs, rm_cfg)
    if test_pairs.empty:
        raise ConfigError("reward.train.n_test", "the ablation compares test accuracy: hold out test pairs "
                                                 "(n_test > 0)")
    inputs = {"model": model_input(model_cfg), **pair_inputs}
    config = {"model": asdict(model_cfg), "data": asdict(data_cfg), "reward": keyed(rm_cfg),
              "variants": list(variants)}

    def body(tmp: Path) -> dict:
        table, results = ablate_margins(model_cfg, train_pairs, test_pairs, rm_cfg,
                                        work_dir_for(out_dir), variants, on_metrics)
        table.to_csv(tmp / RM_ABLATION["table_csv"], float_format="%.2f")
        (tmp / RM_ABLATION["table_md"]).write_text(
            "# Margin ablation (Llama 2 Table 28 layout): test accuracy (%) per preference level\n\n"
            f"{markdown_table(table)}\n{len(train_pairs)} train / {len(test_pairs)} test pairs, same seed and "
            "split for every variant.\n")
        return {f"{variant}/{k}": v for variant, m in results.items() for k, v in _finite(m).items()}

    describe = (f"margins {'/'.join(variants)} from {model_cfg.name_or_path}, {len(train_pairs)} train / "
                f"{len(test_pairs)} test pairs ({_sources(pair_inputs)})")
    return run_step("rm_ablate", out_dir, config, inputs, body, describe,
                    lambda m: "; ".join(f"{v}: {_levels_line(m, f'{v}/')}" for v in variants))
