"""SFT training throughput: our loop vs TRL's ``SFTTrainer``, same data and settings, in one process.

``python -m benchmarks.sft_throughput`` (``make bench``) fine-tunes a fresh copy of the embedded
SmolLM2-135M-Instruct twice in one process:

- **ours**: :func:`rlhf.core.sft.run_sft` on the shared ``train()`` loop (length-grouped batches, LM head
  only on target positions);
- **trl**: ``trl.SFTTrainer`` with ``assistant_only_loss=True`` (SmolLM2's ChatML template carries no
  ``{% generation %}`` markers and TRL cannot patch it, so the benchmark gives TRL the same template with
  the markers added; it renders byte-identical text, which is checked).

Both see the first 64 conversations of ``rlhf_core/assets/sft_demo.jsonl``, batch 8 without accumulation,
max length 256, the same precision (``--precision``; default bf16 autocast on CPUs with AMX/AVX512-BF16,
fp32 elsewhere), AdamW with the Llama 2 SFT settings of :class:`rlhf.core.training.TrainConfig`,
no gradient checkpointing, no checkpoints written. Each runs ``warmup + timed`` optimizer steps (2 + 8 by
default); the first ``warmup`` steps are excluded. Throughput counts only real (non-pad) tokens.

The two loops run in one process and, by default, *alternate step by step*: each runs in its own thread
and hands the turn to the other at the end of every optimizer step, so only one computes at a time and
background load on a shared machine hits both alike (``--sequential`` runs them back to back instead).
A step's time runs from getting the turn to the end of the optimizer step, so every bit of the loop is
counted once (collate, forward, backward, clipping, optimizer, scheduler, logging, next batch).

Results go to ``benchmarks/results/sft_throughput.json``; a short summary is printed at the end.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.machine import matmul_peaks  # noqa: E402
from rlhf.core import sft  # noqa: E402
from rlhf.core.data import load_conversations, tokenize_conversations  # noqa: E402
from rlhf.core.models import ModelConfig, cpu_has_fast_bf16, load_model  # noqa: E402
from rlhf.core.training import param_groups, warmup_steps_for  # noqa: E402

DATA = Path(sft.__file__).parent / "assets" / "sft_demo.jsonl"
RESULTS = Path(__file__).parent / "results" / "sft_throughput.json"

# SmolLM2-135M-Instruct's own chat template with `{% generation %}` markers around what our masks train on
# (assistant content and its <|im_end|>), so TRL's `assistant_only_loss` can find the assistant tokens.
# It must render exactly the same text as the shipped template: `check_training_template` verifies that.
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class BenchConfig:
    n_conversations: int = 64  # the first N of rlhf_core/assets/sft_demo.jsonl
    batch_size: int = 8  # examples per optimizer step, no gradient accumulation
    max_length: int = 256
    warmup_steps: int = 2  # optimizer steps run but not timed
    timed_steps: int = 8  # optimizer steps timed (8 x 8 = 64 conversations)
    precision: str = "fp32"  # --precision: bf16 autocast for both only on CPUs with fast bf16 (AMX/AVX512-BF16)
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps


def train_config(bench: BenchConfig) -> sft.SFTConfig:
    """Our SFT config: the Llama 2 optimizer defaults of TrainConfig, the benchmark's sizes."""
    per_epoch = math.ceil(bench.n_conversations / bench.batch_size)
    return sft.SFTConfig(
        max_length=bench.max_length, batch_size=bench.batch_size, micro_batch_size=bench.batch_size,
        epochs=math.ceil(bench.total_steps / per_epoch), max_steps=bench.total_steps, checkpoint_every=0,
        gradient_checkpointing=False, seed=bench.seed,
    )


# --------------------------------------------------------------------------------------------------
# machine and model facts


def machine_info() -> dict:
    cpu_model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model in ("unknown", "", "x86_64"):
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "cpu_flags_of_note": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "trl": version("trl"),
        "accelerate": version("accelerate"),
        "datasets": version("datasets"),
    }


