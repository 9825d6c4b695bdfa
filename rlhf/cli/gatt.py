"""``rlhf gatt data | train | eval``: Ghost Attention one phase at a time.

Outputs go to ``<campaign.root>/<campaign.name>/iter-<campaign.iteration>/gatt-data`` (dialogues and SFT
rows), ``gatt-train`` (the fine-tuned model directory) and ``gatt-eval`` (adherence per turn), or to
``io.output`` (contracts in ``rlhf.core.steps.outputs``). In a campaign the ``gatt`` task runs all three
(``campaign.gatt_from``).
"""

from __future__ import annotations

from pathlib import Path

from rlhf.core.artifacts import atomic_dir, read_jsonl, write_json
from rlhf.core.errors import ConfigError
from rlhf.core.steps.outputs import GATT_DATA, GATT_EVAL, GATT_TRAIN

from .common import Command, compose, here, output_dir, writing


def _backend(cfg):
    from rlhf.core.models import load_model
    from rlhf.core.sampling import TransformersBackend

    model, tokenizer = load_model(cfg.model)
    return model, tokenizer, TransformersBackend(model, tokenizer, cfg.model.precision)


def cmd_gatt_data(overrides: list[str]) -> int:
    from rlhf.core.steps.gatt import build_data

    cfg = compose(overrides)
    out = output_dir(cfg, GATT_DATA)
    _, _, backend = _backend(cfg)
    with writing(cfg, out):
        dialogues = build_data(backend, cfg.gatt, cfg.sampling, out)
    kept = dialogues.answers.map(len)
    print(f"\n{int((kept > 0).sum())} of {len(dialogues)} dialogues kept answers that follow their instruction "
          f"({int(kept.sum())} of {len(dialogues) * cfg.gatt.turns} turns): {out / GATT_DATA['rows']}")
    return 0


def cmd_gatt_train(overrides: list[str]) -> int:
    from rlhf.core.models import save_model
    from rlhf.core.steps.common import work_dir_for
    from rlhf.core.steps.gatt import train_on

    cfg = compose(overrides)
    data = Path(cfg.io.input) if cfg.io.input else GATT_DATA.dir(here(cfg)) / GATT_DATA["rows"]
    if not data.is_file():
        raise ConfigError("io.input", f"no GAtt rows at {data}: run `rlhf gatt data` first or give io.input=<jsonl>")
    out = output_dir(cfg, GATT_TRAIN)
    model, tokenizer, _ = _backend(cfg)
    with writing(cfg, out):
        result, report = train_on(model, tokenizer, read_jsonl(data), cfg.gatt.train, work_dir_for(out),
                                  precision=cfg.model.precision)
        with atomic_dir(out) as tmp:
            save_model(model, tokenizer, tmp)
    print(f"\nGAtt model: {out} ({result.steps} steps on {report.n_kept} examples, loss on the last answer only)")
    return 0


def cmd_gatt_eval(overrides: list[str]) -> int:
    from rlhf.core.steps.gatt import evaluate_adherence

    cfg = compose(overrides)
    out = output_dir(cfg, GATT_EVAL)
    _, _, backend = _backend(cfg)
    with writing(cfg, out):
        curves, judged = evaluate_adherence(backend, cfg.gatt, cfg.sampling)
        with atomic_dir(out) as tmp:
            judged.to_parquet(tmp / GATT_EVAL["judgments"])
            write_json(tmp / GATT_EVAL["adherence"], {name: {str(turn): share for turn, share in curve.items()}
                                                      for name, curve in curves.items()})
    print(f"\nadherence to the system instruction per turn ({cfg.model.name_or_path}):")
    for name, curve in curves.items():
        print(f"  {name:<9} " + "  ".join(f"turn {t}: {100 * v:.0f}%" for t, v in curve.items()))
    print(f"judgments: {out / GATT_EVAL['judgments']}")
    return 0


COMMANDS = [
    Command("gatt data", "Synthesise GAtt dialogues (instruction on every user turn, best of K by its checker); "
                         "writes iter-<n>/gatt-data.",
            "rlhf gatt data model.name_or_path=runs/c/iter-1/ppo gatt.n_dialogues=64", cmd_gatt_data),
    Command("gatt train", "Fine-tune on GAtt rows (instruction as system message, loss on the last answer); writes "
                          "iter-<n>/gatt-train.", "rlhf gatt train model.name_or_path=runs/c/iter-1/ppo",
            cmd_gatt_train),
    Command("gatt eval", "Adherence to the system instruction per turn (seen and zero-shot constraints); writes "
                         "iter-<n>/gatt-eval.",
            "rlhf gatt eval model.name_or_path=runs/c/iter-1/gatt-train gatt.eval_turns=6", cmd_gatt_eval),
]
