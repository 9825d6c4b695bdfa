"""The PPO loop around :mod:`rlhf.core.ppo`: rollouts, rewards, held-out evaluation, checkpoints.

Per PPO iteration ``s``:

1. **rollouts**: ``batch_size`` training prompts (a seeded permutation of the prompt set, cycled, so the
   prompts of iteration ``s`` are a pure function of ``(seed, s)``) answered once each by the policy
   through the sampling engine at ``temperature`` (1 = its own distribution), seed ``(seed, s)``;
2. **scoring**: the reward function's raw score per answer (the combined RM reward Rc), whitened over
   the batch (``R~c``; LOGIT is the identity for our logit-valued RMs, see ``reward/combine.py``);
3. **update**: log-probs of policy and reference, values, KL-penalised rewards, GAE, one gradient step per
   mini-batch (:func:`rlhf.core.ppo.update`).

The engine's own sampling log-probs are not used as ``old_logp``: a teacher-forced pass recomputes them
with exactly the code path of the update, so the first ratio is exactly 1 and the KL to the reference is
exactly 0 while the policy equals it (KV-cached incremental decoding and bf16 rounding differ slightly).
The gap between the two is reported as ``rollout/logprob_gap`` -- a check on the engine.

**Held-out evaluation** (at the start, every ``eval_every`` iterations and at the end): the mean raw reward
of the policy's answers to ``eval_prompts`` prompts no PPO step trains on, same sampling seed each time
(paired). **Early stopping**: after ``patience`` evaluations without a new best the loop stops; the
returned policy is the best-evaluated one (its weights are restored).

**Checkpoints** (``<work_dir>/checkpoints/step-<s>/state.pt``, written to a temp dir then renamed): policy,
value model, both optimizers, the evaluation history and which best weights go with them. The best weights
so far live on disk, not in memory (``<work_dir>/best/step-<s>.safetensors``, the trained parameters only,
written to a temp file then renamed): a copy of the policy in memory would cost 4 bytes per parameter for
the whole run to be read once at the end. A best file is deleted once neither the run nor a kept checkpoint
names it. The batch plan and every random draw are functions of ``(seed, s)``, so a resumed run continues
exactly where it stopped.

**On several processes** (a launched step, ``rlhf.core.launch``) every process holds the models and the
whole rollout batch: each samples its share of the engine's batches and scores every ``world``-th answer,
and the rows are gathered, so the rollouts are the ones one process would have sampled; the teacher-forced
passes and the update split the micro-batches and sum the gradients (:mod:`rlhf.core.ppo`). The weights
stay identical on every process; the main one alone reports metrics and writes checkpoints.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from .artifacts import atomic_file
from .chat import Message, render_prompt
from .launch import gather_objects, is_main_process, rank, wait_for_everyone, world_size
from .lean_layers import checkpoint_layers, lean_activations, lean_attention
from .models import resolve_precision
from .parking import Parking
from .ppo import PPOConfig, ValueModel, make_batch, make_experience, update
from .progress import progress, quiet
from .reward.combine import whiten
from .sampling import SamplingConfig, TransformersBackend
from .training import (
    TRAINER_STATE,
    InjectedFault,
    MetricsCallback,
    adamw,
    atomic_checkpoint,
    checkpoint_dirs,
    checkpoint_step,
    latest_checkpoint,
    release_memory,
)

# (prompts, answers, unsafe tags) -> (n,) raw rewards
RewardFn = Callable[[Sequence[Sequence[Message]], Sequence[str], Sequence[bool]], torch.Tensor]


@dataclass
class PPOResult:
    steps: int  # PPO iterations run in all (including before a resume)
    reward_start: float  # mean held-out reward of the initial policy
    reward_end: float  # of the returned (best-evaluated) policy
    best_step: int
    kl_end: float  # mean per-answer KL to the reference (summed over tokens) in the last rollout batch; a
    # sample estimate (E[log pi - log pi_0] over sampled tokens), so near 0 it can come out slightly negative
    early_stopped: bool
    resumed_from_step: int
    history: list[dict] = field(default_factory=list)  # every held-out evaluation {"step", "reward"}
    timings: dict[str, float] = field(default_factory=dict)  # mean seconds per iteration: rollout, score, update
    memory: dict[str, int] = field(default_factory=dict)  # bytes held at the end of the run, by part (held_bytes)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def batch_prompts(n_prompts: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts of iteration ``step``: consecutive slices of seeded permutations."""
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n_prompts)
        order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        take = order[offset:offset + batch_size - len(out)]
        out += take
        position += len(take)
    return out


