"""The ``rlhf`` command line. Every command takes Hydra-style ``key=value`` overrides.

User mistakes (bad data, bad config keys) print one clear message and exit with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhf_core.errors import RLHFError


@dataclass
class Command:
    name: str
    summary: str
    example: str
    run: Callable[[list[str]], int]


def _campaign_dir(cfg) -> Path:
    return Path(cfg.campaign.root).resolve() / cfg.campaign.name


def cmd_sft(overrides: list[str]) -> int:
    from rlhf_core.steps.sft import sft_step

    from .config import compose_config

    cfg = compose_config(overrides)
    out_dir = _campaign_dir(cfg) / "iter-0" / "sft"
    manifest = sft_step(cfg.model, cfg.data, cfg.sft, out_dir)
    m = manifest["metrics"]
    print(f"\nSFT model: {out_dir}")
    print(f"  steps {m['steps']}, train loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}", end="")
    if m.get("eval_loss_before") is not None:
        print(f", held-out loss {m['eval_loss_before']:.3f} -> {m['eval_loss_after']:.3f}", end="")
    print(f", {m['tokens_per_s']:.0f} tokens/s")
    print(f"  per-step metrics: {out_dir / 'metrics.jsonl'}; manifest: {out_dir / 'manifest.json'}")
    return 0


def cmd_annotate(overrides: list[str]) -> int:
    from rlhf_core.annotators import annotate_file
    from rlhf_core.errors import ConfigError

    from .config import compose_config

    cfg = compose_config(overrides)
    if not cfg.io.input:
        raise ConfigError("io.input", "give the pairs file to label, e.g. io.input=pairs.jsonl "
                                      "(columns pair_id, prompt, response_a, response_b, instructions, safety)")
    source = Path(cfg.io.input)
    output = Path(cfg.io.output or source.with_name(source.stem + ".labelled.parquet"))
    annotate_file(source, output, config=cfg.annotator)
    print(f"labelled pairs ({cfg.annotator.name} annotator): {output}")
    return 0


COMMANDS = {c.name: c for c in [
    Command("sft", "Assistant-only supervised fine-tuning; writes <root>/<name>/iter-0/sft (a model dir).",
            "rlhf sft model=tiny data.path=chats.jsonl sft.epochs=1 campaign.name=try1", cmd_sft),
    Command("annotate", "Label a pairs file with the configured annotator (simulated | file | human).",
            "rlhf annotate io.input=pairs.jsonl io.output=labelled.parquet annotator.rater.noise=0.2",
            cmd_annotate),
]}


def _print_config(overrides: list[str]) -> int:
    from .config import compose_config, to_yaml

    print(to_yaml(compose_config(overrides)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Llama 2-style RLHF as workflow DAGs. Each command takes key=value config overrides.",
        epilog="commands:\n" + "\n".join(f"  {c.name:<10} {c.summary}\n  {'':<10} e.g. {c.example}"
                                         for c in COMMANDS.values()))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=c.summary,
                           epilog=textwrap.dedent(f"""\
                               example:
                                 {c.example}
                               overrides are Hydra-style: key=value (see the keys with --cfg)"""))
        p.add_argument("overrides", nargs="*", help="config overrides, key=value")
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("rlhf").setLevel(logging.INFO)
    for noisy in ("httpx", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        if args.cfg:
            return _print_config(args.overrides)
        return COMMANDS[args.command].run(args.overrides)
    except RLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
