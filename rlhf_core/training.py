"""The training loop shared by SFT, reward models and Ghost Attention fine-tuning.

An *objective* is an ``nn.Module`` whose ``forward(**batch)`` returns a dict of **sums** over the
micro-batch: ``loss_sum`` (a scalar tensor with grad) plus any other sums to report (e.g. ``correct``).
The loop divides every sum by the number of *units* in the whole optimizer batch (target tokens for
SFT, pairs for an RM) — known before the forward pass from ``units(example)`` — so a step's gradient
does not depend on how the batch is split into micro-batches or processes
(batch 8 x 1 step == batch 1 x 8 accumulation).

Batching is length-grouped rather than packed: each optimizer batch is drawn from a seeded permutation,
and a chunk of batches is sorted by length before being cut, so micro-batches hold similar lengths and
little padding. Packing would need block-diagonal attention masks to keep conversations from attending
to each other, which SDPA on CPU does not make cheaper; grouping gets most of the padding gain with the
plain attention path.

Exact resume: the batch plan is a pure function of ``(seed, epoch)``, so resuming at step *s* just
continues the plan at *s*; model, optimizer, scheduler and RNG state come from
``accelerator.save_state`` checkpoints, written to a temp dir and renamed into place.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .digests import check_files, file_records
from .errors import ConfigError, RLHFError
from .launch import is_main_process
from .lean_layers import checkpoint_layers, lean_activations, lean_attention
from .lora import LoRAConfig
from .models import resolve_precision
from .progress import progress

log = logging.getLogger("rlhf")

MetricsCallback = Callable[[dict, int], None]  # (metrics, step) -> None


@dataclass
class TrainConfig:
    lr: float = 2e-5  # Llama 2 SFT (§3.1)
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio (the RM uses 0.1)
    warmup_ratio: float = 0.03  # share of steps with linear warm-up
    min_warmup_steps: int = 0  # at least this many warm-up steps (the RM uses 5)
    weight_decay: float = 0.1  # applied to matrices only, not to norms and biases
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-5
    grad_clip: float = 1.0
    epochs: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps (caps epochs)
    batch_size: int = 64  # examples per optimizer step
    micro_batch_size: int = 8  # examples per forward pass; batch_size / micro = accumulation steps
    group_by_length: bool = True  # length-grouped micro-batches (less padding)
    # decoder layers recomputed in backward (lean_layers.checkpoint_layers): the same gradients, a layer's input
    # kept instead of its activations, one more forward pass of the layers
    gradient_checkpointing: bool = False
    lean_activations: bool = True  # Llama-family norms and MLPs keep fewer activations (lean_layers.py); same forward
    # bf16 passes of up to 256 tokens take the attention's gradient from the fp32 kernel (lean_layers.py): faster,
    # rounded less, the same forward; off by default (docs/design.md#activation-memory: it moved the demo's outcome)
    lean_attention: bool = False
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints (0 = never)
    keep_checkpoints: int = 2  # recent checkpoints kept on disk: a damaged latest one falls back to the one before
    seed: int = 0
    fail_after_steps: int | None = None  # fault injection: raise after this many steps (tests, demos)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # lora.r > 0: train LoRA adapters, merged after (lora.py)


class NonFiniteLossError(RLHFError):
    """Training produced NaN/inf; the last good checkpoint is left untouched."""


class InjectedFault(RLHFError):
    """Raised by ``fail_after_steps``: a deliberate crash to exercise resume."""


@dataclass
class TrainResult:
    steps: int  # optimizer steps done in total (incl. before a resume)
    resumed_from: int  # 0 when started fresh
    history: list[dict] = field(default_factory=list)  # per-step metrics of this run
    final: dict = field(default_factory=dict)  # last step's metrics
    # Sharded training (launch=fsdp) only: the whole state dict of the objective's model (``objective.model``)
    # gathered on the main process; the trained module itself holds shards. {} on the other processes, None
    # when the weights are whole.
    full_state: dict | None = None


# --------------------------------------------------------------------------------------------------
# schedule and batch plan


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    return min(total_steps, max(cfg.min_warmup_steps, math.ceil(cfg.warmup_ratio * total_steps)))


def plan_epoch(lengths: Sequence[int], cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """Optimizer batches of one epoch, each a list of micro-batches of example indices.

    Which examples form a batch depends only on ``(seed, epoch, batch_size)``, never on
    ``micro_batch_size``: that is what makes accumulation invariant.
    """
    rng = random.Random(cfg.seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    if cfg.group_by_length:
        chunk = cfg.batch_size * 16  # sort within chunks of 16 batches: grouped, still shuffled
        sorted_order = []
        for i in range(0, len(order), chunk):
            sorted_order += sorted(order[i:i + chunk], key=lambda j: lengths[j], reverse=True)
        batches = [sorted_order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        rng.shuffle(batches)
    return [[b[i:i + cfg.micro_batch_size] for i in range(0, len(b), cfg.micro_batch_size)] for b in batches]


def steps_per_epoch(n_examples: int, cfg: TrainConfig) -> int:
    return math.ceil(n_examples / cfg.batch_size)


def total_steps_for(n_examples: int, cfg: TrainConfig) -> int:
    total = cfg.epochs * steps_per_epoch(n_examples, cfg)
    return min(total, cfg.max_steps) if cfg.max_steps else total


# --------------------------------------------------------------------------------------------------
# checkpoints


TRAINER_STATE = "trainer_state.json"  # in every checkpoint: {"step": <optimizer steps done>, ...}
CHECKPOINT_FILES = "files.json"  # in every checkpoint, written last: the size and digest of each file


def checkpoint_step(checkpoint: Path | None) -> int:
    """Optimizer steps done when ``checkpoint`` was written; 0 for None (no checkpoint: a fresh start).

    The loops resume from this step and the runners cut their metrics log at it, so the two always agree.
    """
    return json.loads((checkpoint / TRAINER_STATE).read_text())["step"] if checkpoint is not None else 0


def checkpoint_dirs(work_dir: Path) -> list[Path]:
    """``step-<n>`` directories, oldest first (by the number in the name: the state file may be damaged)."""
    found = [p for p in (work_dir / "checkpoints").glob("step-*") if p.name.removeprefix("step-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def _damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a file missing, truncated or changed since it was
    written, an unreadable state), or None."""
    try:
        records = json.loads((checkpoint / CHECKPOINT_FILES).read_text())
        checkpoint_step(checkpoint)
    except (OSError, ValueError, KeyError) as err:
        return f"its {CHECKPOINT_FILES} or {TRAINER_STATE} is unreadable ({type(err).__name__})"
    return check_files(checkpoint, records)


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest checkpoint that is whole. A damaged one (a crash mid-write, a truncated file) is set
    aside with a warning and the one before it is taken; None when none is left (a fresh start). With
    several processes only the main one sets it aside; the others pass over it (damaged, or gone)."""
    for checkpoint in reversed(checkpoint_dirs(work_dir)):
        problem = _damage(checkpoint)
        if problem is None:
            return checkpoint
        if not is_main_process():
            continue
        aside = checkpoint.with_name(f".damaged-{checkpoint.name}")
        log.warning("checkpoint %s is damaged (%s): set aside as %s; resuming from the one before it, if any",
                    checkpoint, problem, aside.name)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(checkpoint, aside)
    return None


@contextmanager
def atomic_checkpoint(work_dir: Path, step: int, keep: int = 2, accelerator=None,
                      state: dict | None = None) -> Iterator[Path]:
    """Yield the temp dir of checkpoint ``work_dir/checkpoints/step-<step>`` to write the state into; when the
    body returns, :data:`TRAINER_STATE` (the step and ``state``, JSON) and :data:`CHECKPOINT_FILES` are
    added, the dir renamed into place and all but the ``keep`` latest checkpoints removed. On error the
    older checkpoints are untouched (the temp dir is cleared by the next save of that step).

    Not :func:`~rlhf.core.artifacts.atomic_dir`: with an ``accelerator`` every process writes its share of
    the state, so the temp dir has a name all of them know (``.tmp-step-<step>``), and only the main
    process prepares, renames and prunes, between barriers.
    """
    root = work_dir / "checkpoints"
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    main = accelerator is None or accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    yield tmp
    if accelerator is not None:  # every process's share (its RNG state) is written before the dir is sealed
        accelerator.wait_for_everyone()
    if main:
        (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **(state or {})}))
        (tmp / CHECKPOINT_FILES).write_text(json.dumps(file_records(tmp)))
        os.replace(tmp, final)
        for old in checkpoint_dirs(work_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------------
# the loop


def sharded_launch() -> bool:
    """True in a rank that ``accelerate launch`` started with an FSDP config (``launch=fsdp``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(precision: str):
    """An Accelerator for this run. In a single process its global state is reset first, so one
    long-lived worker can run an fp32 step after a bf16 one.

    In a rank of ``launch=fsdp`` it shards the model (FSDP2, settings from the ``FSDP_*`` variables that
    ``accelerate launch`` sets from the config file). On CPU ranks accelerate 1.x would silently fall back
    to DDP (it turns only GPU-like distributed types into FSDP), so there the distributed type is set to FSDP
    in both of accelerate's shared states (each new ``AcceleratorState`` copies ``PartialState``'s): FSDP2's
    collectives run on gloo, and 2 CPU processes then train exactly as DDP does
    (tests/integration/test_launch.py). It relies on accelerate's internals, which constraints.txt pins."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    mixed = "bf16" if precision == "bf16" else "no"
    if not sharded_launch():
        return Accelerator(mixed_precision=mixed)
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    accelerator = Accelerator(mixed_precision=mixed, fsdp_plugin=plugin)
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        for state in (PartialState._shared_state, AcceleratorState._shared_state):
            state["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["fsdp_plugin"] = plugin
        if mixed != "no":
            plugin.set_mixed_precision(mixed)
    return accelerator


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """``[decay, no_decay]`` groups of ``module``'s trainable parameters: weight decay on matrices only
    (``ndim >= 2``), since decaying norm gains and biases pulls them to 0 without regularising anything."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(module: nn.Module, lr: float, cfg, sharded: bool = False) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, the optimizer of every training loop; ``cfg`` gives ``weight_decay``,
    ``adam_beta1``, ``adam_beta2`` and ``adam_eps`` (a :class:`TrainConfig` or a ``PPOConfig``).

    The fused kernel where the parameters are plain tensors (not ``sharded`` by FSDP afterwards): one pass per
    parameter instead of ``foreach``'s chain of whole-model temporaries. Measured on SmolLM2-135M (fp32, one
    thread, Xeon with AMX): 0.18 s per step against 0.83 s, and no transient (``foreach`` peaked 0.5 GiB above
    the model and its state, a copy of the weights' size that the C heap then kept). Same update rule."""
    groups = param_groups(module, cfg.weight_decay)
    plain = not sharded and all(type(p.data) is torch.Tensor and p.dtype in (torch.float32, torch.bfloat16)
                for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             **({"fused": True} if plain else {}))


def train(objective: nn.Module, examples: Sequence, collate: Callable[[list], dict],
          units: Callable[[object], int], lengths: Sequence[int], cfg: TrainConfig, work_dir: str | Path,
          on_metrics: MetricsCallback | None = None, desc: str = "train", precision: str = "auto") -> TrainResult:
    """Train ``objective`` on ``examples``; resumes from the latest checkpoint under ``work_dir``.

    ``collate(list_of_examples) -> dict`` of tensors for ``objective.forward``; ``units(example)`` counts
    what the loss is averaged over; ``lengths[i]`` is example i's token length (for grouping);
    ``precision`` is the model's (``auto`` | ``bf16`` autocast | ``fp32``; weights stay fp32).
    Returns a :class:`TrainResult`; the trained weights stay in ``objective``.
    """
    if cfg.batch_size % cfg.micro_batch_size:
        raise ConfigError("batch_size", f"{cfg.batch_size} is not a multiple of micro_batch_size "
                                        f"{cfg.micro_batch_size}")
    work_dir = Path(work_dir)
    precision = resolve_precision(precision)
    accelerator = make_accelerator(precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size < cfg.micro_batch_size * world:
        raise ConfigError("batch_size", f"needs at least micro_batch_size x processes = "
                                        f"{cfg.micro_batch_size * world} examples per step")
    total = total_steps_for(len(examples), cfg)
    per_epoch = steps_per_epoch(len(examples), cfg)
    warmup = warmup_steps_for(cfg, total)

    # 1. Model, optimiser (AdamW, Llama 2 settings by default), cosine schedule with warm-up.
    torch.manual_seed(cfg.seed)
    sharded = accelerator.distributed_type == "FSDP"
    if sharded:
        if cfg.lora.r:
            raise ConfigError("launch.name", "LoRA adapters are merged into whole weights after training, which "
                                             "sharded (FSDP) weights are not: use launch=ddp with LoRA (its memory "
                                             "is small enough to replicate), or lora.r=0 with launch=fsdp")
        # FSDP wraps each of the model's own blocks (its _no_split_modules: the decoder layers) as a unit
        objective._no_split_modules = next((m._no_split_modules for m in objective.modules()
                                            if getattr(m, "_no_split_modules", None)), None)
    if cfg.gradient_checkpointing:  # each decoder layer keeps its input only: the same gradients, one more forward
        checkpoint_layers(objective)
    if cfg.lean_activations:
        lean_activations(objective)
    if cfg.lean_attention:
        lean_attention(objective)
    optimizer = adamw(objective, cfg.lr, cfg, sharded=sharded)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.min_lr_ratio))
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if sharded:
        held = sum(getattr(p, "_local_tensor", p).numel() for p in objective.parameters())
        log.info("%s: weights sharded over %d processes (FSDP): this one holds %d of %d parameters", desc, world,
                 held, sum(p.numel() for p in objective.parameters()))

    # 2. Resume from the latest whole checkpoint, if any. Weights and optimizer state load as tensors
    # only (safetensors and weights_only=True); the schedule's state is JSON in the trainer state.
    ckpt = latest_checkpoint(work_dir)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        scheduler.load_state_dict(json.loads((ckpt / TRAINER_STATE).read_text())["scheduler"])
    start = checkpoint_step(ckpt)
    objective.train()

    # 3. Steps: accumulate micro-batches, normalise by the batch's units, clip, step.
    result = TrainResult(steps=start, resumed_from=start)
    plans: dict[int, list] = {}
    bar = progress(total, desc, "step", initial=start, leave=True, disable=not accelerator.is_main_process)
    for step in range(start, total):
        epoch = step // per_epoch
        if epoch not in plans:
            plans = {epoch: plan_epoch(lengths, cfg, epoch)}
        micro_batches = plans[epoch][step % per_epoch]
        n_units = sum(units(examples[i]) for mb in micro_batches for i in mb)
        mine = micro_batches[rank::world]
        # An epoch's short last batch may leave a process without a micro-batch. It still joins the
        # gradient all-reduce (DDP syncs in backward; a process that skips it stalls the others): it
        # runs the batch's first micro-batch at weight 0 and counts nothing from it.
        idle = not mine
        started = time.perf_counter()
        sums: dict[str, float] = {}
        n_tokens = 0
        for k, indices in enumerate(micro_batches[:1] if idle else mine):
            batch = {key: value.to(accelerator.device) for key, value in
                     collate([examples[i] for i in indices]).items()}
            n_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch and not idle else 0
            sync = idle or k == len(mine) - 1
            with (accelerator.no_sync(objective) if not sync else nullcontext()), accelerator.autocast():
                out = objective(**batch)
                loss = out["loss_sum"] * 0.0 if idle else out["loss_sum"] * world / max(1, n_units)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(_nonfinite_message("loss", step, work_dir))
            accelerator.backward(loss)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + (0.0 if idle else float(value.detach()))
        grad_norm = accelerator.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        if not torch.isfinite(torch.as_tensor(grad_norm)):
            raise NonFiniteLossError(_nonfinite_message("gradient norm", step, work_dir))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if world > 1:
            reduced = accelerator.reduce(torch.tensor(list(sums.values()) + [n_tokens], dtype=torch.float64,
                                                      device=accelerator.device), reduction="sum")
            sums, n_tokens = dict(zip(sums, reduced[:-1].tolist())), int(reduced[-1])
        elapsed = time.perf_counter() - started
        metrics = {k.removesuffix("_sum"): v / max(1, n_units) for k, v in sums.items()}
        # n_tokens: the real tokens of the whole batch (summed over the processes above), so this is the step's
        # throughput whatever the number of processes
        metrics.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm), epoch=epoch, tokens=n_tokens,
                       tokens_per_s=n_tokens / elapsed if elapsed else 0.0)
        result.steps = step + 1
        result.history.append({"step": step + 1, **metrics})
        result.final = metrics
        if on_metrics is not None and accelerator.is_main_process:
            on_metrics(metrics, step + 1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        bar.update(1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            with atomic_checkpoint(work_dir, step + 1, cfg.keep_checkpoints, accelerator,
                                   {"scheduler": scheduler.state_dict()}) as tmp:
                accelerator.save_state(str(tmp))
        if cfg.fail_after_steps is not None and step + 1 == cfg.fail_after_steps:
            bar.close()
            raise InjectedFault(f"injected fault after step {step + 1} (fail_after_steps); rerun to resume")
    bar.close()
    accelerator.wait_for_everyone()
    if sharded:  # every process takes part in the gather; the main one gets the whole weights
        state = accelerator.get_state_dict(objective)
        inner = "model." if hasattr(objective, "model") else ""  # an objective's own model's names
        result.full_state = {k.removeprefix(inner): v for k, v in state.items()}
    return result


def _nonfinite_message(what: str, step: int, work_dir: Path) -> str:
    ckpt = latest_checkpoint(work_dir)
    kept = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
    return (f"{what} became NaN/inf at step {step + 1}; training stopped and {kept}. "
            "Lower the learning rate, use fp32 (model.precision=fp32), or check the data for broken rows.")


def release_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``): without it a
    process that ran a training step keeps its freed optimizer states and activations resident, and every later
    step of the campaign process starts from that plateau (and each PPO iteration from the last one's). A no-op
    where there is no glibc."""
    collect_garbage()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_SIGNALLED: list[int] = []  # the SIGINT/SIGTERM numbers :func:`on_interrupt` handled in this process


def on_interrupt(signum: int, frame) -> None:
    """The SIGINT/SIGTERM handler of a run (the CLI installs it): stop the run by raising KeyboardInterrupt,
    and remember that it did. When the handler runs inside a finalizer (an object's ``__del__`` or a weakref
    callback, during any garbage collection), Python prints that exception and drops it, and the run goes on;
    :func:`raise_if_interrupted`, called where a step starts, raises it again there."""
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if :func:`on_interrupt` handled a signal in this process, even one whose
    exception a finalizer dropped. A no-op otherwise."""
    if _SIGNALLED:
        raise KeyboardInterrupt(f"signal {_SIGNALLED[0]}")


def forget_interrupts() -> None:
    """Start a command with no signal on record (``main`` may run more than once in one process)."""
    _SIGNALLED.clear()


def collect_garbage() -> None:
    """``gc.collect()`` with Ctrl-C and SIGTERM held until it ends. A signal handler that raises while the
    collection runs a finalizer (an object's ``__del__``, a weakref callback) raises inside it, and Python
    prints that exception and drops it: the run the signal should stop went on (a step starts with a
    collection, so a signal sent as a step started was lost on a busy machine). Recorded during the
    collection, the signal's own handler runs after it, where its exception unwinds the run. Signals are
    handled by the main thread only; from another thread this is a plain collection."""
    if threading.current_thread() is not threading.main_thread():
        gc.collect()
        return
    caught: list[tuple[int, object]] = []
    held = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):  # a Python handler (Ctrl-C's default one included); SIG_DFL / SIG_IGN stay
            held[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append((number, frame)))
    try:
        gc.collect()
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
    for signum, frame in caught:
        held[signum](signum, frame)