class PPORun:
    """One PPO run's state: models, optimizers, engine, evaluation history."""

    def __init__(self, policy, tokenizer, reference, value_model: ValueModel, reward_fn: RewardFn,
                 cfg: PPOConfig, sampling: SamplingConfig, precision: str, frozen: Sequence[torch.nn.Module] = (),
                 park_dir: Path | None = None):
        self.policy, self.tokenizer, self.reference, self.value = policy, tokenizer, reference, value_model
        self.reward_fn, self.cfg, self.precision = reward_fn, cfg, resolve_precision(precision)
        self.reference.eval().requires_grad_(False)
        # No dropout anywhere: ratios and KL must compare like with like (eval mode still trains).
        self.policy.eval()
        self.value.eval()
        if cfg.lean_activations:  # the gradient passes keep fewer activations; every forward is unchanged
            lean_activations(policy)
            lean_activations(value_model)
        if cfg.lean_attention:  # bf16 gradient passes: the attention's gradient from the fp32 kernel; same forward
            lean_attention(policy)
            lean_attention(value_model)
        if cfg.gradient_checkpointing:  # the gradient passes keep each layer's input only; the same gradients
            checkpoint_layers(policy)
            checkpoint_layers(value_model)
        self.opt_policy = adamw(policy, cfg.lr, cfg)
        self.opt_value = adamw(value_model.own(), cfg.value_lr, cfg)
        self.engine = TransformersBackend(policy, tokenizer, self.precision)
        new_tokens = cfg.max_new_tokens or sampling.max_new_tokens
        self.rollout_cfg = replace(sampling, temperature=cfg.temperature, top_p=1.0, max_new_tokens=new_tokens)
        self.eval_cfg = replace(self.rollout_cfg, temperature=cfg.eval_temperature, seed=cfg.seed + 1)
        # The reference and the reward models (``frozen``) wait in files under ``park_dir`` between their passes
        # (ppo.park_frozen): the update, where memory peaks, holds only the trained models.
        parked = parkable(reference, frozen, trained=(policy, value_model)) \
            if cfg.park_frozen and park_dir is not None else {}
        self.parked_bytes = held_bytes(**parked)  # what they hold while resident (the run's `memory`)
        self.parking = Parking(park_dir, parked) if parked else None

    def frozen_resident(self, *names: str):
        """A block in which the parked models ``names`` ("reference", "reward_models") are in memory."""
        if self.parking is None:
            return nullcontext()
        return self.parking.resident(*[n for n in names if n in self.parking.names])

    def sample(self, messages: list, cfg: SamplingConfig) -> pd.DataFrame:
        """One answer per prompt, sorted by prompt. On several processes each decodes its share of the
        engine's batches and every process gets all the rows (``TransformersBackend.sample``'s ``shard``):
        the answers one process would have sampled."""
        if world_size() == 1:
            part = self.engine.sample(messages, 1, cfg)
        else:
            parts = gather_objects(self.engine.sample(messages, 1, cfg, shard=(rank(), world_size())))
            part = pd.concat([p for p in parts if len(p)], ignore_index=True)
        return part.sort_values("prompt_index").reset_index(drop=True)

    def score(self, messages: list, answers: list[str], tags: list[bool]) -> torch.Tensor:
        """The raw rewards ``(n,)``; on several processes each scores every ``world``-th answer and the
        scores are gathered."""
        world = world_size()
        mine = list(range(rank(), len(answers), world))
        with self.frozen_resident("reward_models"):
            if world == 1:
                return self.reward_fn(messages, answers, tags).float().cpu()
            scores = self.reward_fn([messages[i] for i in mine], [answers[i] for i in mine], [tags[i] for i in mine])
        raw = torch.zeros(len(answers))
        for indices, values in gather_objects((mine, scores.float().cpu().tolist())):
            raw[indices] = torch.tensor(values)
        return raw

    def evaluate(self, prompts: pd.DataFrame) -> float:
        messages = list(prompts.messages)
        answers = self.sample(messages, self.eval_cfg)
        return float(self.score(messages, list(answers.text), list(prompts.safety)).mean())

    def iteration(self, prompts: pd.DataFrame, step: int) -> dict[str, float]:
        """One PPO iteration on ``prompts``; returns its metrics."""
        cfg, t0 = self.cfg, time.perf_counter()
        messages = list(prompts.messages)
        rollouts = self.sample(messages, replace(self.rollout_cfg, seed=cfg.seed * 1_000_003 + step))
        t1 = time.perf_counter()
        raw = self.score(messages, list(rollouts.text), list(prompts.safety))
        scores = whiten(raw)
        t2 = time.perf_counter()
        batch = make_batch([render_prompt(self.tokenizer, m) for m in messages],
                           [torch.tensor(ids, dtype=torch.long) for ids in rollouts.token_ids],
                           self.tokenizer.pad_token_id)
        with self.frozen_resident("reference"):
            exp = make_experience(self.policy, self.reference, self.value, batch, scores, cfg, self.precision)
        engine_logp = torch.zeros_like(exp.logp)
        for i, lp in enumerate(rollouts.logprobs):
            engine_logp[i, :len(lp)] = torch.tensor(list(lp), dtype=torch.float)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        release_memory()  # what sampling, scoring and the experience passes freed: the update starts from its floor
        stats = update(self.policy, self.value, self.opt_policy, self.opt_value, exp, cfg, self.precision, generator)
        t3 = time.perf_counter()
        mask = batch.mask
        kl_per_answer = exp.kl.sum(-1)
        return {"reward/raw_mean": float(raw.mean()), "reward/raw_std": float(raw.std(unbiased=False)),
                "reward/whitened_mean": float(scores.mean()),
                "reward/with_kl_mean": float(exp.rewards.sum(-1).mean()),
                "kl/per_answer": float(kl_per_answer.mean()), "kl/per_token": float(exp.kl.sum() / mask.sum()),
                "response_length": float(mask.sum(-1).mean()),
                "rollout/logprob_gap": float(((engine_logp - exp.logp).abs() * mask).sum() / mask.sum()),
                "value/mean": float((exp.values * mask).sum() / mask.sum()), **stats,
                "batch/rows": float(mask.shape[0]), "batch/width": float(batch.input_ids.shape[1]),
                "batch/answer_width": float(mask.shape[1]),
                "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/update_s": t3 - t2}

    # checkpoints ----------------------------------------------------------------------------------

    def save(self, work_dir: Path, step: int, state: dict) -> None:
        """Checkpoint ``step-<step>`` (the latest two are kept: a damaged one falls back to the other); its
        trainer state names the best file it goes with, so that file outlives it."""
        with atomic_checkpoint(work_dir, step, state={"best_file": state["best_file"]}) as tmp:
            torch.save({"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                        "opt_policy": self.opt_policy.state_dict(), "opt_value": self.opt_value.state_dict(),
                        **state}, tmp / "state.pt")
        prune_best(work_dir, state["best_file"])

    def load(self, ckpt: Path, work_dir: Path) -> dict:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)  # tensors and plain values
        self.policy.load_state_dict(state.pop("policy"))
        self.value.load_state_dict(state.pop("value"))
        self.opt_policy.load_state_dict(state.pop("opt_policy"))
        self.opt_value.load_state_dict(state.pop("opt_value"))
        if "best_policy" in state:  # a checkpoint from before the best weights moved to disk
            state["best_file"] = keep_best(work_dir, state["best"]["step"], state.pop("best_policy"))
        if not (work_dir / BEST_DIR / state["best_file"]).is_file():
            raise FileNotFoundError(f"{ckpt}: the best weights it goes with, {work_dir / BEST_DIR / state['best_file']}"
                                    ", are missing; delete the PPO step's work dir to start it again")
        return state