def model_facts(model) -> dict:
    cfg = model.config
    head = model.get_output_embeddings().weight
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    return {
        "name": "SmolLM2-135M-Instruct (embedded, dequantised Q4_1 GGUF)",
        "parameters": n_params,
        "non_embedding_parameters": n_params - head.numel(),
        "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


def est_flops(step: dict, facts: dict) -> float:
    """Rough training FLOPs of one step: 6 x non-embedding params per padded token, causal-free attention
    scores, and 6 x hidden x vocab per position the LM head is applied to."""
    d, layers, vocab = facts["hidden_size"], facts["layers"], facts["vocab_size"]
    backbone = 6 * facts["non_embedding_parameters"] * step["padded_tokens"]
    attention = 12 * layers * d * step["rows"] * step["width"] ** 2
    head = 6 * d * vocab * step["head_positions"]
    return float(backbone + attention + head)


# --------------------------------------------------------------------------------------------------
# taking turns


class Turns:
    """Training loops in threads taking turns one optimizer step at a time; only the holder computes.

    A contender calls ``acquire`` once before it starts, ``step_end`` at the end of every optimizer step
    (records the step's wall and process CPU time since it got the turn, hands the turn on, waits for it
    again) and ``finish`` when done. With one name it degenerates to plain back-to-back timing.
    """

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.turn = self.names[0]
        self.done: set[str] = set()
        self.cond = threading.Condition()
        self.wall: dict[str, list[float]] = {n: [] for n in self.names}
        self.cpu: dict[str, list[float]] = {n: [] for n in self.names}
        self._since: dict[str, tuple[float, float]] = {}

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self._since[name] = (time.perf_counter(), time.process_time())

    def step_end(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        wall0, cpu0 = self._since[name]
        self.wall[name].append(wall - wall0)
        self.cpu[name].append(cpu - cpu0)
        print(f"[{name}] step {len(self.wall[name])}: {wall - wall0:.1f} s", flush=True)
        self._hand_on(name)
        self.acquire(name)

    def finish(self, name: str) -> None:
        with self.cond:
            self.done.add(name)
        self._hand_on(name)

    def _hand_on(self, name: str) -> None:
        with self.cond:
            i = self.names.index(name)
            for other in self.names[i + 1:] + self.names[:i]:
                if other not in self.done:
                    self.turn = other
                    break
            self.cond.notify_all()


def run_in_turns(jobs: dict, turns: Turns) -> dict:
    """Run ``jobs[name](turns)`` for every name, each in its own thread, alternating steps."""
    results, errors = {}, {}

    def target(name):
        turns.acquire(name)
        try:
            results[name] = jobs[name](turns)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            errors[name] = err
        finally:
            turns.finish(name)

    threads = [threading.Thread(target=target, args=(name,), name=f"bench-{name}", daemon=True)
               for name in turns.names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        name, err = next(iter(errors.items()))
        raise RuntimeError(f"contender {name!r} failed: {err}") from err
    return results


# --------------------------------------------------------------------------------------------------
# contenders


def _batch_stats(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_targets) -> dict:
    rows, width = input_ids.shape
    return {"rows": rows, "width": width, "real_tokens": int(attention_mask.sum()),
            "padded_tokens": rows * width, "target_tokens": int(n_targets)}


def run_ours(turns: Turns, conversations: list[dict], bench: BenchConfig) -> dict:
    """``run_sft`` as the platform calls it; its batches are observed through ``pad_batch``."""
    model, tokenizer = load_model(ModelConfig())
    facts = model_facts(model)
    cfg = train_config(bench)
    batches, losses = [], []
    original_pad_batch = sft.pad_batch

    def recording_pad_batch(rows, pad_id, side="right"):
        input_ids, attention_mask, loss_mask = original_pad_batch(rows, pad_id, side)
        batches.append(_batch_stats(input_ids, attention_mask, loss_mask[:, 1:].sum()))
        return input_ids, attention_mask, loss_mask

    def on_metrics(metrics: dict, step: int) -> None:
        losses.append(metrics["loss"])
        turns.step_end("ours")

    sft.pad_batch = recording_pad_batch  # only run_sft's collate calls it in this process
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ours-") as work:
            result, report = sft.run_sft(model, tokenizer, conversations, cfg, work, on_metrics=on_metrics,
                                         desc="ours", precision=bench.precision)
    finally:
        sft.pad_batch = original_pad_batch
    if not (len(batches) == len(losses) == result.steps == bench.total_steps):
        raise RuntimeError(f"ours: expected {bench.total_steps} steps with one batch each, got {len(batches)} "
                           f"batches and {len(losses)} steps")
    decay, no_decay = param_groups(model, cfg.weight_decay)
    del model
    return {
        "label": "ours: rlhf.core.sft.run_sft (shared train() loop)",
        "batching": "length-grouped (sorted within chunks of 16 batches, batches shuffled)",
        "lm_head": "on target positions only",
        "loss": "assistant tokens only (rlhf.core.chat loss_mask)",
        "optimizer": {"class": "torch.optim.AdamW (fused)", "lr": cfg.lr, "betas": [cfg.adam_beta1, cfg.adam_beta2],
                      "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip,
                      "schedule": f"linear warm-up {warmup_steps_for(cfg, bench.total_steps)} step(s) "
                                  "from lr/warmup, cosine to 0",
                      "decay_tensors": len(decay["params"]), "no_decay_tensors": len(no_decay["params"])},
        "tokenized": {"conversations": report.n_kept, "tokens": report.n_tokens,
                      "target_tokens": report.n_target_tokens},
        "steps": [{**b, "head_positions": b["target_tokens"], "loss": loss} for b, loss in zip(batches, losses)],
        "model": facts,
    }


def check_training_template(tokenizer, conversations: list[dict]) -> None:
    """The marked-up template must render exactly what the shipped one does, or TRL would train on other text."""
    for i, row in enumerate(conversations):
        for prompt in (False, True):
            messages = row["messages"] if not prompt else row["messages"][:-1]
            shipped = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            marked = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                   chat_template=SMOLLM2_TRAINING_TEMPLATE)
            if shipped != marked:
                raise RuntimeError(f"SMOLLM2_TRAINING_TEMPLATE renders conversation {i} differently from the "
                                   "embedded model's chat template; update it to match")


def run_trl(turns: Turns, conversations: list[dict], bench: BenchConfig, our_examples: list,
            sampling: str = "random") -> dict:
    """TRL's SFTTrainer with assistant-only loss; its batches are observed in ``training_step``.

    ``sampling`` is transformers' ``train_sampling_strategy``: ``random`` (the default) or
    ``group_by_length`` (TRL's own answer to padding, off by default).
    """
    import dataclasses

    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    try:
        from trl.kernels.chunked_logprob import _use_triton
        head_compact = _use_triton(torch.device("cpu"))
    except ImportError:  # another layout: assume the head runs on every position, as 1.16 does on CPU
        head_compact = False

    ours_cfg = train_config(bench)
    model, tokenizer = load_model(ModelConfig())
    facts = model_facts(model)
    check_training_template(tokenizer, conversations)
    tokenizer.chat_template = SMOLLM2_TRAINING_TEMPLATE
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in conversations])
    batches, losses, first_batch = [], {}, {}

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            turns.step_end("trl")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    class RecordingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            batches.append(_batch_stats(inputs["input_ids"], inputs["attention_mask"],
                                        (inputs["labels"][:, 1:] != -100).sum()))
            if not first_batch:
                first_batch.update({k: inputs[k].detach().clone() for k in ("input_ids", "attention_mask", "labels")})
            return super().training_step(model, inputs, num_items_in_batch)

    # TRL defaults to activation (gradient) checkpointing; ours runs without. transformers 5 renamed the option.
    names = {f.name for f in dataclasses.fields(TRLSFTConfig)}
    no_checkpointing = ({"activation_checkpointing": False} if "activation_checkpointing" in names
                        else {"gradient_checkpointing": False})
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir:
        args = TRLSFTConfig(
            output_dir=out_dir,
            assistant_only_loss=True,
            max_length=bench.max_length,
            per_device_train_batch_size=bench.batch_size,
            gradient_accumulation_steps=1,
            max_steps=bench.total_steps,
            learning_rate=ours_cfg.lr,
            lr_scheduler_type="cosine",
            warmup_steps=warmup_steps_for(ours_cfg, bench.total_steps),
            weight_decay=ours_cfg.weight_decay,
            adam_beta1=ours_cfg.adam_beta1,
            adam_beta2=ours_cfg.adam_beta2,
            adam_epsilon=ours_cfg.adam_eps,
            max_grad_norm=ours_cfg.grad_clip,
            optim="adamw_torch_fused",  # transformers' default on torch >= 2.8, and the kernel ours uses
            bf16=bench.precision == "bf16",  # the same precision as ours (TRL's default is bf16)
            fp16=False,
            use_cpu=True,
            **no_checkpointing,
            train_sampling_strategy=sampling,
            packing=False,
            padding_free=False,
            seed=bench.seed,
            data_seed=bench.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = RecordingSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                      callbacks=[StepEnd()])
        trainer.remove_callback(PrinterCallback)
        if getattr(trainer.model, "is_gradient_checkpointing", False):
            raise RuntimeError("TRL enabled gradient checkpointing; the comparison needs it off like ours")
        tokenization = compare_tokenization(trainer.train_dataset, our_examples)
        trainer.train()
    if not (len(batches) == trainer.state.global_step == bench.total_steps):
        raise RuntimeError(f"trl: expected {bench.total_steps} steps with one batch each, got {len(batches)} "
                           f"batches and {trainer.state.global_step} steps")
    check = assistant_only_check(first_batch, our_examples)
    groups = trainer.optimizer.param_groups
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    steps = []
    for k, b in enumerate(batches):
        head = b["target_tokens"] if head_compact else b["rows"] * (b["width"] - 1)
        steps.append({**b, "head_positions": head, "loss": losses.get(k + 1)})
    result = {
        "label": "trl: SFTTrainer, assistant_only_loss=True",
        "batching": f"train_sampling_strategy={args.train_sampling_strategy!r}"
                    + (" (the default: random batches)" if args.train_sampling_strategy == "random" else ""),
        "lm_head": ("TRL's fused chunked LM head, target positions only" if head_compact else
                    "TRL's fused chunked LM head on every position: TRL scores only the target positions with "
                    "Triton on CUDA/XPU; on CPU it projects all of them (prompt and padding included) and "
                    "masks afterwards"),
        "loss": "assistant tokens only ({% generation %} markers in the chat template)",
        "optimizer": {"class": f"{type(inner).__module__}.{type(inner).__name__} "
                               f"(optim={getattr(args.optim, 'value', args.optim)!r})",
                      "lr": args.learning_rate, "betas": [args.adam_beta1, args.adam_beta2],
                      "eps": args.adam_epsilon, "weight_decay": args.weight_decay, "grad_clip": args.max_grad_norm,
                      "schedule": f"linear warm-up {args.warmup_steps} step(s) from 0, cosine to 0",
                      "decay_tensors": sum(len(g["params"]) for g in groups if g["weight_decay"] > 0),
                      "no_decay_tensors": sum(len(g["params"]) for g in groups if g["weight_decay"] == 0)},
        "tokenized": tokenization,
        "assistant_only_check": check,
        "steps": steps,
        "model": facts,
    }
    del trainer, model
    return result


