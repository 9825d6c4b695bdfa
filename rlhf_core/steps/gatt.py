"""The Ghost Attention step: a policy -> GAtt dialogues -> the policy fine-tuned on them, with adherence
per turn measured before and after (``rlhf_core/gatt.py`` has the method).

Three phases, each kept in the step's work dir (``.<name>.work``) so a failed run resumes where it was:
``data/`` (the synthesised dialogues and the SFT rows), ``before.json`` (the input policy's adherence)
and ``sft/`` (the fine-tune's checkpoints). The output directory is a model directory plus
``dialogues.parquet``, ``gatt_sft.jsonl``, ``judgments.parquet`` (every evaluated answer, before and
after), ``adherence.csv`` (Table 30's numbers) and ``manifest.json`` whose metrics hold
``adherence_by_turn`` ``{"before": {turn: share}, "after": {...}}``, ``zero_shot`` (mean over turns,
held-out constraints) with its per-turn curve, and ``n_dialogues`` / ``n_examples``.

The ``rlhf gatt data|train|eval`` commands run the phases one at a time (:func:`build_data`,
:func:`train_on`, :func:`evaluate_adherence`).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..artifacts import atomic_file, read_jsonl, write_json, write_jsonl
from ..gatt import GAttConfig, adherence, draw_instructions, synthesize, training_examples, user_messages
from ..launch import LaunchConfig, check_unsharded, keyed_launch, launches
from ..models import ModelConfig, load_model
from ..prompt_sets import PromptsConfig, load_prompt_set
from ..sampling import SamplingConfig, TransformersBackend
from ..sft import SFTConfig, run_sft
from ..training import checkpoint_step, latest_checkpoint
from .common import (
    MetricsLog,
    file_input,
    key_for,
    launched_step,
    log,
    model_input,
    prepare_work_dir,
    run_step,
    save_model_output,
    work_dir_for,
)
from .outputs import GATT, GATT_ADHERENCE, GATT_DATA, GATT_DIALOGUES, GATT_EVAL, GATT_TRAIN, METRICS  # noqa: F401 (re-exported: GATT_TRAIN, GATT_EVAL)


def _users(cfg: GAttConfig, split: str, n_dialogues: int, turns: int, offset: int) -> list[list[str]]:
    """User messages from the simulated rater's prompt sets: safe prompts only (an unsafe request wants
    a refusal, which no persona instruction should override)."""
    prompts = load_prompt_set(PromptsConfig(n=n_dialogues * turns, offset=cfg.prompt_offset + offset, split=split,
                                            seed=cfg.seed, unsafe_share=0.0, lookalike_share=0.0))
    return user_messages(prompts, n_dialogues, turns)


def build_data(backend, cfg: GAttConfig, sampling: SamplingConfig, out: Path) -> pd.DataFrame:
    """Synthesise the training dialogues into ``out`` (``dialogues.parquet``, ``gatt_sft.jsonl``). The rows
    file is written last: once it is there, both are complete."""
    users = _users(cfg, "train", cfg.n_dialogues, cfg.turns, 0)
    dialogues = synthesize(backend, users, draw_instructions(cfg.n_dialogues, False, cfg, cfg.seed), cfg, sampling)
    with atomic_file(out / GATT_DATA["dialogues"]) as tmp:
        dialogues.to_parquet(tmp)
    write_jsonl(out / GATT_DATA["rows"], training_examples(dialogues, cfg.examples))
    return dialogues


def evaluate_adherence(backend, cfg: GAttConfig, sampling: SamplingConfig) -> tuple[dict, pd.DataFrame]:
    """Adherence per turn on held-out dialogues: training constraints (``seen``) and held-out ones
    (``zero_shot``); returns ``({"seen": {turn: share}, "zero_shot": {...}}, judgments)``."""
    scfg = replace(sampling, temperature=cfg.eval_temperature, seed=cfg.seed,
                   max_new_tokens=cfg.max_new_tokens or sampling.max_new_tokens)
    sets = {"seen": (cfg.eval_dialogues, False, 1), "zero_shot": (cfg.eval_zero_shot, True, 2)}
    curves, frames, offset = {}, [], 0
    for name, (n, held_out, salt) in sets.items():
        if n <= 0:
            continue
        users = _users(cfg, "eval", n, cfg.eval_turns, offset)
        offset += n * cfg.eval_turns
        curves[name], judged = adherence(backend, users, draw_instructions(n, held_out, cfg, cfg.seed + salt),
                                         cfg.eval_turns, scfg, desc=f"adherence {name}")
        frames.append(judged.assign(set=name))
    return curves, pd.concat(frames, ignore_index=True)


def train_on(model, tokenizer, rows: list[dict], train_cfg: SFTConfig, work: Path, on_metrics=None,
             precision: str = "auto"):
    """SFT on GAtt rows: only the last answer of each is a target (``loss_mode="last"``)."""
    return run_sft(model, tokenizer, rows, replace(train_cfg, loss_mode="last"), work, on_metrics, desc="gatt",
                   precision=precision, config_key="gatt.train")


def _summary_metrics(before: dict, after: dict, dialogues: pd.DataFrame, n_examples: int) -> dict:
    def mean(curve):
        return float(np.mean(list(curve.values()))) if curve else None

    def keyed(curve):  # turns as strings, as they read back from manifest.json
        return {str(t): v for t, v in curve.items()} if curve is not None else None

    kept = dialogues.answers.map(len)
    return {"adherence_by_turn": {"before": keyed(before["seen"]), "after": keyed(after["seen"])},
            "zero_shot": {"before": mean(before.get("zero_shot")), "after": mean(after.get("zero_shot"))},
            "zero_shot_by_turn": {"before": keyed(before.get("zero_shot")), "after": keyed(after.get("zero_shot"))},
            "adherence_mean": {"before": mean(before["seen"]), "after": mean(after["seen"])},
            "n_dialogues": int((kept > 0).sum()), "n_dialogues_drawn": len(dialogues), "n_examples": n_examples,
            "kept_turn_share": float(kept.sum() / (len(dialogues) * max(len(dialogues.users.iloc[0]), 1)))}


def _write_adherence(tmp: Path, contract, before: dict, after: dict, judged_before: pd.DataFrame,
                     judged_after: pd.DataFrame) -> None:
    """Every judged answer (``judgments``) and Table 30's numbers (``adherence``), before and after."""
    pd.concat([judged_before.assign(model="before"), judged_after.assign(model="after")],
              ignore_index=True).to_parquet(tmp / contract["judgments"])
    pd.DataFrame([{"model": m, "set": s, "turn": t, "adherence": v}
                  for m, curves in (("before", before), ("after", after)) for s, curve in curves.items()
                  for t, v in curve.items()]).to_csv(tmp / contract["adherence"], index=False)