def run_ppo(policy, tokenizer, reference, value_model: ValueModel, reward_fn: RewardFn, train_prompts: pd.DataFrame,
            eval_prompts: pd.DataFrame, cfg: PPOConfig, sampling: SamplingConfig, work_dir: str | Path,
            on_metrics: MetricsCallback | None = None, precision: str = "auto",
            fail_after_steps: int | None = None, frozen: Sequence[torch.nn.Module] = ()) -> PPOResult:
    """Train ``policy`` in place with PPO against ``reward_fn``; resumes from ``work_dir``'s checkpoint.

    ``reference`` is the frozen pre-PPO policy; prompts are frames with ``messages`` and ``safety``.
    ``frozen``: the other models the run keeps (the reward models), counted in the result's ``memory``.
    """
    cfg.validate()
    work_dir = Path(work_dir)
    run = PPORun(policy, tokenizer, reference, value_model, reward_fn, cfg, sampling, precision, frozen,
                 park_dir=work_dir / f"parked-rank{rank()}")
    try:
        ckpt = latest_checkpoint(work_dir)
        start = checkpoint_step(ckpt)
        if ckpt is not None:
            state = run.load(ckpt, work_dir)
        else:
            first = run.evaluate(eval_prompts)
            state = {"history": [{"step": 0, "reward": first}], "best": {"step": 0, "reward": first},
                     "best_file": keep_best(work_dir, 0, trained_parameters(policy)), "since_best": 0, "kl_end": 0.0,
                     "timings": []}
        early_stopped, step = False, start
        # One bar for the run; the rollouts, scoring and evaluations of each step make none of their own (quiet).
        main = is_main_process()
        with progress(cfg.steps, "ppo", "step", initial=start, leave=True, disable=not main) as bar, quiet():
            for step in range(start, cfg.steps):
                release_memory()  # the last iteration's freed activations and experience go back to the OS
                index = batch_prompts(len(train_prompts), cfg.batch_size, cfg.seed, step)
                metrics = run.iteration(train_prompts.iloc[index].reset_index(drop=True), step)
                state["kl_end"] = metrics["kl/per_answer"]
                state["timings"].append({k: metrics[k] for k in ("time/rollout_s", "time/score_s", "time/update_s")})
                done = step + 1
                if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                    reward = run.evaluate(eval_prompts)
                    state["history"].append({"step": done, "reward": reward})
                    metrics["eval/reward"] = reward
                    if reward > state["best"]["reward"]:  # every process sees the same gathered reward
                        state["best"], state["since_best"] = {"step": done, "reward": reward}, 0
                        state["best_file"] = keep_best(work_dir, done, trained_parameters(policy))
                        prune_best(work_dir, state["best_file"])
                    else:
                        state["since_best"] += 1
                    early_stopped = bool(cfg.patience) and state["since_best"] >= cfg.patience and done < cfg.steps
                if on_metrics is not None and main:
                    on_metrics(metrics, done)
                bar.set_postfix(reward=f"{metrics['reward/raw_mean']:.3f}", kl=f"{metrics['kl/per_answer']:.3f}",
                                refresh=False)
                bar.update(1)
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps and not early_stopped:
                    if main:  # every process holds the same weights: one writes them
                        run.save(work_dir, done, state)
                    wait_for_everyone()
                if fail_after_steps is not None and done == fail_after_steps:
                    raise InjectedFault(f"injected fault after PPO step {done} (fail_after_steps); rerun to resume")
                if early_stopped:
                    break
    except BaseException:  # the caller's frozen models come back whatever happened
        if run.parking is not None:
            run.parking.restore()
        raise
    memory = held_bytes(policy=policy, value=value_model, reference=reference, reward_models=list(frozen),
                        optimizers=[run.opt_policy, run.opt_value])
    memory |= run.parked_bytes  # parked: what the reference and RMs hold during their passes
    # Training is over: the optimizer states and gradients go before the best-evaluated weights (or the
    # last ones) are read back in, or the read would come on top of them
    for optimizer in (run.opt_policy, run.opt_value):
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()
    release_memory()
    if run.parking is not None:  # the frozen models back in memory, as the caller gave them
        run.parking.restore()
    policy.load_state_dict(load_file(work_dir / BEST_DIR / state["best_file"]), strict=False)
    # Every rank has read the best weights before any goes on: the main one ends the step by removing the work
    # dir, and a rank still reading (a busy machine) failed with FileNotFoundError.
    wait_for_everyone()
    timings = pd.DataFrame(state["timings"]).mean().to_dict() if state["timings"] else {}
    return PPOResult(steps=step + 1 if cfg.steps > start else start, reward_start=state["history"][0]["reward"],
                     reward_end=state["best"]["reward"], best_step=state["best"]["step"], kl_end=state["kl_end"],
                     early_stopped=early_stopped, resumed_from_step=start, history=state["history"],
                     timings={k.split("/")[1]: v for k, v in timings.items()}, memory=memory)


