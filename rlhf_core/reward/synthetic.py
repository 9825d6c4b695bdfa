"""Demo preference pairs labelled by the simulated rater, so the RM commands run with no data at all.

For each prompt of :func:`rlhf.core.rater.make_prompts` two different answers are written: answers
that follow some of the prompt's instructions and break the others, an answer against a damaged copy
of itself (cut mid-sentence, or looping and cut), and, for requests that look unsafe, a refusal
against a compliance. Each prompt aims at a level drawn from :data:`LEVEL_MIX` and tries a few such
pairs until the gold gap falls in it, so every level gets pairs. Then
:class:`~rlhf.core.annotators.SimulatedAnnotator` labels the pair: the gold judge scores both answers,
the gap sets the level, rater noise may flip the preference. So the levels mean what they mean in the
paper: a "significantly better" pair differs in whole instructions (or in refusing an unsafe request),
a "negligibly better" one in a quality detail, and an RM's accuracy rises with the level.

The answers are built to *intend* a set of instructions; the labels always come from the rater's own
checks, so an answer that misses its intent (a 5-bullet answer cannot also stay under 20 words) is
still labelled correctly.
"""

from __future__ import annotations

import itertools
import json
import random

import pandas as pd

from ..annotators import SimulatedAnnotator
from ..preferences import LEVELS, SAFETY_VIEW, TWO_AXIS_COLUMNS, safer_first
from ..rater.gold import gold_score, last_user_message
from ..rater.instructions import check_instruction, parse_instructions
from ..rater.levels import TIE_EPS, RaterConfig, level_for_gap
from ..rater.prompts import make_prompts

SOURCE = "synthetic"

# Each sentence has a comma (no_commas is broken unless the answer drops them) and none uses a
# keyword the rater may ask for or forbid, so including or avoiding one is a deliberate edit.
SENTENCES = {
    "english": [
        "First, look at the main idea in plain words.",
        "Next, break it into small parts you can check.",
        "In short, each part makes sense on its own.",
        "Also, try one example by hand before moving on.",
        "Then, compare what you expected with what you saw.",
        "After that, write down the one idea you learned.",
        "Finally, come back to it after a day or two.",
        "Above all, go slowly and ask questions.",
    ],
    "french": [
        "D'abord, il faut regarder l'idée principale avec des mots simples.",
        "Ensuite, on peut la découper en petites parties.",
        "En bref, chaque partie a du sens pour elle-même.",
        "Aussi, essayez un exemple à la main avant de continuer.",
        "Puis, comparez ce que vous attendiez avec ce que vous avez vu.",
        "Enfin, revenez sur le sujet après un jour ou deux.",
    ],
    "german": [
        "Zuerst sollte man die Hauptidee mit einfachen Worten ansehen.",
        "Dann kann man sie in kleine Teile zerlegen.",
        "Kurz gesagt, jeder Teil ergibt für sich einen Sinn.",
        "Außerdem sollte man ein Beispiel von Hand probieren, bevor man weitergeht.",
        "Danach vergleicht man, was man erwartet hat, mit dem, was man sieht.",
        "Zum Schluss kommt man nach ein oder zwei Tagen darauf zurück.",
    ],
}
TITLES = {"english": "A Short Guide", "french": "Un petit guide", "german": "Eine kurze Anleitung"}
POSTSCRIPTS = {"english": "P.S. Take it one step at a time, and enjoy it.",
               "french": "P.S. Prenez votre temps, et bonne chance.",
               "german": "P.S. Nehmen Sie sich Zeit, und viel Erfolg."}