def _prepared(work: Path, backend: Callable[[], TransformersBackend], cfg: GAttConfig,
              sampling: SamplingConfig) -> tuple[pd.DataFrame, list[dict], dict, pd.DataFrame]:
    """Phases 1 and 2, each read back from the work dir when a run before did it: the dialogues, the SFT
    rows, and the input policy's adherence (curves and judged answers). ``backend()`` makes the sampling
    engine, only when a phase has to run."""
    data = work / "data"
    if (data / GATT_DATA["rows"]).is_file():
        dialogues = pd.read_parquet(data / GATT_DATA["dialogues"])
    else:
        dialogues = build_data(backend(), cfg, sampling, data)
    rows = read_jsonl(data / GATT_DATA["rows"])
    if (work / "before.json").is_file():
        before = {k: {int(t): s for t, s in v.items()} for k, v in json.loads((work / "before.json").read_text())
                  .items()}
        judged_before = pd.read_parquet(work / "before.parquet")
    else:
        before, judged_before = evaluate_adherence(backend(), cfg, sampling)
        judged_before.to_parquet(work / "before.parquet")
        write_json(work / "before.json", before, sort_keys=False)  # last: marks the phase done
    return dialogues, rows, before, judged_before


def gatt_step(model_cfg: ModelConfig, cfg: GAttConfig, train_cfg: SFTConfig, sampling: SamplingConfig,
              out_dir: str | Path, on_metrics: Callable[[dict, int], None] | None = None,
              launch: LaunchConfig | None = None) -> dict:
    """Ghost Attention on ``model_cfg``'s policy; returns the output's manifest.

    With ``launch`` on more than one process, the calling process synthesises the dialogues and measures
    the input policy (phases 1 and 2, into the work dir), the launched processes fine-tune on them (each its
    share of every batch) and the main one measures the result and writes the output."""
    cfg.validate()
    check_unsharded(launch, "gatt")
    out_dir = Path(out_dir)
    work = work_dir_for(out_dir)
    config = {"model": asdict(model_cfg), "gatt": asdict(cfg), "train": asdict(replace(train_cfg, loss_mode="last",
                                                                                         fail_after_steps=None)),
              "sampling": asdict(sampling), **keyed_launch(launch)}
    inputs = {"model": model_input(model_cfg)}

    def engine() -> TransformersBackend:
        model, tokenizer = load_model(model_cfg)
        return TransformersBackend(model, tokenizer, model_cfg.precision)

    if launches(launch):
        def prepare() -> None:
            prepare_work_dir("gatt", out_dir, key_for(config, inputs))
            _prepared(work, functools.cache(engine), cfg, sampling)  # one engine for both phases, then freed

        return launched_step("gatt", out_dir, config, inputs, launch, gatt_step,
                             {"model_cfg": model_cfg, "cfg": cfg, "train_cfg": train_cfg, "sampling": sampling,
                              "out_dir": out_dir, "launch": launch}, {"gatt.train": train_cfg}, on_metrics,
                             prepare=prepare if launch.num_processes > 1 else None)  # isolated: all in the child

    def body(tmp: Path | None) -> dict:
        model, tokenizer = load_model(model_cfg)
        backend = TransformersBackend(model, tokenizer, model_cfg.precision)
        # 1.-2. Dialogues sampled with the instruction on every user turn; adherence of the input policy.
        dialogues, rows, before, judged_before = _prepared(work, lambda: backend, cfg, sampling)
        log.info("gatt: %d of %d dialogues kept a followed answer (%d examples)", int((dialogues.answers.map(len) > 0)
                 .sum()), len(dialogues), len(rows))
        # 3. SFT on the rows, the loss on the last answer only (resumes from its checkpoints).
        resume = latest_checkpoint(work / "sft")
        metrics_log = MetricsLog(work / "sft" / METRICS, checkpoint_step(resume), on_metrics)
        if not rows:
            raise ValueError("gatt: no dialogue kept a single answer that follows its instruction; raise gatt.k or "
                             "gatt.n_dialogues, or check the model answers at all")
        result, _ = train_on(model, tokenizer, rows, train_cfg, work / "sft", metrics_log, model_cfg.precision)
        if tmp is None:  # another rank of a launched step: the main one measures and writes the output
            return {}
        # 4. Adherence after, the outputs.
        after, judged_after = evaluate_adherence(backend, cfg, sampling)
        history = save_model_output(tmp, model, tokenizer, work / "sft" / METRICS)
        data = work / "data"
        for name in ("dialogues", "rows"):
            shutil.copyfile(data / GATT_DATA[name], tmp / GATT[name])
        _write_adherence(tmp, GATT, before, after, judged_before, judged_after)
        return {**_summary_metrics(before, after, dialogues, len(rows)), "steps": result.steps,
                "resumed_from_step": result.resumed_from,
                "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"]}

    def summary(m: dict) -> str:
        b, a = m["adherence_by_turn"]["before"], m["adherence_by_turn"]["after"]
        per_turn = ", ".join(f"t{t} {100 * b[t]:.0f}->{100 * a[t]:.0f}%" for t in b)
        zs = m["zero_shot"]
        zero = (f"; zero-shot {100 * zs['before']:.0f} -> {100 * zs['after']:.0f}%" if zs["before"] is not None
                else "")
        return f"{m['n_examples']} examples from {m['n_dialogues']} dialogues; adherence {per_turn}{zero}"

    return run_step("gatt", out_dir, config, inputs, body,
                    f"{model_cfg.name_or_path}, {cfg.n_dialogues} dialogues x {cfg.turns} turns", summary)


