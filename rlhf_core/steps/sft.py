"""The SFT step: conversations + base model -> fine-tuned model directory with ``manifest.json``.

The output directory is itself a ``save_pretrained`` model directory (safetensors), so the next step
loads it with ``model.name_or_path=<out_dir>``. Beside the weights: ``manifest.json`` and
``metrics.jsonl`` (one line per optimizer step). Checkpoints live in a hidden ``.<name>.work`` sibling
while the step runs, so a failed step resumes from them; they are removed when the step succeeds.

With ``launch.num_processes > 1`` the step runs on that many processes (``rlhf.core.launch``): each
trains on its share of every batch, the main one alone evaluates and writes the model directory.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..data import load_conversations
from ..errors import ConfigError
from ..launch import LaunchConfig, is_main_process, keyed_launch, launches
from ..models import ModelConfig, load_model
from ..sft import SFTConfig, mean_target_loss, run_sft
from ..training import checkpoint_step, latest_checkpoint
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
from .outputs import METRICS, SFT, TRAIN_POLICY  # noqa: F401 (re-exported: this runner's contracts)


@dataclass
class DataConfig:
    path: str | None = None  # .jsonl, .jsonl.gz or .parquet of {"messages": [...]}; None = the bundled demo set
    eval_size: int = 0  # conversations held out (seeded) to report loss before/after training
    seed: int = 0  # seed of the held-out split
    on_bad_record: str = "error"  # error: list every bad line and stop | skip: drop each bad line, logged and counted
    # more conversation files trained on with ``path`` (none held out), e.g. Ghost Attention dialogues mixed into
    # the policy's fine-tune (gatt.mix_into=pool); a row's own "loss_mode" (all | last) overrides the step's
    extra: list[str] = field(default_factory=list)


def data_path(cfg: DataConfig) -> Path:
    if cfg.path:
        return Path(cfg.path)
    from ..assets import asset_path

    return asset_path("sft_demo.jsonl")


def _split(rows: list[dict], cfg: DataConfig, path: Path) -> tuple[list[dict], list[dict]]:
    if cfg.eval_size <= 0:
        return rows, []
    if cfg.eval_size >= len(rows):
        raise ConfigError("data.eval_size", f"holds out {cfg.eval_size} of the {len(rows)} conversations in {path}, "
                                            "leaving none to train on: lower it (data.eval_size=0 holds out none) "
                                            "or give more conversations")
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    held = set(order[:cfg.eval_size])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def sft_step(model_cfg: ModelConfig, data_cfg: DataConfig, sft_cfg: SFTConfig, out_dir: str | Path,
             on_metrics: Callable[[dict, int], None] | None = None, launch: LaunchConfig | None = None,
             config_key: str = "sft") -> dict:
    """Run SFT (or reuse a finished output with the same key); returns the output's manifest. ``launch``
    with more than one process runs it on that many (the key then names the number of processes).
    ``config_key`` is the config section errors name (``train_policy`` for the rejection-sampling fine-tune)."""
    out_dir = Path(out_dir)
    path = data_path(data_cfg)
    inputs = {"model": model_input(model_cfg), "data": file_input(path),
              **{f"extra_{i}": file_input(extra) for i, extra in enumerate(data_cfg.extra)}}
    config = {"model": asdict(model_cfg), "data": asdict(data_cfg), "sft": keyed(sft_cfg), **keyed_launch(launch)}
    work = work_dir_for(out_dir)
    if launches(launch):
        return launched_step("sft", out_dir, config, inputs, launch, sft_step,
                             {"model_cfg": model_cfg, "data_cfg": data_cfg, "sft_cfg": sft_cfg, "out_dir": out_dir,
                              "launch": launch, "config_key": config_key}, {config_key: sft_cfg}, on_metrics)

    def body(tmp: Path | None) -> dict:
        main = is_main_process()  # the other ranks of a launched step train their share only
        # 1. Data: validated conversations, optional held-out slice.
        train_rows, eval_rows = _split(load_conversations(path, data_cfg.on_bad_record), data_cfg, path)
        for extra in data_cfg.extra:
            train_rows += load_conversations(extra, data_cfg.on_bad_record)
        # 2. Model, and the held-out loss before training.
        model, tokenizer = load_model(model_cfg)
        resume = latest_checkpoint(work)
        loss_before = mean_target_loss(model, tokenizer, eval_rows, sft_cfg.max_length) if eval_rows and main else None
        log.info("sft: %d conversations (%d held out) from %s%s%s", len(train_rows), len(eval_rows), path.name,
                 "".join(f" + {Path(extra).name}" for extra in data_cfg.extra),
                 f", resuming from {resume.name}" if resume else "")
        # 3. Train (resumes from the work dir's latest checkpoint).
        metrics_log = MetricsLog(work / METRICS, checkpoint_step(resume), on_metrics)
        result, report = run_sft(model, tokenizer, train_rows, sft_cfg, work, metrics_log,
                                 precision=model_cfg.precision, config_key=config_key)
        log.info("sft: data: %s", report.summary())
        if not main:
            return {}
        if result.full_state is not None:  # launch=fsdp: the trained module holds shards; a whole copy is saved
            model, tokenizer = load_model(model_cfg)
            model.load_state_dict(result.full_state)
        loss_after = mean_target_loss(model, tokenizer, eval_rows, sft_cfg.max_length) if eval_rows else None
        # 4. The model directory.
        history = save_model_output(tmp, model, tokenizer, work / METRICS)
        return {
            "steps": result.steps, "resumed_from_step": result.resumed_from,
            "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"],
            "eval_loss_before": loss_before, "eval_loss_after": loss_after,
            "tokens_per_s": sum(h["tokens_per_s"] for h in history) / len(history),
            "n_conversations": report.n_kept, "n_truncated": report.n_truncated,
            "n_dropped_overlong": report.n_dropped_overlong, "n_target_tokens": report.n_target_tokens,
        }

    def summary(m: dict) -> str:
        held_out = (f", held-out loss {m['eval_loss_before']:.3f} -> {m['eval_loss_after']:.3f}"
                    if m["eval_loss_before"] is not None else "")
        return f"{m['steps']} steps, train loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}{held_out}"

    return run_step("sft", out_dir, config, inputs, body, f"{model_cfg.name_or_path} on {path.name}", summary)
