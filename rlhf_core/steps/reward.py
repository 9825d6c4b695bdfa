"""The reward-model steps: train an RM, evaluate one on held-out pairs, and the margin ablation.

``rm_train_step``'s output directory is itself a reward-model directory (``load_reward_model(out_dir)``;
layout in ``rlhf_core/reward/model.py``) with, beside the weights, ``manifest.json`` (config, inputs,
metrics incl. the test accuracy per level), ``metrics.jsonl`` (one line per optimizer step),
``eval.csv`` (every test pair's scores) and ``accuracy_by_level.md`` (Table 8 layout). As in the SFT
step, checkpoints live in a hidden ``.<name>.work`` sibling while the step runs and a rerun with the
same config and inputs is a cache hit.

Pairs come from files (``RMDataConfig.data``: JSONL/Parquet, the Anthropic HH format too) or, when none
are given, from the simulated rater (``rlhf_core/reward/synthetic.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..artifacts import atomic_dir, digest, sha256_file, stable_hash, write_manifest
from ..errors import ConfigError
from ..models import ModelConfig
from ..preferences import LEVELS, load_pairs, split_pairs
from ..reward.ablation import VARIANTS, ablate_margins
from ..reward.metrics import accuracy_table
from ..reward.model import load_reward_model, reward_model_from_policy, save_reward_model
from ..reward.synthetic import make_demo_pairs
from ..reward.train import RewardConfig, RMDataConfig, evaluate_reward_model, train_reward_model
from ..training import latest_checkpoint, steps_per_epoch
from .common import cached, finish, key_for, log, model_digest, work_dir_for
from .sft import _MetricsLog

SHORT = {"significantly_better": "SB", "better": "B", "slightly_better": "SlB", "negligibly_better": "NB"}


# --------------------------------------------------------------------------------------------------
# inputs


def load_rm_pairs(data_cfg: RMDataConfig, split: str = "train") -> tuple[pd.DataFrame, dict[str, dict]]:
    """The pairs of ``data_cfg`` and their input records ``{name: {"path", "digest"}}`` for the manifest.

    Files are concatenated in order; with none, ``data_cfg.n_synthetic`` simulated-rater pairs on the
    rater's ``split`` prompts. ``safety_only`` keeps the pairs tagged unsafe.
    """
    if data_cfg.data:
        frames, inputs = [], {}
        for i, path in enumerate(data_cfg.data):
            frames.append(load_pairs(path)[0])
            inputs[f"pairs{i}"] = {"path": str(path), "digest": sha256_file(path)}
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


def _key(config: dict, inputs: dict[str, dict]) -> str:
    """The step's cache key. Fault injection (``fail_after_steps``) is left out: it changes when a run
    stops, not what it produces, and a run resuming after an injected crash must find its checkpoints."""
    kept = {name: ({k: v for k, v in section.items() if k != "fail_after_steps"} if isinstance(section, dict)
                   else section) for name, section in config.items()}
    return key_for(kept, {name: item["digest"] for name, item in inputs.items()})


def _work_dir(out_dir: Path, key: str) -> Path:
    """The step's work dir (checkpoints, metrics.jsonl). Checkpoints left by a run with another key are
    discarded: resuming them after a config or data change would train one model under two configs."""
    work = work_dir_for(out_dir)
    stamp = work / "key"
    if work.exists() and (not stamp.is_file() or stamp.read_text() != key):
        log.info("%s: discarding checkpoints of a run with another config or data in %s", out_dir.name, work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return work


def _pairs_in_steps(n_train: int, cfg: RewardConfig, start: int, end: int) -> int:
    """Pairs trained on in optimizer steps ``[start, end)`` (an epoch's last batch may be short)."""
    per_epoch = steps_per_epoch(n_train, cfg)
    last_batch = n_train - (per_epoch - 1) * cfg.batch_size
    return sum(last_batch if (step + 1) % per_epoch == 0 else cfg.batch_size for step in range(start, end))


def _split(pairs: pd.DataFrame, cfg: RewardConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def _levels_line(metrics: dict) -> str:
    """``SB 90.0 / B 70.0 / SlB 61.0 / NB 52.0 (avg 65.3)`` from :func:`reward_metrics`."""
    parts = [f"{SHORT[level]} {_pct(metrics.get(f'accuracy/{level}'))}" for level in LEVELS]
    return " / ".join(parts) + f" (avg {_pct(metrics.get('accuracy'))})"


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _finite(metrics: dict) -> dict:
    """NaN (a level without pairs) as null, so manifest.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _write_eval(out: Path, name: str, metrics: dict, scores: pd.DataFrame) -> dict:
    """``eval.csv`` + ``accuracy_by_level.md`` in ``out``; returns the table as ``{column: %}``."""
    scores.to_csv(out / "eval.csv", index=False)
    table = accuracy_table({name: metrics})
    counts = ", ".join(f"{SHORT[level]} {metrics[f'n/{level}']}" for level in LEVELS)
    (out / "accuracy_by_level.md").write_text(
        f"# {name}: test accuracy (%) per preference level (Llama 2 Table 8 layout)\n\n"
        f"{markdown_table(table)}\n{metrics['n_test']} test pairs: {counts}, unknown level "
        f"{metrics['n/unknown']}.\n")
    return {k: (None if math.isnan(v) else v) for k, v in table.iloc[0].items()}


# --------------------------------------------------------------------------------------------------
# steps


def rm_train_step(model_cfg: ModelConfig, data_cfg: RMDataConfig, rm_cfg: RewardConfig, out_dir: str | Path,
                  on_metrics: Callable[[dict, int], None] | None = None, name: str = "helpful") -> dict:
    """Train the RM ``name`` from ``model_cfg``'s checkpoint (or reuse a finished output with the same
    key); returns the output's manifest."""
    out_dir = Path(out_dir)
    pairs, pair_inputs = load_rm_pairs(data_cfg)
    inputs = {"model": {"path": model_cfg.name_or_path, "digest": model_digest(model_cfg)}, **pair_inputs}
    config = {"name": name, "model": asdict(model_cfg), "data": asdict(data_cfg), "reward": asdict(rm_cfg)}
    key = _key(config, inputs)
    if (manifest := cached(out_dir, key)) is not None:
        log.info("rm-train %s: cached, same config and inputs -> %s", name, out_dir)
        return manifest

    # 1. Data: the held-out test pairs of each iteration batch (§3.2.2: 1,000 per batch).
    started = time.perf_counter()
    train_pairs, test_pairs = _split(pairs, rm_cfg)
    # 2. The RM: the policy's transformer with a fresh scalar head.
    rm, tokenizer = reward_model_from_policy(model_cfg, name=name, seed=rm_cfg.seed, max_length=rm_cfg.max_length)
    work = _work_dir(out_dir, key)
    resume = latest_checkpoint(work)
    log.info("rm-train %s: start: %s, %d train / %d test pairs (%s), margin %s%s -> %s", name,
             model_cfg.name_or_path, len(train_pairs), len(test_pairs), ", ".join(i["path"] for i in pair_inputs.values()),
             rm_cfg.margin, f", resuming from {resume.name}" if resume else "", out_dir)
    # 3. Train (resumes from the work dir's latest checkpoint).
    metrics_log = _MetricsLog(work / "metrics.jsonl", int(resume.name.split("-")[1]) if resume else 0, on_metrics)
    trained = time.perf_counter()
    result, report = train_reward_model(rm, tokenizer, train_pairs, rm_cfg, work, metrics_log,
                                        desc=f"rm {name}", precision=model_cfg.precision)
    train_seconds = time.perf_counter() - trained
    log.info("rm-train %s: data: %s", name, report.summary())
    # 4. Test accuracy per level.
    test_metrics, scores = (evaluate_reward_model(rm, tokenizer, test_pairs, rm_cfg.eval_batch_size,
                                                  model_cfg.precision) if len(test_pairs) else ({}, None))
    # 5. Write the RM directory, its reports and its manifest atomically.
    history = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    first, last = history[0], history[-1]
    pairs_trained = _pairs_in_steps(len(train_pairs), rm_cfg, result.resumed_from, result.steps)
    metrics = {
        "steps": result.steps, "resumed_from_step": result.resumed_from,
        "train_loss_first": first["loss"], "train_loss_last": last["loss"], "train_correct_last": last["correct"],
        "n_train": len(train_pairs), "n_test": len(test_pairs),
        "pairs_per_s": pairs_trained / train_seconds,
        "tokens_per_s": sum(h["tokens_per_s"] for h in history) / len(history),
        "n_prompt_truncated": report.n_prompt_truncated, "n_answer_truncated": report.n_answer_truncated,
        **{f"test/{k}": v for k, v in _finite(test_metrics).items()},
    }
    with atomic_dir(out_dir) as tmp:
        save_reward_model(rm, tokenizer, tmp)
        (tmp / "metrics.jsonl").write_text((work / "metrics.jsonl").read_text())
        table = _write_eval(tmp, name, test_metrics, scores) if scores is not None else None
        metrics["wall_seconds"] = time.perf_counter() - started
        manifest = write_manifest(tmp, "rm_train", key, config, inputs, metrics, accuracy_table=table)
    finish(out_dir)
    log.info("rm-train %s: done in %.0f s: %d steps, train loss %.3f -> %.3f, test accuracy %s -> %s", name,
             metrics["wall_seconds"], result.steps, first["loss"], last["loss"],
             _levels_line(test_metrics) if test_metrics else "(no test pairs)", out_dir)
    return manifest


def rm_eval_step(rm_dir: str | Path, pairs_path: str | Path | None, out_dir: str | Path,
                 batch_size: int = 16, precision: str = "auto", synthetic: RMDataConfig | None = None) -> dict:
    """Test the RM in ``rm_dir`` on ``pairs_path``; writes ``eval.csv``, ``accuracy_by_level.md`` and
    ``manifest.json`` to ``out_dir`` and returns the manifest.

    ``pairs_path`` None: simulated-rater pairs on the rater's held-out *eval* prompt phrasings, made
    as ``synthetic`` says (its ``data`` is ignored; default ``RMDataConfig(n_synthetic=500)``).
    """
    rm_dir, out_dir = Path(rm_dir), Path(out_dir)
    if pairs_path:
        data_cfg = RMDataConfig(data=[str(pairs_path)])
    else:
        data_cfg = replace(synthetic or RMDataConfig(n_synthetic=500), data=None)
    pairs, pair_inputs = load_rm_pairs(data_cfg, split="eval")
    inputs = {"reward_model": {"path": str(rm_dir), "digest": digest(rm_dir)}, **pair_inputs}
    config = {"data": asdict(data_cfg), "batch_size": batch_size, "precision": precision}
    key = _key(config, inputs)
    if (manifest := cached(out_dir, key)) is not None:
        log.info("rm-eval: cached, same RM and pairs -> %s", out_dir)
        return manifest

    started = time.perf_counter()
    rm, tokenizer = load_reward_model(rm_dir)
    name = rm.info.get("name", rm_dir.name)
    log.info("rm-eval %s: start: %d pairs (%s) -> %s", name, len(pairs),
             ", ".join(i["path"] for i in pair_inputs.values()), out_dir)
    test_metrics, scores = evaluate_reward_model(rm, tokenizer, pairs, batch_size, precision)
    metrics = {f"test/{k}": v for k, v in _finite(test_metrics).items()}
    with atomic_dir(out_dir) as tmp:
        table = _write_eval(tmp, name, test_metrics, scores)
        metrics["wall_seconds"] = time.perf_counter() - started
        manifest = write_manifest(tmp, "rm_eval", key, config, inputs, metrics, accuracy_table=table)
    log.info("rm-eval %s: done in %.0f s: accuracy %s -> %s", name, metrics["wall_seconds"],
             _levels_line(test_metrics), out_dir)
    return manifest


def rm_ablate_step(model_cfg: ModelConfig, data_cfg: RMDataConfig, rm_cfg: RewardConfig, out_dir: str | Path,
                   variants: Sequence[str] = VARIANTS, on_metrics: Callable[[dict, int], None] | None = None) -> dict:
    """Table 28: one RM per margin variant on the same pairs, split and seed; writes ``table28.csv``,
    ``table28.md`` and ``manifest.json`` (every variant's test metrics) to ``out_dir``."""
    out_dir = Path(out_dir)
    pairs, pair_inputs = load_rm_pairs(data_cfg)
    inputs = {"model": {"path": model_cfg.name_or_path, "digest": model_digest(model_cfg)}, **pair_inputs}
    config = {"model": asdict(model_cfg), "data": asdict(data_cfg), "reward": asdict(rm_cfg), "variants": list(variants)}
    key = _key(config, inputs)
    if (manifest := cached(out_dir, key)) is not None:
        log.info("rm-ablate: cached, same config and inputs -> %s", out_dir)
        return manifest

    started = time.perf_counter()
    train_pairs, test_pairs = _split(pairs, rm_cfg)
    if test_pairs.empty:
        raise ConfigError("reward.train.n_test", "the ablation compares test accuracy: hold out test pairs (n_test > 0)")
    log.info("rm-ablate: start: margins %s on %s, %d train / %d test pairs -> %s", "/".join(variants),
             model_cfg.name_or_path, len(train_pairs), len(test_pairs), out_dir)
    table, results = ablate_margins(model_cfg, train_pairs, test_pairs, rm_cfg, _work_dir(out_dir, key), variants,
                                    on_metrics)
    metrics = {f"{variant}/{k}": v for variant, m in results.items() for k, v in _finite(m).items()}
    with atomic_dir(out_dir) as tmp:
        table.to_csv(tmp / "table28.csv", float_format="%.2f")
        (tmp / "table28.md").write_text(
            "# Margin ablation (Llama 2 Table 28 layout): test accuracy (%) per preference level\n\n"
            f"{markdown_table(table)}\n{len(train_pairs)} train / {len(test_pairs)} test pairs, same seed and split "
            "for every variant.\n")
        metrics["wall_seconds"] = time.perf_counter() - started
        manifest = write_manifest(tmp, "rm_ablate", key, config, inputs, metrics,
                                  table28={v: _finite(row.to_dict()) for v, row in table.iterrows()})
    finish(out_dir)
    log.info("rm-ablate: done in %.0f s: %s -> %s", metrics["wall_seconds"],
             "; ".join(f"{v}: {_levels_line(results[v])}" for v in results), out_dir)
    return manifest