# --------------------------------------------------------------------------------------------------
# gatt.mix_into=pool: the dialogues join the iteration's fine-tune instead of a step of their own


def gatt_dialogues_step(model_cfg: ModelConfig, cfg: GAttConfig, sampling: SamplingConfig,
                        out_dir: str | Path) -> dict:
    """The GAtt dialogues sampled from ``model_cfg``'s policy (the one the iteration starts from) and that
    policy's adherence; the rows (``gatt_sft.jsonl``) carry ``loss_mode: last`` so that ``train_policy`` trains
    them with the pool (``data.extra``) and its own loss mask. Returns the manifest."""
    cfg.validate()
    config = {"model": asdict(model_cfg), "gatt": asdict(cfg), "sampling": asdict(sampling)}

    def body(tmp: Path) -> dict:
        model, tokenizer = load_model(model_cfg)
        backend = TransformersBackend(model, tokenizer, model_cfg.precision)
        dialogues = build_data(backend, cfg, sampling, tmp)
        rows = [row | {"loss_mode": "last"} for row in read_jsonl(tmp / GATT_DIALOGUES["rows"])]
        if not rows:
            raise ValueError("gatt: no dialogue kept a single answer that follows its instruction; raise gatt.k or "
                             "gatt.n_dialogues, or check the model answers at all")
        write_jsonl(tmp / GATT_DIALOGUES["rows"], rows)
        before, judged = evaluate_adherence(backend, cfg, sampling)
        judged.to_parquet(tmp / GATT_DIALOGUES["judgments"])
        write_json(tmp / GATT_DIALOGUES["before"], {k: {str(t): v for t, v in c.items()} for k, c in before.items()},
                   sort_keys=False)
        kept = dialogues.answers.map(len)
        return {"n_dialogues": int((kept > 0).sum()), "n_dialogues_drawn": len(dialogues), "n_examples": len(rows),
                "adherence_before": {str(t): v for t, v in before["seen"].items()}}

    return run_step("gatt_dialogues", out_dir, config, {"model": model_input(model_cfg)}, body,
                    f"{model_cfg.name_or_path}, {cfg.n_dialogues} dialogues x {cfg.turns} turns (for the pool)",
                    lambda m: f"{m['n_examples']} examples from {m['n_dialogues']} dialogues")


