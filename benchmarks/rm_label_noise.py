"""How much of a reward model's held-out accuracy the simulated rater's noise allows, and how much the RM learns:
an experiment on a finished campaign's own labelled pairs (issue 21's "both RMs >= 70 %").

The campaign's helpfulness pairs carry the gold judge's scores of both answers (``gold_chosen``,
``gold_rejected``). For each rater noise given, every pair is relabelled from those scores as the simulated
rater would (``rlhf_core/rater/levels.py``: the gold winner, flipped with p_flip(gap) = noise x exp(-gap /
noise_scale); a gold tie a coin flip), the pairs are split as the campaign splits them (half of every
iteration's batch held out), an RM is trained from the campaign's SFT checkpoint with the demo's settings on
the training half, and scored on the held-out half: accuracy on the relabelled labels (overall and by level),
the labels' ceiling (mean 1 - p_flip) and the RM's agreement with the gold order. Noise 0 is a perfect rater:
what the RM learns from clean labels of these pairs.

    python -m benchmarks.rm_label_noise runs/demo --noise 0.5 0.25 0

Writes ``benchmarks/results/rm_label_noise.json``. Each RM trains in this process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from rlhf.core.annotators import SimulatedAnnotator
from rlhf.core.models import ModelConfig, describe_machine
from rlhf.core.preferences import split_pairs
from rlhf.core.rater.levels import RaterConfig, decide
from rlhf.core.reward.model import reward_model_from_policy
from rlhf.core.reward.train import RewardConfig, evaluate_reward_model, train_reward_model

RESULTS = Path(__file__).parent / "results"


def relabel(pairs: pd.DataFrame, rater: RaterConfig, seed: int) -> pd.DataFrame:
    """The pairs labelled again from their gold scores by a rater with ``rater``'s noise: chosen is the
    rater's pick, ``level`` its level, ``p_agree`` the chance it picks the gold winner."""
    rows, annotator = [], SimulatedAnnotator(rater)
    for i, row in enumerate(pairs.itertuples(index=False)):
        a, b = row.chosen, row.rejected
        gold_a, gold_b = float(row.gold_chosen), float(row.gold_rejected)
        preferred, level = decide(gold_a, gold_b, random.Random(seed * 1_000_003 + i), rater)
        p_agree = annotator.agreement(gold_a - gold_b)
        chosen, rejected, gold_c, gold_r = (a, b, gold_a, gold_b) if preferred == "a" else (b, a, gold_b, gold_a)
        rows.append({"prompt": row.prompt, "chosen": chosen, "rejected": rejected, "level": level,
                     "iteration": row.iteration, "gold_chosen": gold_c, "gold_rejected": gold_r, "p_agree": p_agree})
    return pd.DataFrame(rows, index=pairs.index)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("campaign", type=Path, help="a finished campaign's directory (runs/<name>)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.25, 0.0])
    parser.add_argument("--noise-scale", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="label-noise draws (and RM seeds)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--pack", type=int, nargs="+", default=[1], choices=[0, 1],
                        help="1: pairs as packed rows (the default), 0: two rows per pair; both: --pack 1 0")
    parser.add_argument("--out", type=Path, default=RESULTS / "rm_label_noise.json")
    args = parser.parse_args(argv)

    files = sorted(args.campaign.glob("iter-*/annotate/pairs.parquet"))
    if not files:
        raise SystemExit(f"{args.campaign}: no iter-*/annotate/pairs.parquet: give a finished campaign's directory")
    pairs = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    pairs = pairs.dropna(subset=["gold_chosen", "gold_rejected"])
    sft = args.campaign / "iter-0" / "sft"
    model_cfg = ModelConfig(str(sft), precision=args.precision)
    cfg = RewardConfig(batch_size=16, micro_batch_size=8, epochs=args.epochs, lr=args.lr, min_warmup_steps=1,
                       max_length=160, n_test=0, checkpoint_every=0, gradient_checkpointing=True, margin="small")
    runs = []
    for seed in args.seeds:
        train_idx, test_idx = (part.index for part in split_pairs(pairs, 0.5, seed=seed))
        for noise, pack in ((n, bool(p)) for n in args.noise for p in args.pack):
            rater = RaterConfig(noise=noise, noise_scale=args.noise_scale)
            labelled = relabel(pairs, rater, seed)
            train, test = labelled.loc[train_idx], labelled.loc[test_idx]
            rm, tok = reward_model_from_policy(model_cfg, name="helpful", seed=seed, max_length=cfg.max_length)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                train_reward_model(rm, tok, train, replace(cfg, seed=seed, pack_pairs=pack), work,
                                   precision=args.precision)
            metrics, _ = evaluate_reward_model(rm, tok, test, precision=args.precision, packed=pack)
            run = {"seed": seed, "noise": noise, "noise_scale": args.noise_scale, "pack_pairs": pack,
                   "precision": args.precision, "n_train": len(train),
                   "n_test": len(test), "seconds": time.perf_counter() - started,
                   **{k: metrics[k] for k in ("accuracy", "label_ceiling", "gold_agreement", "n_gold_ordered")},
                   "accuracy_by_level": {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("accuracy/")},
                   "n_by_level": {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("n/")}}
            runs.append(run)
            print(json.dumps(run), flush=True)
    result = {"benchmark": "rm_label_noise", "campaign": str(args.campaign), "files": [str(f) for f in files],
              "machine": describe_machine(), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
