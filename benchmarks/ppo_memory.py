"""Peak memory of the demo's PPO step, with the frozen models parked on disk between their passes
(``ppo.park_frozen=true``, the default) and kept in memory (``false``).

``python -m benchmarks.ppo_memory`` composes ``experiment=demo`` (its ``ppo`` and ``sampling`` sections and
the model precision this machine resolves to), builds two reward models from the embedded SmolLM2-135M-Instruct
(untrained heads: the scores' values change neither the memory nor the cost) and runs the ``ppo`` step --
``rlhf.core.steps.ppo.ppo_step``, the code a campaign runs -- for ``--steps`` iterations, each contender in a
fresh process of its own (as ``launch.isolate`` runs a demo step), over ``--repeats`` rounds that
alternate which contender goes first. The figure is the step's own ``peak_rss_mb`` (VmHWM from the step's start, as its
manifest records it) and its seconds per iteration.

Results go to ``benchmarks/results/ppo_memory.json``; a summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "ppo_memory.json"
RAW = Path(__file__).parent / "results" / ".ppo_memory.runs.json"
CONTENDERS = {"parked": True, "kept": False}  # ppo.park_frozen
LIMIT_MB = 6e9 / 2**20  # issue 23: no step of the demo above 6 GB; the manifest's MB are MiB (5722 MiB)


def make_rms(root: Path) -> dict[str, str]:
    """Two RM directories (helpfulness, safety) from the embedded model, heads seeded apart."""
    from rlhf.core.models import ModelConfig
    from rlhf.core.reward.model import reward_model_from_policy, save_reward_model

    out = {}
    for seed, name in enumerate(("helpful", "safety")):
        rm, tokenizer = reward_model_from_policy(ModelConfig(), name=name, seed=seed)
        out[name] = str(save_reward_model(rm, tokenizer, root / name))
    return out


def contender(park: bool, steps: int, rms: dict[str, str], out: Path) -> dict:
    """One PPO step of the demo's configuration; its manifest's metrics."""
    from rlhf.core.prompt_sets import PromptsConfig
    from rlhf.core.scorers import ScorerConfig
    from rlhf.core.steps.ppo import ppo_step
    from rlhf.flows.config import compose_config, ppo_eval_prompts

    cfg = compose_config(["experiment=demo", f"ppo.steps={steps}", f"ppo.park_frozen={park}"])
    scorer = ScorerConfig(helpful=rms["helpful"], safety=rms["safety"])
    train = PromptsConfig(n=cfg.ppo.n_prompts, split="train", seed=cfg.campaign.seed or 0)
    manifest = ppo_step(cfg.model, scorer, train, ppo_eval_prompts(cfg), cfg.sampling, cfg.ppo, out)
    return {"precision": cfg.model.precision, "ppo": {k: getattr(cfg.ppo, k) for k in (
        "batch_size", "mini_batch_size", "micro_batch_size", "max_new_tokens", "gradient_checkpointing",
        "frozen_precision", "value_init")}, "metrics": manifest["metrics"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="PPO iterations per run (the demo runs 4)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, each running every contender once")
    parser.add_argument("--contender", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--rms", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:  # a child: one run, its figures as the last line
        found = contender(CONTENDERS[args.contender], args.steps, json.loads(args.rms), Path(args.out))
        print(json.dumps(found))
        return 0

    from benchmarks.sft_throughput import machine_info
    from rlhf.core.models import resolve_precision

    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="ppo-memory-") as tmp:
        rms = make_rms(Path(tmp))
        for round_ in range(args.repeats):
            order = list(CONTENDERS) if round_ % 2 == 0 else list(CONTENDERS)[::-1]  # ABBA: drift hits both alike
            for name in order:
                out = Path(tmp) / f"{name}-{round_}"
                done = subprocess.run([sys.executable, "-m", "benchmarks.ppo_memory", "--contender", name,
                                       "--steps", str(args.steps), "--rms", json.dumps(rms), "--out", str(out)],
                                      check=True, stdout=subprocess.PIPE, text=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                RAW.parent.mkdir(exist_ok=True)  # every run's figures as they come: a later failure loses none
                RAW.write_text(json.dumps(runs, indent=2) + "\n")
                m = runs[name][-1]["metrics"]
                print(f"  {name} (round {round_ + 1}): peak RSS {m['peak_rss_mb']:.0f} MiB, "
                      f"{m['wall_seconds']:.0f} s", flush=True)
    first = next(iter(runs.values()))[0]
    result = {"benchmark": "ppo_memory", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "config": {"experiment": "demo", "steps": args.steps, "repeats": args.repeats,
                         "precision": resolve_precision(first["precision"]), "ppo": first["ppo"]},
              "machine": machine_info(), "limit_mb": LIMIT_MB, "contenders": {}}
    for name, found in runs.items():
        metrics = [r["metrics"] for r in found]
        phases = ("rollout", "score", "update")
        result["contenders"][name] = {
            "park_frozen": CONTENDERS[name],
            "peak_rss_mb": max(m["peak_rss_mb"] for m in metrics),
            "peak_rss_mb_runs": [m["peak_rss_mb"] for m in metrics],
            "seconds_per_iteration": statistics.mean(sum(m[f"seconds_per_step/{p}_s"] for p in phases)
                                                     for m in metrics),
            **{f"{p}_s": statistics.mean(m[f"seconds_per_step/{p}_s"] for m in metrics) for p in phases},
            "held_bytes": {k.removeprefix("memory/"): v for k, v in metrics[0].items() if k.startswith("memory/")},
        }
    kept, parked = result["contenders"]["kept"], result["contenders"]["parked"]
    result["peak_saved_mb"] = kept["peak_rss_mb"] - parked["peak_rss_mb"]
    result["ratio_seconds_parked_over_kept"] = parked["seconds_per_iteration"] / kept["seconds_per_iteration"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nThe demo's PPO step ({args.steps} iterations, {result['config']['precision']}), peak RSS of the step:")
    for name, c in result["contenders"].items():
        print(f"  {name}: {c['peak_rss_mb']:.0f} MiB ({'under' if c['peak_rss_mb'] <= LIMIT_MB else 'over'} "
              f"{LIMIT_MB:.0f}), {c['seconds_per_iteration']:.1f} s per iteration (rollout {c['rollout_s']:.1f}, "
              f"scoring {c['score_s']:.1f}, update {c['update_s']:.1f})")
    print(f"  parking saves {result['peak_saved_mb']:.0f} MiB at "
          f"{result['ratio_seconds_parked_over_kept']:.3f}x the seconds per iteration")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
