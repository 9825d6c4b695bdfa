"""``rlhf rm train | eval | ablate``: the reward-model commands.

Outputs go to ``<campaign.root>/<campaign.name>/iter-<campaign.iteration>/`` as the RM steps' contracts
say (``rlhf.core.steps.outputs``): ``rm-helpful`` and ``rm-safety``
(RM directories, loadable with ``rlhf.core.reward.model.load_reward_model`` or
``rlhf.core.reward.scorer.RewardScorer.load``), ``rm-<name>-eval`` and ``rm-ablation``.
The RMs start from ``model`` (the paper starts them from the chat model: pass the SFT output with
``model.name_or_path=<campaign>/iter-0/sft``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

from rlhf.core.artifacts import MANIFEST
from rlhf.core.errors import ConfigError
from rlhf.core.steps.outputs import RM_ABLATION, Outputs, rm_eval_outputs, rm_names, rm_outputs

from .common import Command, compose, here, writing


def _print_accuracy(manifests: dict[str, dict]) -> None:
    """The Table 8 layout: test accuracy (%) per preference level, one row per RM."""
    from rlhf.core.reward.metrics import accuracy_table
    from rlhf.core.steps.reward import HELD_OUT, markdown_table

    for prefix, title in HELD_OUT.items():
        tested = {name: {k.removeprefix(f"{prefix}/"): math.nan if v is None else v for k, v in m["metrics"].items()}
                  for name, m in manifests.items() if f"{prefix}/accuracy" in m["metrics"]}
        if tested:
            print(f"\ntest accuracy (%) per preference level, {title}:")
            print(markdown_table(accuracy_table(tested)), end="")


def _files(contract: Callable[[str], Outputs], names, out: Path, file: str) -> str:
    """Where each RM's ``file`` is, for the closing line of a command."""
    return ", ".join(str(contract(name).dir(out) / contract(name)[file]) for name in names)


def cmd_rm_train(overrides: list[str]) -> int:
    from rlhf.core.steps.reward import rm_train_step

    cfg = compose(overrides)
    out = here(cfg)
    with writing(cfg):
        manifests = {name: rm_train_step(cfg.model, getattr(cfg.reward, name), cfg.reward.train,
                                         rm_outputs(name).dir(out), name=name,
                                         launch=cfg.launch.for_step("train_reward_models"))
                     for name in rm_names(cfg.reward.train_safety)}
    for name, manifest in manifests.items():
        metrics = manifest["metrics"]
        print(f"\n{name} RM: {rm_outputs(name).dir(out)}")
        print(f"  {metrics['n_train']} train / {metrics['n_test']} labelled + {metrics['n_test_synthetic']} synthetic "
              f"test pairs, {metrics['steps']} steps, train loss "
              f"{metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}, "
              f"{metrics['pairs_per_s']:.2f} pairs/s")
    if any(m["metrics"]["n_test"] + m["metrics"]["n_test_synthetic"] for m in manifests.values()):
        _print_accuracy(manifests)
    print(f"\nper-pair test scores: {_files(rm_outputs, manifests, out, 'eval')}; next: `rlhf rm eval` on held-out "
          "prompts")
    return 0


def cmd_rm_eval(overrides: list[str]) -> int:
    cfg = compose(overrides)
    out = here(cfg)
    with writing(cfg):
        manifests = _evaluate(cfg, out)
    source = cfg.reward.eval_data or f"{cfg.reward.n_eval_synthetic} simulated-rater pairs on held-out prompts"
    print(f"\nevaluated on {source}")
    _print_accuracy(manifests)
    print(f"\nper-pair scores: {_files(rm_eval_outputs, manifests, out, 'eval')}")
    return 0


def _evaluate(cfg, out: Path) -> dict[str, dict]:
    """``rlhf rm eval``'s work: each trained RM of the iteration on the held-out pairs; their manifests."""
    from rlhf.core.steps.reward import rm_eval_step

    manifests = {}
    for name in rm_names(cfg.reward.train_safety):
        rm_dir = rm_outputs(name).dir(out)
        if not (rm_dir / MANIFEST).is_file():
            raise ConfigError("campaign.iteration", f"no trained {name} RM in {rm_dir}; run `rlhf rm train` with "
                                                    "the same campaign and iteration first")
        synthetic = replace(getattr(cfg.reward, name), n_synthetic=cfg.reward.n_eval_synthetic)
        manifests[name] = rm_eval_step(rm_dir, cfg.reward.eval_data, rm_eval_outputs(name).dir(out),
                                       cfg.reward.train.eval_batch_size, cfg.model.precision, synthetic)
    return manifests


def cmd_rm_ablate(overrides: list[str]) -> int:
    from rlhf.core.steps.reward import rm_ablate_step

    cfg = compose(overrides)
    out = RM_ABLATION.dir(here(cfg))
    with writing(cfg):
        rm_ablate_step(cfg.model, cfg.reward.helpful, cfg.reward.train, out, cfg.reward.ablation)
    print(f"\nmargin ablation (helpfulness RM, Llama 2 Table 28 layout): {out}\n")
    print((out / RM_ABLATION["table_md"]).read_text())
    return 0


COMMANDS = [
    Command("rm train", "Train the Helpfulness and Safety RMs (margin ranking loss); writes iter-<n>/rm-helpful, "
                        "rm-safety.",
            "rlhf rm train reward=demo model.name_or_path=runs/default/iter-0/sft reward.train.margin=large",
            cmd_rm_train),
    Command("rm eval", "Test accuracy per preference level of the trained RMs; writes iter-<n>/rm-<name>-eval.",
            "rlhf rm eval reward=demo reward.eval_data=heldout_pairs.jsonl", cmd_rm_eval),
    Command("rm ablate", "Table 28: the Helpfulness RM trained with margin none/small/large; writes "
                         "iter-<n>/rm-ablation.", "rlhf rm ablate reward=demo", cmd_rm_ablate),
]