def parkable(reference, frozen: Sequence[torch.nn.Module], trained: Sequence[torch.nn.Module]
             ) -> dict[str, list[torch.nn.Module]]:
    """The frozen parts that can wait on disk: ``reference`` and the reward models ``frozen``, each if it
    has parameters and shares none with a ``trained`` model (under LoRA the reference *is* the policy)."""
    trained_ids = {id(p) for model in trained for p in model.parameters()}

    def own(modules):
        return [m for m in modules if next(m.parameters(), None) is not None
                and not any(id(p) in trained_ids for p in m.parameters())]

    parts = {"reference": own([reference]), "reward_models": own(frozen)}
    return {name: modules for name, modules in parts.items() if modules}


def held_bytes(**parts) -> dict[str, int]:
    """Bytes of the tensors each part holds (a module's parameters, their gradients and its buffers; an
    optimizer's state; a dict or list of those), every storage counted once, in the first part that holds
    it: a tied embedding, a value model on the policy's trunk, or a reference that *is* the policy without
    its adapters add nothing. What PPO keeps in memory besides activations."""
    seen: set[int] = set()

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                yield p
                if p.grad is not None:
                    yield p.grad
            yield from obj.buffers()
        elif isinstance(obj, torch.optim.Optimizer):
            for per_param in obj.state.values():
                yield from tensors(list(per_param.values()))
        elif isinstance(obj, dict):
            yield from tensors(list(obj.values()))
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                yield from tensors(item)

    out = {}
    for name, obj in parts.items():
        total = 0
        for t in tensors(obj):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen and storage.nbytes() > 8:  # a scalar step counter: not memory
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        out[name] = total
    return out


