"""Reward-model training throughput: our RM loop vs TRL's ``RewardTrainer``, same pairs and settings, in one run.

``python -m benchmarks.rm_throughput`` trains a reward model from a fresh copy of the embedded
SmolLM2-135M-Instruct twice, the two loops alternating optimizer steps (``Turns`` from
``benchmarks/sft_throughput.py``: only one computes at a time, so background load on a shared machine hits
both alike):

- **ours**: :func:`rlhf.core.reward.train.train_reward_model` on the shared ``train()`` loop (backbone
  without the LM head + scalar head, chosen and rejected in one forward pass, length-grouped batches);
- **trl**: ``trl.RewardTrainer`` on ``AutoModelForSequenceClassification`` (num_labels=1), whose collator
  also stacks chosen and rejected into one forward pass.

Both get the **same token ids**: 64 simulated-rater pairs (``make_demo_pairs``) rendered by our
``encode_pairs`` with SmolLM2's chat template, given to TRL as a pre-tokenised dataset (``chosen_ids``,
``rejected_ids``, ``margin`` = the "small" table, which TRL subtracts as ours does). Batch 8 pairs without
accumulation, max length 256, fp32 (this CPU has no fast bf16), AdamW with the paper's RM settings, no
gradient checkpointing, no checkpoints written. ``warmup + timed`` steps (2 + 6, one pass over the 64
pairs; ~5 minutes on 2 cores): the warm-up steps are excluded. Pairs/s counts timed pairs over timed wall
seconds; the padded share is pad tokens over all tokens of the timed batches.

Results go to ``benchmarks/results/rm_throughput.json``; a short summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.sft_throughput import Turns, machine_info, run_in_turns  # noqa: E402
from rlhf.core.models import ModelConfig, embedded_model_dir, load_model  # noqa: E402
from rlhf.core.reward import train as rm_train  # noqa: E402
from rlhf.core.reward.model import reward_model_from_policy  # noqa: E402
from rlhf.core.reward.synthetic import make_demo_pairs  # noqa: E402
from rlhf.core.training import warmup_steps_for  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "rm_throughput.json"


@dataclass
class BenchConfig:
    n_pairs: int = 64  # simulated-rater pairs (make_demo_pairs, seed 0)
    batch_size: int = 8  # pairs per optimizer step (16 sequences), no gradient accumulation
    max_length: int = 256  # tokens per (prompt + answer)
    warmup_steps: int = 2  # optimizer steps run but not timed
    timed_steps: int = 6  # optimizer steps timed (with the warm-up: 8 x 8 = the 64 pairs once)
    precision: str = "fp32"  # this CPU has no fast bf16 (bf16 would be emulated, far slower)
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


def _batch_stats(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    rows, width = input_ids.shape
    return {"pairs": rows // 2, "rows": rows, "width": width, "real_tokens": int(attention_mask.sum()),
            "padded_tokens": rows * width}


def run_ours(turns: Turns, pairs, bench: BenchConfig) -> dict:
    """``train_reward_model`` as the platform calls it; its batches are observed through ``collate_pairs``."""
    rm, tokenizer = reward_model_from_policy(ModelConfig(), name="bench", seed=bench.seed,
                                             max_length=bench.max_length)
    cfg = rm_config(bench)
    batches, losses = [], []
    original = rm_train.collate_pairs

    def recording_collate(examples, pad_id):
        batch = original(examples, pad_id)
        batches.append(_batch_stats(batch["input_ids"], batch["attention_mask"]))
        return batch

    def on_metrics(metrics: dict, step: int) -> None:
        losses.append(metrics["loss"])
        turns.step_end("ours")

    rm_train.collate_pairs = recording_collate  # only train_reward_model's collate calls it in this process
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rm-ours-") as work:
            result, _ = rm_train.train_reward_model(rm, tokenizer, pairs, cfg, work, on_metrics, desc="ours",
                                                    precision=bench.precision)
    finally:
        rm_train.collate_pairs = original
    if not (len(batches) == len(losses) == result.steps == bench.total_steps):
        raise RuntimeError(f"ours: expected {bench.total_steps} steps of one batch, got {len(batches)} batches")
    return {
        "label": "ours: rlhf.core.reward.train.train_reward_model (shared train() loop)",
        "model": "backbone (model.base_model, no LM head) + nn.Linear(hidden, 1), reward at the last non-pad token",
        "batching": "length-grouped (sorted within chunks of 16 batches, batches shuffled)",
        "optimizer": {"lr": cfg.lr, "betas": [cfg.adam_beta1, cfg.adam_beta2], "eps": cfg.adam_eps,
                      "weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip,
                      "warmup_steps": warmup_steps_for(cfg, bench.total_steps)},
        "parameters": sum(p.numel() for p in rm.parameters()),
        "steps": [{**b, "loss": loss} for b, loss in zip(batches, losses)],
    }


def run_trl(turns: Turns, examples: list, bench: BenchConfig) -> dict:
    """TRL's RewardTrainer on the same token ids; its batches are observed in ``training_step``."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, PrinterCallback, TrainerCallback
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    cfg = rm_config(bench)
    _, tokenizer = load_model(ModelConfig())
    torch.manual_seed(bench.seed)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir(), num_labels=1,
                                                               dtype=torch.float32)
    dataset = Dataset.from_list([{"chosen_ids": c.tolist(), "rejected_ids": r.tolist(), "margin": m}
                                 for c, r, m in examples])
    batches, losses = [], {}

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            turns.step_end("trl")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    class RecordingRewardTrainer(RewardTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if "margin" not in inputs:
                raise RuntimeError("TRL's batch has no margin column: it would train without the margin")
            batches.append(_batch_stats(inputs["input_ids"], inputs["attention_mask"]))
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
            optim="adamw_torch",
            bf16=False,  # TRL defaults to bf16; fp32 like ours
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
        "label": "trl: RewardTrainer (AutoModelForSequenceClassification, num_labels=1)",
        "model": "LlamaForSequenceClassification: score head on every position, reward at the last non-pad token",
        "batching": f"train_sampling_strategy={args.train_sampling_strategy!r} (the default: random batches)",
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-steps", type=int, default=BenchConfig.timed_steps)
    parser.add_argument("--warmup-steps", type=int, default=BenchConfig.warmup_steps)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    bench = BenchConfig(timed_steps=args.timed_steps, warmup_steps=args.warmup_steps)
    began, load_start = time.perf_counter(), os.getloadavg()

    # 1. The same pairs and token ids for both (also builds the embedded model's cache on a first run).
    pairs = make_demo_pairs(bench.n_pairs, seed=bench.seed)
    _, tokenizer = load_model(ModelConfig())
    examples, report = rm_train.encode_pairs(tokenizer, pairs, bench.max_length, bench.margin)

    # 2. Alternate optimizer steps. Ours first: its train() resets accelerate's process-wide state, which
    # must happen before TRL's Trainer builds its Accelerator.
    jobs = {"ours": lambda turns: run_ours(turns, pairs, bench), "trl": lambda turns: run_trl(turns, examples, bench)}
    turns = Turns(list(jobs))
    runs = run_in_turns(jobs, turns)
    contenders = {name: summarise(runs[name], turns.wall[name], turns.cpu[name], bench) for name in jobs}
    ours, trl = contenders["ours"], contenders["trl"]

    # 3. Report.
    machine = machine_info()
    machine.update(load_average_start=[round(x, 2) for x in load_start],
                   load_average_end=[round(x, 2) for x in os.getloadavg()])
    result = {
        "benchmark": "rm_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks.rm_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "config": {"model": "SmolLM2-135M-Instruct (embedded)", "data": f"make_demo_pairs({bench.n_pairs}, seed=0)",
                   **asdict(bench), "gradient_accumulation": 1, "gradient_checkpointing": False,
                   "tokenized": {"sequences": report.n_sequences, "tokens": report.n_tokens,
                                 "prompt_truncated": report.n_prompt_truncated,
                                 "answer_truncated": report.n_answer_truncated},
                   "schedule": "alternating optimizer steps in one process",
                   "timing": "per optimizer step, from getting the turn to the step's end; warm-up steps excluded"},
        "contenders": contenders,
        "pairs_per_s": {"ours": ours["pairs_per_s"], "trl": trl["pairs_per_s"]},
        "ratio_ours_over_trl": ours["pairs_per_s"] / trl["pairs_per_s"],
        "ratio_per_cpu_second_ours_over_trl": ours["pairs_per_cpu_s"] / trl["pairs_per_cpu_s"],
        "padded_share": {"ours": ours["padded_share"], "trl": trl["padded_share"]},
        "notes": [
            "Same token ids for both (our chat-template rendering, left-truncated to max_length), same batch, "
            "optimizer settings and precision; fp32 because this CPU has no native bf16.",
            "TRL's sequence-classification model computes its 1-wide score head on every position and picks the "
            "last non-pad one; ours runs the head on that position only. Neither runs the 49k-vocabulary LM head.",
            "Ours groups batches by length (less padding); TRL samples batches at random.",
            "pairs_per_cpu_s uses process CPU time over the same intervals: less sensitive to other processes.",
        ],
        "duration_s": round(time.perf_counter() - began, 1),
        "output": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nRM throughput: SmolLM2-135M, fp32, {bench.n_pairs} pairs, batch {bench.batch_size}, "
          f"{bench.timed_steps} timed steps after {bench.warmup_steps} warm-up; load average "
          f"{load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    for name, run in contenders.items():
        print(f"  {name:5} {run['pairs_per_s']:6.2f} pairs/s  {run['real_tokens_per_s']:7.1f} tokens/s  "
              f"padded {run['padded_share']:5.1%}  median step {run['median_step_seconds']:.2f} s")
    print(f"  ratio ours/TRL: {result['ratio_ours_over_trl']:.2f}x (per CPU-second "
          f"{result['ratio_per_cpu_second_ours_over_trl']:.2f}x); wrote {args.out} ({result['duration_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