def compare_tokenization(train_dataset, our_examples: list) -> dict:
    """TRL's prepared dataset vs our tokenisation: same token ids, and how many labels each trains on."""
    ours_by_ids = {tuple(e[0].tolist()): e for e in our_examples}
    same_ids = trl_targets = ours_targets = 0
    for row in train_dataset:
        ids = tuple(row["input_ids"])
        trl_targets += sum(1 for label in row["labels"][1:] if label != -100)  # label j is predicted at j - 1
        if ids in ours_by_ids:
            same_ids += 1
            ours_targets += sft.target_count(ours_by_ids[ids])
    if same_ids != len(our_examples):
        raise RuntimeError(f"TRL tokenised only {same_ids}/{len(our_examples)} conversations to the same token "
                           "ids as our loop; the two would not train on the same sequences")
    return {"conversations": len(train_dataset), "same_token_ids_as_ours": same_ids,
            "tokens": sum(len(e[0]) for e in our_examples),
            "target_tokens_trl_labels": trl_targets, "target_tokens_our_loss_mask": ours_targets}


def assistant_only_check(batch: dict, our_examples: list) -> dict:
    """On TRL's first training batch: non-ignored (shifted) labels vs our loss_mask targets for the same rows."""
    ours_by_ids = {tuple(e[0].tolist()): e for e in our_examples}
    ours_targets = rows = 0
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        key = tuple(ids[mask.bool()].tolist())
        if key not in ours_by_ids:
            raise RuntimeError("a row of TRL's batch is not one of our tokenised conversations")
        ours_targets += sft.target_count(ours_by_ids[key])
        rows += 1
    trl_targets = int((batch["labels"][:, 1:] != -100).sum())
    real = int(batch["attention_mask"].sum())
    tolerance = max(2, round(0.02 * ours_targets))
    check = {"batch": "TRL's first training batch", "rows": rows, "real_tokens": real,
             "trl_non_ignored_labels": trl_targets, "our_loss_mask_targets": ours_targets,
             "tolerance": tolerance, "passed": abs(trl_targets - ours_targets) <= tolerance}
    if not check["passed"]:
        raise AssertionError(f"TRL trains on {trl_targets} labels of its first batch, our loss_mask on "
                             f"{ours_targets} for the same conversations: TRL is not assistant-only here")
    if trl_targets > 0.8 * real:
        raise AssertionError(f"TRL's first batch trains {trl_targets} of {real} real tokens: not assistant-only")
    return check


