"""``rlhf rm train | eval | ablate``: the reward-model commands (wired into ``flows/cli.py``).

Outputs go to ``<campaign.root>/<campaign.name>/iter-<campaign.iteration>/``: ``rm-helpful`` and ``rm-safety``
(RM directories, loadable with ``rlhf_core.reward.model.load_reward_model`` or
``rlhf_core.reward.scorer.RewardScorer.load``), ``rm-<name>-eval`` and ``rm-ablation``.
The RMs start from ``model`` (the paper starts them from the chat model: pass the SFT output with
``model.name_or_path=<campaign>/iter-0/sft``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from rlhf_core.errors import ConfigError


def _iteration_dir(cfg) -> Path:
    from .cli import _iteration_dir as iteration_dir  # at call time: flows.cli imports this module

    return iteration_dir(cfg)


def _rm_names(cfg) -> list[str]:
    return ["helpful", "safety"] if cfg.reward.train_safety else ["helpful"]


def _print_accuracy(manifests: dict[str, dict]) -> None:
    """The Table 8 layout: test accuracy (%) per preference level, one row per RM."""
    from rlhf_core.reward.metrics import accuracy_table
    from rlhf_core.steps.reward import markdown_table

    def nan_for_none(metrics: dict) -> dict:
        return {k.removeprefix("test/"): math.nan if v is None else v for k, v in metrics.items()}

    table = accuracy_table({name: nan_for_none(m["metrics"]) for name, m in manifests.items()})
    print("\ntest accuracy (%) per preference level:")
    print(markdown_table(table), end="")


def cmd_rm_train(overrides: list[str]) -> int:
    from rlhf_core.steps.reward import rm_train_step

    from .config import compose_config

    cfg = compose_config(overrides)
    out = _iteration_dir(cfg)
    manifests = {name: rm_train_step(cfg.model, getattr(cfg.reward, name), cfg.reward.train, out / f"rm-{name}",
                                     name=name) for name in _rm_names(cfg)}
    for name, manifest in manifests.items():
        m = manifest["metrics"]
        print(f"\n{name} RM: {out / f'rm-{name}'}")
        print(f"  {m['n_train']} train / {m['n_test']} test pairs, {m['steps']} steps, train loss "
              f"{m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}, {m['pairs_per_s']:.2f} pairs/s")
    if any(m["metrics"]["n_test"] for m in manifests.values()):
        _print_accuracy(manifests)
    print(f"\nper-pair test scores: {out}/rm-*/eval.csv; next: `rlhf rm eval` on held-out prompts")
    return 0


def cmd_rm_eval(overrides: list[str]) -> int:
    from rlhf_core.steps.reward import rm_eval_step

    from .config import compose_config

    cfg = compose_config(overrides)
    out = _iteration_dir(cfg)
    manifests = {}
    for name in _rm_names(cfg):
        rm_dir = out / f"rm-{name}"
        if not (rm_dir / "manifest.json").is_file():
            raise ConfigError("campaign.iteration", f"no trained {name} RM in {rm_dir}; run `rlhf rm train` with "
                                                    "the same campaign and iteration first")
        synthetic = replace(getattr(cfg.reward, name), n_synthetic=cfg.reward.n_eval_synthetic)
        manifests[name] = rm_eval_step(rm_dir, cfg.reward.eval_data, out / f"rm-{name}-eval",
                                       cfg.reward.train.eval_batch_size, cfg.model.precision, synthetic)
    source = cfg.reward.eval_data or f"{cfg.reward.n_eval_synthetic} simulated-rater pairs on held-out prompts"
    print(f"\nevaluated on {source}")
    _print_accuracy(manifests)
    print(f"\nper-pair scores: {out}/rm-*-eval/eval.csv")
    return 0


def cmd_rm_ablate(overrides: list[str]) -> int:
    from rlhf_core.steps.reward import rm_ablate_step

    from .config import compose_config

    cfg = compose_config(overrides)
    out = _iteration_dir(cfg) / "rm-ablation"
    rm_ablate_step(cfg.model, cfg.reward.helpful, cfg.reward.train, out, cfg.reward.ablation)
    print(f"\nmargin ablation (helpfulness RM, Llama 2 Table 28 layout): {out}\n")
    print((out / "table28.md").read_text())
    return 0


# name, summary, example, run: registered by flows/cli.py as `rlhf rm <name>`
SUBCOMMANDS = [
    ("train", "Train the Helpfulness and Safety RMs (margin ranking loss); writes iter-<n>/rm-helpful, rm-safety.",
     "rlhf rm train reward=demo model.name_or_path=runs/default/iter-0/sft reward.train.margin=large",
     cmd_rm_train),
    ("eval", "Test accuracy per preference level of the trained RMs; writes iter-<n>/rm-<name>-eval.",
     "rlhf rm eval reward=demo reward.eval_data=heldout_pairs.jsonl", cmd_rm_eval),
    ("ablate", "Table 28: the Helpfulness RM trained with margin none/small/large; writes iter-<n>/rm-ablation.",
     "rlhf rm ablate reward=demo", cmd_rm_ablate),
]
