"""Reward-model training throughput: our RM loop vs TRL's ``RewardTrainer``, same pairs and settings.

``python -m benchmarks.rm_throughput`` trains a reward model from a fresh copy of the embedded
SmolLM2-135M-Instruct with each contender, **each run in its own process** (so its peak memory is its own),
the runs interleaved (ours, trl, trl_grouped, then the other way round: a drift of the machine's speed hits
all alike), at the precision a campaign uses on this machine (``auto``: bf16 autocast where the CPU has
fast bf16) and in fp32:

- **ours**: :func:`rlhf.core.reward.train.train_reward_model` on the shared ``train()`` loop (backbone
  without the LM head + scalar head, length-grouped batches, each pair packed into one row: the prompt once,
  both answers attending to it, ``reward.train.pack_pairs``, the default);
- **ours_unpacked**: the same with ``pack_pairs=False`` (chosen and rejected as two rows, each with the
  prompt, in one forward pass): what packing alone gains, a labelled extra row rather than a peer;
- **trl**: ``trl.RewardTrainer`` on ``AutoModelForSequenceClassification`` (num_labels=1), whose collator
  also stacks chosen and rejected into one forward pass; random batches (its default);
- **trl_grouped**: the same with ``train_sampling_strategy="group_by_length"`` (its length grouping,
  on each pair's longer side): the peer with the padding saving ours has.

All get the **same token ids**: 64 simulated-rater pairs (``make_demo_pairs``) rendered by our
``encode_pairs`` with SmolLM2's chat template, given to TRL as a pre-tokenised dataset (``chosen_ids``,
``rejected_ids``, ``margin`` = the "small" table, which TRL subtracts as ours does). Batch 8 pairs without
accumulation, max length 256, the same precision (bf16: accelerate's autocast for ours, ``bf16=True`` for
TRL), AdamW with the paper's RM settings, no gradient checkpointing, no checkpoints written. ``warmup +
timed`` steps (2 + 6, one pass over the 64 pairs): the warm-up steps are excluded. Pairs/s counts timed
pairs over timed wall seconds; the padded share is pad tokens over all tokens of the timed batches.

MFU: 6 x non-embedding parameters per real (not padding) token, plus the attention scores, over the timed
seconds, as a fraction of this machine's matmul peak in the run's dtype measured in the same run
(``benchmarks/machine.py``: square 2048^3 on 2 threads, before and after; the higher).

Results go to ``benchmarks/results/rm_throughput.json``; a short summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.machine import matmul_peaks  # noqa: E402
from benchmarks.sft_throughput import Turns, machine_info, run_in_turns  # noqa: E402
from rlhf.core.models import ModelConfig, embedded_model_dir, load_model, resolve_precision  # noqa: E402
from rlhf.core.reward import train as rm_train  # noqa: E402
from rlhf.core.reward.model import reward_model_from_policy  # noqa: E402
from rlhf.core.reward.synthetic import make_demo_pairs  # noqa: E402
from rlhf.core.steps.common import peak_rss_mb  # noqa: E402
from rlhf.core.training import warmup_steps_for  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "rm_throughput.json"


@dataclass
class BenchConfig:
    n_pairs: int = 64  # simulated-rater pairs (make_demo_pairs, seed 0)
    batch_size: int = 8  # pairs per optimizer step (16 sequences), no gradient accumulation
    max_length: int = 256  # tokens per (prompt + answer)
    warmup_steps: int = 2  # optimizer steps run but not timed
    timed_steps: int = 6  # optimizer steps timed (with the warm-up: 8 x 8 = the 64 pairs once)
    precision: str = "bf16"  # the child's; main() runs the precision `auto` resolves to here, and fp32
    margin: str = "small"
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps


def rm_config(bench: BenchConfig) -> rm_train.RewardConfig:
    """The paper's RM optimiser settings (RewardConfig defaults), the benchmark's sizes."""
    per_epoch = math.ceil(bench.n_pairs / bench.batch_size)
    return rm_train.RewardConfig(
        batch_size=bench.batch_size, micro_batch_size=bench.batch_size, max_length=bench.max_length,
        epochs=math.ceil(bench.total_steps / per_epoch), max_steps=bench.total_steps, checkpoint_every=0,
        margin=bench.margin, seed=bench.seed)


def _batch_stats(input_ids: torch.Tensor, attention_mask: torch.Tensor, pairs: int) -> dict:
    rows, width = input_ids.shape
    return {"pairs": pairs, "rows": rows, "width": width, "real_tokens": int(attention_mask.sum()),
            "padded_tokens": rows * width}


def run_ours(turns: Turns, pairs, bench: BenchConfig, packed: bool = True, name: str = "ours") -> dict:
    """``train_reward_model`` as the platform calls it; its batches are observed through its collate function."""
    rm, tokenizer = reward_model_from_policy(ModelConfig(), name="bench", seed=bench.seed,
                                             max_length=bench.max_length)
    cfg = replace(rm_config(bench), pack_pairs=packed)
    batches, losses = [], []
    collate = "collate_packed_pairs" if packed else "collate_pairs"
    original = getattr(rm_train, collate)

    def recording_collate(examples, pad_id):
        batch = original(examples, pad_id)
        batches.append(_batch_stats(batch["input_ids"], batch["attention_mask"], len(examples)))
        return batch

    def on_metrics(metrics: dict, step: int) -> None:
        losses.append(metrics["loss"])
        turns.step_end(name)

    setattr(rm_train, collate, recording_collate)  # only train_reward_model calls it in this process
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rm-ours-") as work:
            result, _ = rm_train.train_reward_model(rm, tokenizer, pairs, cfg, work, on_metrics, desc="ours",
                                                    precision=bench.precision)
    finally:
        setattr(rm_train, collate, original)
    if not (len(batches) == len(losses) == result.steps == bench.total_steps):
        raise RuntimeError(f"ours: expected {bench.total_steps} steps of one batch, got {len(batches)} batches")
    return {
        "label": "ours: rlhf.core.reward.train.train_reward_model (shared train() loop)"
                 + (", one packed row per pair" if packed else ", pack_pairs=False: chosen and rejected rows"),
        "model": "backbone (model.base_model, no LM head) + nn.Linear(hidden, 1), reward at the last non-pad token",
        "batching": "length-grouped (sorted within chunks of 16 batches, batches shuffled)",
        "optimizer": {"lr": cfg.lr, "betas": [cfg.adam_beta1, cfg.adam_beta2], "eps": cfg.adam_eps,
                      "weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip,
                      "warmup_steps": warmup_steps_for(cfg, bench.total_steps)},
        "parameters": sum(p.numel() for p in rm.parameters()),
        "steps": [{**b, "loss": loss} for b, loss in zip(batches, losses)],
    }


def run_trl(turns: Turns, examples: list, bench: BenchConfig, grouped: bool = False) -> dict:
    """TRL's RewardTrainer on the same token ids (``grouped``: its length-grouped sampler, on each pair's longer
    side, the ``length`` column); its batches are observed in ``training_step``."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, PrinterCallback, TrainerCallback
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    cfg = rm_config(bench)
    _, tokenizer = load_model(ModelConfig())
    torch.manual_seed(bench.seed)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir(), num_labels=1,
                                                               dtype=torch.float32)
    dataset = Dataset.from_list([{"chosen_ids": c.tolist(), "rejected_ids": r.tolist(), "margin": m,
                                  "length": max(len(c), len(r))} for c, r, m in examples])
    batches, losses = [], {}

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            turns.step_end("trl_grouped" if grouped else "trl")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    class RecordingRewardTrainer(RewardTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if "margin" not in inputs:
                raise RuntimeError("TRL's batch has no margin column: it would train without the margin")
            batches.append(_batch_stats(inputs["input_ids"], inputs["attention_mask"], len(inputs["margin"])))
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory(prefix="bench-rm-trl-") as out_dir:
        args = TRLRewardConfig(
            output_dir=out_dir,
            max_length=bench.max_length,
            per_device_train_batch_size=bench.batch_size,
            gradient_accumulation_steps=1,
            max_steps=bench.total_steps,
            learning_rate=cfg.lr,
            lr_scheduler_type="cosine",
            warmup_steps=warmup_steps_for(cfg, bench.total_steps),
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_epsilon=cfg.adam_eps,
            max_grad_norm=cfg.grad_clip,
            optim="adamw_torch_fused",  # transformers' default on torch >= 2.8, and the kernel ours uses
            bf16=bench.precision == "bf16",  # as ours: autocast to bf16 over fp32 weights, or fp32
            train_sampling_strategy="group_by_length" if grouped else "random",
            length_column_name="length",
            remove_unused_columns=not grouped,  # the sampler reads `length`; TRL's collator ignores it
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,  # TRL defaults to True; ours runs without
            center_rewards_coefficient=None,
            seed=bench.seed,
            data_seed=bench.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = RecordingRewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                         callbacks=[StepEnd()])
        trainer.remove_callback(PrinterCallback)
        if len(trainer.train_dataset) != len(examples):
            raise RuntimeError(f"TRL dropped {len(examples) - len(trainer.train_dataset)} pairs as over-long")
        trainer.train()
    if not (len(batches) == trainer.state.global_step == bench.total_steps):
        raise RuntimeError(f"trl: expected {bench.total_steps} steps of one batch, got {len(batches)} batches")
    result = {
        "label": "trl: RewardTrainer (AutoModelForSequenceClassification, num_labels=1)"
                 + (", train_sampling_strategy=group_by_length" if grouped else ""),
        "model": "LlamaForSequenceClassification: score head on every position, reward at the last non-pad token",
        "batching": f"train_sampling_strategy={args.train_sampling_strategy!r}",
        "optimizer": {"lr": args.learning_rate, "betas": [args.adam_beta1, args.adam_beta2], "eps": args.adam_epsilon,
                      "weight_decay": args.weight_decay, "grad_clip": args.max_grad_norm,
                      "warmup_steps": args.warmup_steps},
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": [{**b, "loss": losses.get(k + 1)} for k, b in enumerate(batches)],
    }
    del trainer, model
    return result


def summarise(run: dict, wall: list[float], cpu: list[float], bench: BenchConfig) -> dict:
    steps = [{**s, "seconds": w, "cpu_seconds": c} for s, w, c in zip(run.pop("steps"), wall, cpu, strict=True)]
    timed = steps[bench.warmup_steps:]
    seconds = sum(s["seconds"] for s in timed)
    real = sum(s["real_tokens"] for s in timed)
    padded = sum(s["padded_tokens"] for s in timed)
    pairs = sum(s["pairs"] for s in timed)
    return {
        **run,
        "pairs_per_s": pairs / seconds,
        "real_tokens_per_s": real / seconds,
        "pairs_per_cpu_s": pairs / sum(s["cpu_seconds"] for s in timed),
        "padded_share": 1 - real / padded,
        "timed_steps": len(timed), "timed_pairs": pairs, "timed_seconds": seconds,
        "timed_real_tokens": real, "timed_padded_tokens": padded,
        "median_step_seconds": statistics.median(s["seconds"] for s in timed),
        "warmup_step_seconds": [round(s["seconds"], 3) for s in steps[:bench.warmup_steps]],
        "per_step": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in steps],
    }