# --------------------------------------------------------------------------------------------------
# summary


def summarise(run: dict, wall: list[float], cpu: list[float], bench: BenchConfig) -> dict:
    steps = [{**s, "seconds": w, "cpu_seconds": c} for s, w, c in zip(run.pop("steps"), wall, cpu, strict=True)]
    facts = run["model"]
    timed = steps[bench.warmup_steps:]
    seconds = sum(s["seconds"] for s in timed)
    cpu_seconds = sum(s["cpu_seconds"] for s in timed)
    real = sum(s["real_tokens"] for s in timed)
    padded = sum(s["padded_tokens"] for s in timed)
    targets = sum(s["target_tokens"] for s in timed)
    flops = sum(est_flops(s, facts) for s in timed)
    return {
        **run,
        "tokens_per_s": real / seconds,
        "target_tokens_per_s": targets / seconds,
        "tokens_per_cpu_s": real / cpu_seconds,
        "padded_share": 1 - real / padded,
        "padded_share_all_steps": 1 - sum(s["real_tokens"] for s in steps) / sum(s["padded_tokens"] for s in steps),
        "timed_steps": len(timed),
        "timed_seconds": seconds,
        "timed_cpu_seconds": cpu_seconds,
        "timed_real_tokens": real,
        "timed_padded_tokens": padded,
        "timed_target_tokens": targets,
        "step_seconds": [round(s["seconds"], 3) for s in timed],
        "warmup_step_seconds": [round(s["seconds"], 3) for s in steps[:bench.warmup_steps]],
        "median_step_seconds": statistics.median(s["seconds"] for s in timed),
        "median_step_tokens_per_s": statistics.median(s["real_tokens"] / s["seconds"] for s in timed),
        "est_gflop_per_s": flops / seconds / 1e9,
        "est_gflop_per_real_token": flops / real / 1e9,
        "per_step": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in steps],
    }


