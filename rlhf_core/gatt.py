"""Ghost Attention (Llama 2 §3.3, A.3.5; docs/recipe.md#ghost-attention): multi-turn data that keeps a
system instruction alive, and the per-turn adherence evaluation.

**Data synthesis** (:func:`synthesize`): each dialogue gets a system instruction drawn from the training
constraints (``rater/constraints.py``: hobbies, figures, languages, lengths, styles, and compatible pairs
of them), in its short form ("Figure: Napoleon") ``short_form_share`` of the time. Its user messages are
questions of the prompt set, without the verifiable instructions the rater appends to some
(:func:`user_messages`). Turn by turn, the latest model answers with the instruction **concatenated to every
user message** (:func:`with_instruction`); of ``k`` samples the kept one follows the instruction by its
checker (ties broken by the rater's quality score). A turn where no sample follows ends the dialogue
there (the kept turns all follow it, the point of the exercise).

**Training examples** (:func:`training_examples`): the instruction becomes the system message of the
first turn and is removed from every user message; SFT then trains with ``loss_mode="last"``: the loss is
zero on every token of earlier turns, assistant turns included, and only the last answer is a target.
``examples="every_turn"`` makes one example per kept turn (each turn as the last) instead of one per
dialogue.

**Evaluation** (:func:`adherence`): held-out dialogues (user messages from the eval split, never trained
on) with the instruction only in the system message; the model answers turn after turn, each answer
appended to the chat it sees next, and the checker judges every answer. Adherence at turn ``t`` is the
share of dialogues whose turn-``t`` answer follows the instruction (Table 30's layout); measured for the
training constraints and for held-out ones (kinds and values never trained on: the zero-shot check).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Sequence

import numpy as np
import pandas as pd

from .chat import Message
from .errors import ConfigError
from .progress import progress
from .rater.constraints import check_constraint, make_constraints
from .rater.gold import quality
from .rater.instructions import strip_instructions
from .sampling import SamplingConfig

EXAMPLES = ("last", "every_turn")
MIX_INTO = ("step", "pool")  # where the GAtt dialogues are trained on (gatt.mix_into)


@dataclass
class GAttConfig:
    n_dialogues: int = 64  # training dialogues synthesised
    turns: int = 3  # user turns per training dialogue
    k: int = 4  # samples per turn; the kept one follows the instruction
    short_form_share: float = 0.5  # "Figure: Napoleon" instead of the long form (paper: half the time)
    combinations: bool = True  # also draw pairs of compatible constraints
    examples: str = "last"  # last: one example per dialogue (its last kept turn) | every_turn: one per turn
    temperature: float = 0.8  # sampling of the synthetic answers
    eval_dialogues: int = 16  # held-out dialogues per evaluation (training constraints)
    eval_zero_shot: int = 8  # held-out dialogues with held-out constraints (the zero-shot check)
    eval_turns: int = 4  # turns per evaluation dialogue (paper: up to 20; fewer on CPU)
    eval_temperature: float = 0.0  # greedy answers in the evaluation (deterministic)
    max_new_tokens: int | None = None  # None = sampling.max_new_tokens
    prompt_offset: int = 100_000  # where the user messages start in the generated prompt sets
    constraints: list[str] | None = None  # train (and evaluate "seen") on these constraint ids only; None = all
    seed: int = 0
    # step: a fine-tune of its own after the iteration's policy (and PPO); pool: the dialogues (sampled from the
    # policy the iteration starts from) join train_policy's data, as the paper mixed them into the RLHF data
    mix_into: str = "step"

    def validate(self) -> "GAttConfig":
        if self.examples not in EXAMPLES:
            raise ConfigError("gatt.examples", f"unknown {self.examples!r}; use {' or '.join(EXAMPLES)}")
        if self.mix_into not in MIX_INTO:
            raise ConfigError("gatt.mix_into", f"unknown {self.mix_into!r}; use step (a fine-tune of its own) or pool "
                                               "(the dialogues join the iteration's fine-tune on the pool)")
        if min(self.n_dialogues, self.turns, self.k, self.eval_dialogues, self.eval_turns) < 1:
            raise ConfigError("gatt.n_dialogues", "n_dialogues, turns, k, eval_dialogues and eval_turns must be >= 1")
        return self


# --------------------------------------------------------------------------------------------------
# instructions and messages


def instruction_text(constraint, short: bool) -> str:
    return constraint["short_form"] if short else constraint["long_form"]


def draw_instructions(n: int, held_out: bool, cfg: GAttConfig, seed: int) -> pd.DataFrame:
    """``n`` constraints (with replacement, seeded) and the text each dialogue uses (``instruction``)."""
    catalogue = make_constraints(held_out=held_out, combinations=cfg.combinations)
    if cfg.constraints is not None and not held_out:
        catalogue = catalogue[catalogue.constraint_id.isin(cfg.constraints)].reset_index(drop=True)
        if catalogue.empty:
            known = ", ".join(make_constraints(False, cfg.combinations).constraint_id[:12])
            raise ConfigError("gatt.constraints", f"none of {cfg.constraints} is a training constraint; e.g. {known}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = catalogue.iloc[rng.randrange(len(catalogue))].to_dict()
        rows.append({**c, "instruction": instruction_text(c, rng.random() < cfg.short_form_share)})
    return pd.DataFrame(rows)


def with_instruction(user_messages: Sequence[str], answers: Sequence[str], instruction: str) -> list[Message]:
    """The sampling-time chat: the instruction concatenated to **every** user message, the answers so far
    between them (``len(answers) == len(user_messages) - 1``: the model answers the last one)."""
    messages: list[Message] = []
    for i, user in enumerate(user_messages):
        messages.append({"role": "user", "content": f"{user}\n\n{instruction}"})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def system_chat(instruction: str, user_messages: Sequence[str], answers: Sequence[str]) -> list[Message]:
    """The training/evaluation chat: the instruction once, as the system message; plain user messages."""
    messages: list[Message] = [{"role": "system", "content": instruction}]
    for i, user in enumerate(user_messages):
        messages.append({"role": "user", "content": user})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def training_examples(dialogues: pd.DataFrame, examples: str = "last") -> list[dict]:
    """``{"messages"}`` rows for SFT with ``loss_mode="last"``: per dialogue its whole kept chat, or
    (``every_turn``) each prefix ending at a kept answer."""
    rows = []
    for d in dialogues.itertuples():
        n = len(d.answers)
        ends = range(1, n + 1) if examples == "every_turn" else ([n] if n else [])
        rows += [{"messages": system_chat(d.instruction, list(d.users[:e]), list(d.answers[:e]))} for e in ends]
    return rows


def user_messages(prompts: pd.DataFrame, n_dialogues: int, turns: int) -> list[list[str]]:
    """``n_dialogues`` lists of ``turns`` user messages: the last user turn of consecutive prompts, without
    the verifiable instructions the rater's prompt sets append to a question ("Your answer must contain at
    least 5 sentences."). Kept, they would conflict with the system instruction the dialogue is about (at
    most 20 words, answer in French), and the kept answers, chosen for following the system instruction,
    would teach the model to ignore what the user asked: on the demo's seed 0 that fine-tune cost 11 points of
    win rate against the SFT model (docs/recipe.md#ghost-attention)."""
    texts = [" ".join(strip_instructions(m[-1]["content"]).split()) for m in prompts.messages]
    if len(texts) < n_dialogues * turns:
        raise ConfigError("gatt.n_dialogues", f"{n_dialogues} dialogues x {turns} turns need "
                                              f"{n_dialogues * turns} prompts; only {len(texts)} were given")
    return [texts[i * turns:(i + 1) * turns] for i in range(n_dialogues)]


# --------------------------------------------------------------------------------------------------
# synthesis


def synthesize(backend, users: list[list[str]], instructions: pd.DataFrame, cfg: GAttConfig,
               sampling: SamplingConfig) -> pd.DataFrame:
    """One row per dialogue: ``constraint_id``, ``instruction``, ``users`` (its user messages), ``answers``
    (the kept answers, each following the instruction; fewer than ``users`` when a turn had none) and
    ``followed_share`` per turn of the k samples (how hard the instruction was for the model)."""
    answers: list[list[str]] = [[] for _ in users]
    shares: list[list[float]] = [[] for _ in users]
    alive = list(range(len(users)))
    scfg = replace(sampling, temperature=cfg.temperature,
                   max_new_tokens=cfg.max_new_tokens or sampling.max_new_tokens)
    # The bar counts dialogue turns answered; a dialogue that ends early takes its remaining turns off the total.
    with progress(len(users) * cfg.turns, "gatt dialogues", "turn") as bar:
        for turn in range(cfg.turns):
            if not alive:
                break
            chats = [with_instruction(users[i][:turn + 1], answers[i], instructions.iloc[i].instruction)
                     for i in alive]
            samples = backend.sample(chats, cfg.k, replace(scfg, seed=cfg.seed * 1009 + turn))
            by_chat = samples.groupby("prompt_index").text.apply(list)  # rows come sorted by (prompt, sample)
            still = []
            for j, i in enumerate(alive):
                texts = by_chat[j]
                constraint = instructions.iloc[i]
                follows = [check_constraint(t, constraint) for t in texts]
                shares[i].append(float(np.mean(follows)))
                if any(follows):
                    answers[i].append(max((t for t, ok in zip(texts, follows) if ok),
                                          key=partial(quality, prompt=users[i][turn])))
                    still.append(i)
            bar.total -= (len(alive) - len(still)) * (cfg.turns - turn - 1)
            bar.set_postfix(alive=len(still), refresh=False)
            bar.update(len(alive))
            alive = still
    return pd.DataFrame({"constraint_id": instructions.constraint_id, "instruction": instructions.instruction,
                         "users": users, "answers": answers, "followed_share": shares})


# --------------------------------------------------------------------------------------------------
# evaluation


def converse(backend, users: list[list[str]], instructions: pd.DataFrame, turns: int,
             sampling: SamplingConfig, desc: str = "gatt adherence") -> pd.DataFrame:
    """The model's own multi-turn chats, instruction in the system message only: one row per dialogue and
    turn with ``answer`` and ``follows`` (the checker's judgment). ``desc`` labels the progress bar."""
    answers: list[list[str]] = [[] for _ in users]
    rows = []
    with progress(len(users) * turns, desc, "turn") as bar:
        for turn in range(turns):
            chats = [system_chat(instructions.iloc[i].instruction, users[i][:turn + 1], answers[i])
                     for i in range(len(users))]
            out = backend.sample(chats, 1, replace(sampling, seed=sampling.seed + turn)).sort_values("prompt_index")
            for i, text in enumerate(out.text):
                answers[i].append(text)
                rows.append({"dialogue": i, "turn": turn + 1, "constraint_id": instructions.iloc[i].constraint_id,
                             "answer": text, "follows": bool(check_constraint(text, instructions.iloc[i]))})
            bar.update(len(users))
    return pd.DataFrame(rows)


def adherence_by_turn(judgments: pd.DataFrame) -> dict[int, float]:
    """``{turn: share of dialogues whose answer at that turn follows the instruction}``."""
    if judgments.empty:
        raise ValueError("no judgments: the evaluation had no dialogues")
    return {int(t): float(g.follows.mean()) for t, g in judgments.groupby("turn")}


def adherence(backend, users: list[list[str]], instructions: pd.DataFrame, turns: int,
              sampling: SamplingConfig, desc: str = "gatt adherence") -> tuple[dict[int, float], pd.DataFrame]:
    judged = converse(backend, users, instructions, turns, sampling, desc)
    return adherence_by_turn(judged), judged