CONTENDERS = ("ours", "trl", "trl_grouped", "ours_unpacked")  # the ratios: ours over each of the others


def one_run(contender: str, bench: BenchConfig) -> dict:
    """One contender's whole run in this process: its summary, model facts and peak memory."""
    pairs = make_demo_pairs(bench.n_pairs, seed=bench.seed)
    _, tokenizer = load_model(ModelConfig())
    examples, report = rm_train.encode_pairs(tokenizer, pairs, bench.max_length, bench.margin)
    jobs = {"ours": lambda turns: run_ours(turns, pairs, bench),
            "trl": lambda turns: run_trl(turns, examples, bench),
            "trl_grouped": lambda turns: run_trl(turns, examples, bench, grouped=True),
            "ours_unpacked": lambda turns: run_ours(turns, pairs, bench, packed=False, name="ours_unpacked")}
    turns = Turns([contender])
    run = run_in_turns({contender: jobs[contender]}, turns)[contender]
    summary = summarise(run, turns.wall[contender], turns.cpu[contender], bench)
    summary["peak_rss_mb"] = peak_rss_mb()
    summary["tokenized"] = {"sequences": report.n_sequences, "tokens": report.n_tokens,
                            "prompt_truncated": report.n_prompt_truncated,
                            "answer_truncated": report.n_answer_truncated}
    return summary


