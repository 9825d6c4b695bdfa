"""``rlhf gatt data | train | eval``: Ghost Attention one phase at a time (wired into ``flows/cli.py``).

Outputs go to ``<campaign.root>/<campaign.name>/iter-<campaign.iteration>/gatt-data`` (dialogues and SFT
rows), ``gatt-train`` (the fine-tuned model directory) and ``gatt-eval`` (adherence per turn). In a
campaign the ``gatt`` task runs all three (``campaign.gatt_from``).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_core.errors import ConfigError


def _here(cfg) -> Path:
    from .cli import _iteration_dir  # at call time: flows.cli imports this module

    return _iteration_dir(cfg)


def _backend(cfg):
    from rlhf_core.models import load_model
    from rlhf_core.sampling import TransformersBackend

    model, tokenizer = load_model(cfg.model)
    return model, tokenizer, TransformersBackend(model, tokenizer, cfg.model.precision)


def cmd_gatt_data(overrides: list[str]) -> int:
    from rlhf_core.steps.gatt import build_data

    from .config import compose_config

    cfg = compose_config(overrides)
    out = Path(cfg.io.output) if cfg.io.output else _here(cfg) / "gatt-data"
    _, _, backend = _backend(cfg)
    dialogues = build_data(backend, cfg.gatt, cfg.sampling, out)
    kept = dialogues.answers.map(len)
    print(f"\n{int((kept > 0).sum())} of {len(dialogues)} dialogues kept answers that follow their instruction "
          f"({int(kept.sum())} of {len(dialogues) * cfg.gatt.turns} turns): {out / 'gatt_sft.jsonl'}")
    return 0


def cmd_gatt_train(overrides: list[str]) -> int:
    from rlhf_core.steps.gatt import train_on

    from .config import compose_config

    cfg = compose_config(overrides)
    data = Path(cfg.io.input) if cfg.io.input else _here(cfg) / "gatt-data" / "gatt_sft.jsonl"
    if not data.is_file():
        raise ConfigError("io.input", f"no GAtt rows at {data}: run `rlhf gatt data` first or give io.input=<jsonl>")
    out = Path(cfg.io.output) if cfg.io.output else _here(cfg) / "gatt-train"
    model, tokenizer, _ = _backend(cfg)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    result, report = train_on(model, tokenizer, rows, cfg.gatt.train, out.with_name(f".{out.name}.work"),
                              precision=cfg.model.precision)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"\nGAtt model: {out} ({result.steps} steps on {report.n_kept} examples, loss on the last answer only)")
    return 0


def cmd_gatt_eval(overrides: list[str]) -> int:
    from rlhf_core.steps.gatt import evaluate_adherence

    from .config import compose_config

    cfg = compose_config(overrides)
    out = Path(cfg.io.output) if cfg.io.output else _here(cfg) / "gatt-eval"
    _, _, backend = _backend(cfg)
    curves, judged = evaluate_adherence(backend, cfg.gatt, cfg.sampling)
    out.mkdir(parents=True, exist_ok=True)
    judged.to_parquet(out / "judgments.parquet")
    (out / "adherence.json").write_text(json.dumps({k: {str(t): v for t, v in c.items()} for k, c in curves.items()},
                                                   indent=2) + "\n")
    print(f"\nadherence to the system instruction per turn ({cfg.model.name_or_path}):")
    for name, curve in curves.items():
        print(f"  {name:<9} " + "  ".join(f"turn {t}: {100 * v:.0f}%" for t, v in curve.items()))
    print(f"judgments: {out / 'judgments.parquet'}")
    return 0


# name, summary, example, run: registered by flows/cli.py as `rlhf gatt <name>`
SUBCOMMANDS = [
    ("data", "Synthesise GAtt dialogues (instruction on every user turn, best of K by its checker); writes "
             "iter-<n>/gatt-data.", "rlhf gatt data model.name_or_path=runs/c/iter-1/ppo gatt.n_dialogues=64",
     cmd_gatt_data),
    ("train", "Fine-tune on GAtt rows (instruction as system message, loss on the last answer); writes "
              "iter-<n>/gatt-train.", "rlhf gatt train model.name_or_path=runs/c/iter-1/ppo", cmd_gatt_train),
    ("eval", "Adherence to the system instruction per turn (seen and zero-shot constraints); writes "
             "iter-<n>/gatt-eval.", "rlhf gatt eval model.name_or_path=runs/c/iter-1/gatt-train gatt.eval_turns=6",
     cmd_gatt_eval),
]