EMOJIS = ["🌱 🌍 🌞", "📚 ✨ 🙂", "🚀 🌙 ⭐", "🎵 🎸 🎶"]
REFUSALS = [
    "I'm sorry, but I can't help with that. If something is bothering you, talking it through with "
    "someone you trust is a better way forward.",
    "I can't help with this request, because it could hurt someone. I'm happy to help with something "
    "else, though.",
    "I won't help with that, since it is unfair to other people. Is there another way I can help?",
]
# Levels aimed at, strongest first: near-ties are common in real labels (the paper's Meta Helpful
# data is mostly "slightly" and "negligibly better"), and each level needs enough test pairs.
LEVEL_MIX = (0.2, 0.25, 0.25, 0.3)
ATTEMPTS = 12  # draws per prompt to hit the aimed level; some levels are out of reach for a prompt
COMPLIANCES = [
    "Sure, here is how you can do it. First, pick a quiet moment, and then follow the steps one by one. "
    "Take your time, and check the result at the end.",
    "Of course. Start with the simplest approach, then adjust it as you go. Most people get it right "
    "after a couple of tries.",
    "Here is a quick plan. Get ready, do the main step carefully, and clean up afterwards.",
]


def make_demo_pairs(n: int, seed: int = 0, split: str = "train", unsafe_share: float = 0.1,
                    lookalike_share: float = 0.05, rater: RaterConfig | None = None,
                    axis: str = "helpfulness") -> pd.DataFrame:
    """``n`` labelled pairs in the preference-pair schema (``rlhf.core.preferences``), deterministic
    in its arguments, one pair per prompt, labelled on one ``axis``: ``helpfulness`` (every pair's
    helpfulness preference) or ``safety`` (the safety preference on unsafe requests, the helpfulness one on
    the other prompts: a Safety RM's seed data).

    Columns: prompt, chosen, rejected, level, source ("synthetic"), iteration (0), safety, plus
    pair_id, prompt_id, category, instructions, gold_chosen, gold_rejected (the gold scores on the pairs'
    axis) and p_agree (the chance their label agrees with the gold order: ``SimulatedAnnotator.agreement``).
    ``split`` picks the rater's train or held-out (eval) prompt phrasings; ``rater`` its level thresholds
    and noise.
    """
    rater = (rater or RaterConfig(seed=seed)).validate()
    prompts = make_prompts(n, split, seed, unsafe_share=unsafe_share, lookalike_share=lookalike_share)
    rows = []
    for record in prompts.to_dict("records"):
        rng = random.Random(f"{seed}:{record['prompt_id']}")
        a, b = answer_pair(record, rng.choices(LEVELS, weights=LEVEL_MIX)[0], rater, rng)
        rows.append({"pair_id": f"{record['prompt_id']}-pair", "prompt_id": record["prompt_id"],
                     "prompt": record["messages"], "response_a": a, "response_b": b,
                     "instructions": record["instructions"], "safety": record["safety"],
                     "category": record["category"], "source": SOURCE, "iteration": 0})
    pairs = pd.DataFrame(rows)
    labelled = SimulatedAnnotator(rater).label(pairs)
    labelled["category"] = pairs["category"].to_numpy()
    if axis == "safety":
        labelled = safer_first(labelled)
    first = ["prompt", "chosen", "rejected", "level", "source", "iteration", "safety"]
    # one axis: read as plain pairs, not as a campaign's labels (gold_* and p_agree are the axis' own)
    dropped = {"annotator", *TWO_AXIS_COLUMNS, *SAFETY_VIEW.values()}
    return labelled[first + [c for c in labelled.columns if c not in first and c not in dropped]]


def answer_pair(record: dict, target: str, rater: RaterConfig, rng: random.Random) -> tuple[str, str]:
    """Two different answers to one prompt record whose gold gap falls in level ``target`` when
    possible (a few draws are tried; the last one is kept otherwise), in random order."""
    def gold(answer: str) -> float:
        return gold_score(answer, record["instructions"], record["safety"], last_user_message(record["messages"]))

    for _ in range(ATTEMPTS):
        a, b = _draw_pair(record, rng)
        gap = gold(a) - gold(b)
        if level_for_gap(gap, rater) == target and abs(gap) > TIE_EPS:
            break
    return (a, b) if rng.random() < 0.5 else (b, a)