BEST_DIR = "best"


def trained_parameters(model) -> dict[str, torch.Tensor]:
    """The trained parameters of ``model`` (all of them, or only its LoRA adapters), on the CPU: enough to
    restore the best weights with ``load_state_dict(..., strict=False)`` (a tied weight appears once)."""
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def keep_best(work_dir: Path, step: int, weights: dict[str, torch.Tensor]) -> str:
    """Write the best weights of ``step`` to ``<work_dir>/best/step-<step>.safetensors`` (the main process;
    a temp file renamed into place) and return the file's name once every process can read it."""
    name = f"step-{step}.safetensors"
    if is_main_process():
        with atomic_file(work_dir / BEST_DIR / name) as tmp:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    wait_for_everyone()
    return name


def prune_best(work_dir: Path, current: str) -> None:
    """Delete the best files that neither the run (``current``) nor a kept checkpoint names."""
    if not is_main_process():
        return
    named = {current}
    for ckpt in checkpoint_dirs(work_dir):
        try:
            named.add(json.loads((ckpt / TRAINER_STATE).read_text()).get("best_file"))
        except (OSError, ValueError):  # a damaged checkpoint is never resumed from
            continue
    for path in (work_dir / BEST_DIR).glob("*.safetensors"):
        if path.name not in named:
            path.unlink(missing_ok=True)