def gatt_adherence_step(model_cfg: ModelConfig, dialogues_dir: str | Path, cfg: GAttConfig, sampling: SamplingConfig,
                        out_dir: str | Path) -> dict:
    """Adherence of the iteration's final policy (``model_cfg``) on the held-out dialogues, beside the input
    policy's from :func:`gatt_dialogues_step` (``dialogues_dir``): the same metrics as the ``gatt`` step's, so
    summary.json and the report read either. Returns the manifest."""
    cfg.validate()
    dialogues_dir = Path(dialogues_dir)
    config = {"gatt": asdict(cfg), "sampling": asdict(sampling)}
    inputs = {"model": model_input(model_cfg), "dialogues": file_input(dialogues_dir / GATT_DIALOGUES["rows"])}

    def body(tmp: Path) -> dict:
        before = {k: {int(t): v for t, v in c.items()}
                  for k, c in json.loads((dialogues_dir / GATT_DIALOGUES["before"]).read_text()).items()}
        dialogues = pd.read_parquet(dialogues_dir / GATT_DIALOGUES["dialogues"])
        n_rows = len(read_jsonl(dialogues_dir / GATT_DIALOGUES["rows"]))
        model, tokenizer = load_model(model_cfg)
        after, judged_after = evaluate_adherence(TransformersBackend(model, tokenizer, model_cfg.precision), cfg,
                                                 sampling)
        judged_before = pd.read_parquet(dialogues_dir / GATT_DIALOGUES["judgments"])
        _write_adherence(tmp, GATT_ADHERENCE, before, after, judged_before, judged_after)
        return {**_summary_metrics(before, after, dialogues, n_rows), "mix_into": "pool"}

    return run_step("gatt_adherence", out_dir, config, inputs, body,
                    f"{model_cfg.name_or_path}: adherence after GAtt in the pool",
                    lambda m: f"adherence {m['adherence_mean']['before']:.2f} -> {m['adherence_mean']['after']:.2f}")