def _draw_pair(record: dict, rng: random.Random) -> tuple[str, str]:
    """Whole instructions apart (or a refusal against a compliance), or one answer against a damaged
    copy: cut mid-sentence (about half the ``finished`` quality term: ~0.025 of gold) or looping and
    cut (most of the ``variety`` term: ~0.035), plus any instruction credit the damage costs."""
    if record["category"] != "helpful":
        # An unsafe request should be refused; a look-alike (kill a python process) answered.
        answers = [rng.choice(REFUSALS), rng.choice(COMPLIANCES)]
    else:
        instructions = parse_instructions(record["instructions"])
        subsets = [set(kept) for r in range(len(instructions) + 1)
                   for kept in itertools.combinations(range(len(instructions)), r)]
        answers = [build_answer(instructions, kept, rng) for kept in rng.sample(subsets, 2)]
    damage = rng.choice([None, cut_mid_sentence, lambda text: cut_mid_sentence(loop(text))])
    if damage is not None or answers[0].strip() == answers[1].strip():
        answers[1] = (damage or cut_mid_sentence)(answers[rng.randrange(2)])
    return answers[0], answers[1]


def cut_mid_sentence(answer: str) -> str:
    """The answer stopped mid-word (the rater's not_truncated check fails)."""
    words = answer.split(" ")
    return " ".join(words[:max(2, len(words) * 2 // 3)]).rstrip(".!?\n ") + " and the"


def loop(answer: str) -> str:
    """The answer said four times over: degenerate repetition, even after a cut."""
    return " ".join([answer] * 4)


def build_answer(instructions: list[dict], kept: set[int], rng: random.Random) -> str:
    """An answer meant to satisfy exactly the instructions whose index is in ``kept``."""
    want = {item["kind"]: (i in kept, item["args"]) for i, item in enumerate(instructions)}

    def follows(kind: str) -> bool:
        return kind in want and want[kind][0]

    def breaks(kind: str) -> bool:
        return kind in want and not want[kind][0]

    def arg(kind: str, name: str):
        return want[kind][1][name]

    if follows("only_emojis"):
        return rng.choice(EMOJIS)
    lang = arg("language", "language").lower() if follows("language") else "english"
    pool = SENTENCES[lang]
    extra = []  # sentences the instructions add to the body
    if follows("include_keyword"):
        extra.append(f"It all comes down to {arg('include_keyword', 'keyword')}, in the end.")
    if breaks("forbid_word"):
        extra.append(f"This is {arg('forbid_word', 'word')} worth it, in my view.")
    if breaks("only_emojis"):
        extra.append("Here are some words, instead of emojis.")

    def render(n_body: int) -> str:
        body = extra + (pool * 3)[:n_body]
        if follows("bullet_count"):
            body = (extra + pool)[:arg("bullet_count", "n")]
        text = "\n".join(f"- {s}" for s in body) if "bullet_count" in want else " ".join(body)
        if follows("title_brackets"):
            text = f"<<{TITLES[lang]}>>\n{text}"
        elif breaks("title_brackets"):
            text = f"{TITLES[lang]}\n{text}"
        if follows("end_with"):
            text = f"{text} {arg('end_with', 'phrase')}"
        if follows("postscript"):
            text = f"{text}\n\n{POSTSCRIPTS[lang]}"
        if follows("json_format"):
            text = json.dumps({"answer": text}, ensure_ascii=False)
        if follows("lowercase"):
            text = text.lower()
        if follows("no_commas"):
            text = text.replace(",", "")
        return text

    # The body's length decides min_sentences, max_words and a broken bullet_count: take the length
    # nearest 3 sentences whose answer follows exactly the instructions meant (3 if none does).
    for n_body in sorted(range(1, 3 * len(pool) + 1), key=lambda n: abs(n - 3)):
        text = render(n_body)
        if all(check_instruction(text, item) == (i in kept) for i, item in enumerate(instructions)):
            return text
    return render(3)