def print_summary(report: dict) -> None:
    m, c = report["machine"], report["config"]
    print()
    print(f"SFT throughput: {c['model']}, {c['precision']} on {m['cpu_model']} ({m['torch_threads']} threads, "
          f"fast bf16: {m['cpu_fast_bf16']}), torch {m['torch']}, trl {m['trl']}")
    print(f"{c['n_conversations']} conversations, batch {c['batch_size']}, max length {c['max_length']}, "
          f"{c['timed_steps']} timed steps after {c['warmup_steps']} warm-up, {c['schedule']}; "
          f"load average {m['load_average_start'][0]:.1f} -> {m['load_average_end'][0]:.1f}")
    print(f"{'':6}{'tokens/s':>10}{'targets/s':>11}{'tok/cpu-s':>11}{'padded':>9}{'median step':>13}"
          f"{'~GFLOP/s':>10}{'MFU':>7}   (peak {report['peak_gflops']['square']:.0f} GFLOP/s)")
    for key, run in report["contenders"].items():
        print(f"{key:6}{run['tokens_per_s']:10.1f}{run['target_tokens_per_s']:11.1f}{run['tokens_per_cpu_s']:11.1f}"
              f"{run['padded_share']:9.1%}{run['median_step_seconds']:12.2f}s{run['est_gflop_per_s']:10.1f}"
              f"{run['mfu']:7.1%}")
    check = report["assistant_only_check"]
    print(f"ratio ours/TRL, real tokens/s: {report['ratio_ours_over_trl']:.2f}x "
          f"(per CPU-second: {report['ratio_per_cpu_second_ours_over_trl']:.2f}x)")
    print(f"assistant-only: TRL's first batch trains {check['trl_non_ignored_labels']} labels, our loss_mask "
          f"{check['our_loss_mask_targets']} for the same conversations; all {c['n_conversations']}: "
          f"{check['all_conversations_trl_labels']} vs {check['all_conversations_our_loss_mask']}")
    print(f"wrote {report['output']} ({report['duration_s']:.0f} s)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-steps", type=int, default=BenchConfig.timed_steps)
    parser.add_argument("--warmup-steps", type=int, default=BenchConfig.warmup_steps)
    parser.add_argument("--sequential", action="store_true",
                        help="run the contenders back to back (ours, then TRL) instead of alternating steps")
    parser.add_argument("--trl-sampling", default="random", choices=["random", "group_by_length"],
                        help="TRL's train_sampling_strategy (default: random, TRL's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16" if cpu_has_fast_bf16() else "fp32",
                        help="both contenders' precision (default: bf16 autocast where the CPU runs it fast)")
    args = parser.parse_args(argv)
    bench = BenchConfig(timed_steps=args.timed_steps, warmup_steps=args.warmup_steps, precision=args.precision)
    began = time.perf_counter()
    load_start = os.getloadavg()
    peak_before = matmul_peaks(bench.precision)["square"]

    conversations = load_conversations(DATA)[:bench.n_conversations]
    _, tokenizer = load_model(ModelConfig())  # also builds the safetensors cache on a first run
    our_examples, _ = tokenize_conversations(tokenizer, conversations, bench.max_length)

    # Ours first: its train() resets accelerate's process-wide state, which must happen before TRL's
    # Trainer builds its Accelerator.
    jobs = {"ours": lambda turns: run_ours(turns, conversations, bench),
            "trl": lambda turns: run_trl(turns, conversations, bench, our_examples, args.trl_sampling)}
    if args.sequential:
        runs, clocks = {}, {}
        for name, job in jobs.items():
            turns = Turns([name])
            runs.update(run_in_turns({name: job}, turns))
            clocks[name] = (turns.wall[name], turns.cpu[name])
            gc.collect()
    else:
        turns = Turns(list(jobs))
        runs = run_in_turns(jobs, turns)
        clocks = {name: (turns.wall[name], turns.cpu[name]) for name in jobs}
    contenders = {name: summarise(runs[name], *clocks[name], bench) for name in jobs}
    # MFU: the analytic model FLOP/s over this machine's matmul peak in the same dtype, measured before and
    # after the race (the better of the two: the ceiling, not the average).
    peak = max(peak_before, matmul_peaks(bench.precision)["square"])
    for run in contenders.values():
        run["mfu"] = run["est_gflop_per_s"] / peak
    ours, trl = contenders["ours"], contenders["trl"]
    check = trl["assistant_only_check"]

    machine = machine_info()
    machine.update(load_average_start=[round(x, 2) for x in load_start],
                   load_average_end=[round(x, 2) for x in os.getloadavg()])
    report = {
        "benchmark": "sft_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks.sft_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "config": {
            "model": "SmolLM2-135M-Instruct", "data": f"first {bench.n_conversations} of {DATA.name}",
            **asdict(bench), "gradient_accumulation": 1, "gradient_checkpointing": False,
            "schedule": "back to back" if args.sequential else "alternating steps",
            "trl_sampling": args.trl_sampling,
            "timing": "per optimizer step, from getting the turn to the step's end; warm-up steps excluded",
            "tokens_counted": "real (non-pad) tokens = attention_mask sum",
        },
        "peak_gflops": {"square": peak, "shape": "2048^3 matmul, the run's dtype, torch's threads"},
        "contenders": contenders,
        "ratio_ours_over_trl": ours["tokens_per_s"] / trl["tokens_per_s"],
        "ratio_target_tokens_ours_over_trl": ours["target_tokens_per_s"] / trl["target_tokens_per_s"],
        "ratio_per_cpu_second_ours_over_trl": ours["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"],
        "ratio_median_step_ours_over_trl": ours["median_step_tokens_per_s"] / trl["median_step_tokens_per_s"],
        "assistant_only_check": {
            **check,
            "all_conversations_trl_labels": trl["tokenized"]["target_tokens_trl_labels"],
            "all_conversations_our_loss_mask": trl["tokenized"]["target_tokens_our_loss_mask"],
        },
        "notes": [
            f"{bench.precision} for both" + ("" if bench.precision == "bf16" else
                                              " (on a CPU without AVX512-BF16/AMX bf16 is emulated and ~100x slower)"),
            "One process, each contender on a fresh model copy; "
            + ("run back to back." if args.sequential else
               "the two loops alternate optimizer steps, so background load hits both alike."),
            "tokens_per_cpu_s uses process CPU time (all threads) over the same intervals; it is less "
            "sensitive to other processes on a shared machine than wall time, but not immune.",
            "est_gflop_per_s is an analytic estimate (6 x non-embedding params per padded token + attention + "
            "6 x hidden x vocab per LM-head position), not a profiler reading.",
            "HF's cosine schedule starts its warm-up at lr 0, ours at lr/warmup; this does not change the work.",
        ],
        "duration_s": round(time.perf_counter() - began, 1),
        "output": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    return report


if __name__ == "__main__":
    main()
