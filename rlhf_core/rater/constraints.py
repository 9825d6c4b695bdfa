"""System-level constraints for Ghost Attention (Llama 2, section 3.3) and their checkers.

A constraint is what the system message asks for during a whole chat ("act as Napoleon",
"always answer in French", "you enjoy tennis"). Each has a long form and a short form
("Figure: Napoleon"), as in the paper, and a checker that decides whether ONE assistant answer
follows it; the GAtt evaluation applies it turn by turn.

Hobbies and public figures are not checkable literally; the heuristic used here: the answer
mentions at least one word of a keyword list (the hobby's or figure's name and a few words
tied to it, with their French/German/Spanish forms so a hobby combined with a language still
passes). Accents are ignored and plurals accepted.

Constraints marked ``held_out`` are never used for GAtt training: they measure zero-shot
transfer (the paper's "always answer with a haiku"). They include kinds absent from training
(uppercase, ends with a question) and new values of training kinds.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

import pandas as pd

from rlhf.core.rater import instructions as inst

HOBBIES = {
    "tennis": ["tennis", "tenis", "racket", "raquette", "raqueta", "schläger", "wimbledon",
               "serve"],
    "gardening": ["garden", "gardening", "jardin", "jardín", "garten", "plant", "flower", "fleur",
                  "flor", "blume"],
    "astronomy": ["astronomy", "astronomie", "astronomía", "telescope", "télescope",
                  "telescopio", "teleskop", "star", "étoile", "estrella", "stern", "planet",
                  "planète", "planeta"],
    "chess": ["chess", "échecs", "ajedrez", "schach", "checkmate", "pawn", "bishop", "rook"],
}
FIGURES = {
    "Napoleon": ["napoleon", "bonaparte", "emperor", "empereur", "emperador", "kaiser", "empire",
                 "austerlitz", "waterloo", "josephine", "corsica", "corse"],
    "Shakespeare": ["shakespeare", "stratford", "globe", "hamlet", "sonnet", "thee", "thou",
                    "verse"],
    "Marie Curie": ["curie", "radium", "polonium", "radioactivity", "radioactivité", "laboratory",
                    "laboratoire", "nobel"],
    "Cleopatra": ["cleopatra", "cléopâtre", "kleopatra", "egypt", "égypte", "egipto", "ägypten",
                  "nile", "nil", "pharaoh", "pharaon", "alexandria", "alexandrie"],
}


def _fold(text: str) -> str:
    """Lowercase without accents, so "Napoléon" matches "napoleon"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def mentions_any(answer: str, keywords: list[str]) -> bool:
    text = _fold(answer)
    return any(re.search(rf"\b{re.escape(_fold(k))}(?:s|es)?\b", text) for k in keywords)


def uppercase(answer: str) -> bool:
    return any(c.isalpha() for c in answer) and answer == answer.upper()


def ends_with_question(answer: str) -> bool:
    return answer.strip().endswith("?")


_CHECKS = {
    "hobby": lambda answer, hobby: mentions_any(answer, HOBBIES[hobby]),
    "figure": lambda answer, figure: mentions_any(answer, FIGURES[figure]),
    "language": inst.language,
    "emojis_only": inst.only_emojis,
    "lowercase": inst.lowercase,
    "max_words": inst.max_words,
    "uppercase": uppercase,
    "ends_with_question": ends_with_question,
}


def _one(kind: str, args: dict, long_form: str, short_form: str, held_out: bool) -> dict:
    value = "-".join(str(v) for v in args.values()).lower().replace(" ", "_")
    cid = f"{kind}-{value}" if value else kind
    return {"constraint_id": cid, "kind": kind, "long_form": long_form, "short_form": short_form,
            "args": args, "held_out": held_out}


# One value of each parametrised kind is kept for the zero-shot check.
HELD_OUT_VALUES = {"hobby": "chess", "figure": "Cleopatra", "language": "Spanish", "max_words": 10}


def _singles() -> list[dict]:
    """The catalogue of single constraints."""
    def held(kind, value):
        return HELD_OUT_VALUES[kind] == value

    out = [_one("hobby", {"hobby": h}, f"You enjoy {h}, and you bring it up in every answer.",
                f"Hobby: {h}", held("hobby", h)) for h in HOBBIES]
    out += [_one("figure", {"figure": f}, f"Act as {f}: answer every message as {f} would, "
                 "in the first person.", f"Figure: {f}", held("figure", f)) for f in FIGURES]
    out += [_one("language", {"language": lang}, f"Always answer in {lang}.",
                 f"Language: {lang}", held("language", lang))
            for lang in ("French", "German", "Spanish")]
    out += [_one("max_words", {"n": n}, f"Always answer in at most {n} words.",
                 f"Length: at most {n} words", held("max_words", n)) for n in (20, 40, 10)]
    out += [
        _one("emojis_only", {}, "Answer only with emojis, never with words.",
             "Style: emojis only", False),
        _one("lowercase", {}, "Always answer in lowercase letters only.", "Case: lowercase",
             False),
        # kinds never seen in training at all
        _one("uppercase", {}, "Always answer in capital letters only.", "Case: uppercase", True),
        _one("ends_with_question", {}, "Always end your answer with a question to the user.",
             "Ending: a question", True),
    ]
    return out


# Pairs of kinds that cannot hold at once: emojis leave no room for words, letter case is
# exclusive, a hobby plus a figure is one persona too many, the same kind twice contradicts.
_EXCLUSIVE = {"emojis_only"}
_CLASHES = {frozenset({"lowercase", "uppercase"}), frozenset({"hobby", "figure"})}


def _compatible(a: dict, b: dict) -> bool:
    kinds = {a["kind"], b["kind"]}
    return len(kinds) == 2 and not kinds & _EXCLUSIVE and kinds not in _CLASHES


def _combine(a: dict, b: dict) -> dict:
    return {"constraint_id": f"{a['constraint_id']}+{b['constraint_id']}", "kind": "combo",
            "long_form": f"{a['long_form']} {b['long_form']}",
            "short_form": f"{a['short_form']}; {b['short_form']}",
            "args": {"parts": [a, b]}, "held_out": a["held_out"] or b["held_out"]}


def make_constraints(held_out: bool, combinations: bool = True) -> pd.DataFrame:
    """Training (``held_out=False``) or zero-shot (``held_out=True``) constraints.

    Combinations of two compatible constraints count as held-out as soon as one part is, so
    nothing held out leaks into training. Columns: constraint_id, kind, long_form, short_form,
    args (dict), held_out (bool).
    """
    singles = _singles()
    rows = singles + ([_combine(a, b) for a, b in itertools.combinations(singles, 2)
                       if _compatible(a, b)] if combinations else [])
    return pd.DataFrame([r for r in rows if r["held_out"] == held_out]).reset_index(drop=True)


def check_constraint(answer: str, constraint) -> bool:
    """Whether one assistant answer follows ``constraint`` (a record dict or DataFrame row)."""
    if constraint["kind"] == "combo":
        return all(check_constraint(answer, part) for part in constraint["args"]["parts"])
    return _CHECKS[constraint["kind"]](answer, **constraint["args"])