def model_flops(run: dict) -> float:
    """Training FLOPs of the timed steps counting real tokens only: 6 x non-embedding parameters per token plus
    the attention scores (12 x layers x hidden x length^2 per sequence, on the batch's real lengths' mean)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(embedded_model_dir())
    non_embedding = run["parameters"] - config.vocab_size * config.hidden_size
    timed = run["per_step"][len(run["warmup_step_seconds"]):]
    attention = sum(12 * config.num_hidden_layers * config.hidden_size * s["rows"] * (s["real_tokens"] / s["rows"]) ** 2
                    for s in timed)
    return 6.0 * non_embedding * run["timed_real_tokens"] + attention


def spawn(contender: str, bench: BenchConfig) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.rm_throughput", "--contender", contender,
                           "--precision", bench.precision, "--timed-steps", str(bench.timed_steps),
                           "--warmup-steps", str(bench.warmup_steps)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{contender} ({bench.precision}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def race(precision: str, reps: int, args) -> dict:
    """Every contender ``reps`` times at ``precision``, interleaved, each run in its own process."""
    bench = BenchConfig(timed_steps=args.timed_steps, warmup_steps=args.warmup_steps, precision=precision)
    before = matmul_peaks(precision)
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for rep in range(reps):
        for name in CONTENDERS if rep % 2 == 0 else tuple(reversed(CONTENDERS)):
            runs[name].append(spawn(name, bench))
            print(f"{precision} rep {rep} {name}: {runs[name][-1]['pairs_per_s']:.2f} pairs/s, "
                  f"peak {runs[name][-1]['peak_rss_mb']:.0f} MB", flush=True)
    after = matmul_peaks(precision)
    peak = max(before["square"], after["square"])
    contenders = {}
    for name, done in runs.items():
        best = sorted(done, key=lambda r: r["pairs_per_s"])[len(done) // 2]  # the median run (upper, for 2)
        gflops = model_flops(best) / best["timed_seconds"] / 1e9
        contenders[name] = {**best, "pairs_per_s_runs": [r["pairs_per_s"] for r in done],
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
                            "model_gflops_per_s": gflops, "mfu": gflops * 1e9 / (peak * 1e9)}
    ours = contenders["ours"]["pairs_per_s"]
    return {"precision": precision, "peak_gflops": {"square": peak, "before": before["square"],
                                                    "after": after["square"]},
            "config": {**asdict(bench), "reps": reps, "gradient_accumulation": 1, "gradient_checkpointing": False},
            "contenders": contenders,
            **{f"ratio_ours_over_{name}": ours / contenders[name]["pairs_per_s"] for name in CONTENDERS[1:]},
            "padded_share": {name: c["padded_share"] for name, c in contenders.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-steps", type=int, default=BenchConfig.timed_steps)
    parser.add_argument("--warmup-steps", type=int, default=BenchConfig.warmup_steps)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="the child's; the parent runs auto's and fp32")
    parser.add_argument("--contender", choices=CONTENDERS, help="run one contender in this process (a child)")
    parser.add_argument("--precisions", default="auto,fp32", help="the races to run, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.contender:
        bench = BenchConfig(timed_steps=args.timed_steps, warmup_steps=args.warmup_steps,
                            precision=resolve_precision(args.precision))
        print(json.dumps(one_run(args.contender, bench)))
        return {}
    began, load_start = time.perf_counter(), os.getloadavg()
    load_model(ModelConfig())  # builds the embedded model's cache once, before any timed child
    precisions = list(dict.fromkeys(resolve_precision(p.strip()) for p in args.precisions.split(",")))
    races = {p: race(p, args.reps, args) for p in precisions}
    machine = machine_info()
    machine.update(load_average_start=[round(x, 2) for x in load_start],
                   load_average_end=[round(x, 2) for x in os.getloadavg()])
    campaign = precisions[0]
    result = {
        "benchmark": "rm_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks.rm_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "model": "SmolLM2-135M-Instruct (embedded)", "data": f"make_demo_pairs({BenchConfig.n_pairs}, seed=0)",
        "schedule": "each contender's whole run in its own process, runs interleaved; the median run reported",
        "timing": "per optimizer step, from its start to its end; warm-up steps excluded",
        # the campaign's precision at the top level (the headline); every precision under "precisions"
        "precision": campaign, "contenders": races[campaign]["contenders"],
        **{k: v for k, v in races[campaign].items() if k.startswith("ratio_")},
        "precisions": races,
        "notes": [
            "Same token ids for all (our chat-template rendering, left-truncated to max_length), same batch, "
            "optimizer settings and precision.",
            "TRL's sequence-classification model computes its 1-wide score head on every position and picks the "
            "last non-pad one; ours runs the head on that position only. Neither runs the 49k-vocabulary LM head.",
            "Ours groups batches by length; trl samples batches at random, trl_grouped by length.",
            "pairs_per_cpu_s uses process CPU time over the same intervals: less sensitive to other processes.",
        ],
        "duration_s": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for precision, raced in races.items():
        print(f"\nRM throughput, {precision}, {BenchConfig.n_pairs} pairs, batch {BenchConfig.batch_size}, peak "
              f"{raced['peak_gflops']['square']:.0f} GFLOP/s")
        for name, run in raced["contenders"].items():
            print(f"  {name:11} {run['pairs_per_s']:6.2f} pairs/s  MFU {100 * run['mfu']:4.1f} %  padded "
                  f"{run['padded_share']:5.1%}  peak RSS {run['peak_rss_mb']:.0f} MB")
        print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in raced.items() if k.startswith("ratio_")))
    print(f"wrote {args.out} ({result['duration_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
