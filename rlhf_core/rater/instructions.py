"""Verifiable instructions (IFEval-like): what the simulated user asks for and how to check it.

Each kind has a natural-language text written into the user message, a sampler for its
arguments, a set of kinds it cannot be combined with, a checker: a small pure function
``(answer: str, **args) -> bool``, and a partial credit ``(answer: str, **args) -> float`` in
[0, 1) for an answer the checker fails, by how close it comes (3 of 6 sentences: 0.5). The
checkers are deliberately simple and literal, so a preference derived from them is explainable
line by line (see ``gold.py``).

An instruction is stored as ``{"kind": str, "args": {...}}``; a prompt's instructions are a
JSON list of those (``"[]"`` when none).
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

# Stop-word lists for `detect_language`. A word listed for several languages says nothing,
# so such words are removed from every list below (see `_unambiguous`).
_STOPWORDS = {
    "english": "the and is are of to it that you for with this be have not your can as at by "
               "from or what how they we will i my there which would their yes",
    "french": "le la les et est sont des du une un que qui pour dans avec pas ce cette vous "
              "nous je il elle sur mais ou au aux très peut être fait oui non de à en son ses "
              "leur",
    "spanish": "el la los las y es son una un que para con por del muy pero como su sus se lo "
               "al está están también puede hay sí no yo usted nosotros de en",
    "german": "der die das und ist sind ein eine nicht mit für auf dem den des zu ich sie wir "
              "es auch sich wie oder aber kann sehr ja nein im",
}


def _unambiguous(lists: dict[str, str]) -> dict[str, frozenset[str]]:
    sets = {lang: set(words.split()) for lang, words in lists.items()}
    shared = {w for lang, s in sets.items() for w in s
              if any(w in other for o, other in sets.items() if o != lang)}
    return {lang: frozenset(s - shared) for lang, s in sets.items()}


STOPWORDS = _unambiguous(_STOPWORDS)
_WORD = re.compile(r"[^\W\d_]+")


LANGUAGE_FLOOR = 0.15  # a detected language's stop words are at least this share of the words


def _stopword_hits(text: str) -> tuple[dict[str, int], int]:
    """Stop words of each language in ``text``, and its number of words."""
    words = _WORD.findall(text.lower())
    return {lang: sum(w in stop for w in words) for lang, stop in STOPWORDS.items()}, len(words)


def detect_language(text: str) -> str | None:
    """The language whose stop words are the most frequent in ``text``, or None.

    Heuristic: the winner must beat every other language strictly and its stop words must be
    at least 15 % of the words (real prose is ~30-50 %), so a French word quoted in an English
    answer does not make it French.
    """
    hits, n_words = _stopword_hits(text)
    if not n_words:
        return None
    ranked = sorted(hits.items(), key=lambda kv: kv[1], reverse=True)
    (best, n_best), (_, n_second) = ranked[0], ranked[1]
    if n_best == n_second or n_best < LANGUAGE_FLOOR * n_words:
        return None
    return best


# ---------------------------------------------------------------------------------------------
# Checkers: pure functions (answer, **args) -> bool.

def max_words(answer: str, n: int) -> bool:
    return len(answer.split()) <= n


def sentences(text: str) -> list[str]:
    """Sentences split after . ! ? (abbreviations like "e.g." over-count; accepted)."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if _WORD.search(p)]


def min_sentences(answer: str, n: int) -> bool:
    return len(sentences(answer)) >= n


_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)


def bullet_count(answer: str, n: int) -> bool:
    return len(_BULLET.findall(answer)) == n


def lowercase(answer: str) -> bool:
    return any(c.isalpha() for c in answer) and answer == answer.lower()


def _has_word(answer: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", answer, re.IGNORECASE) is not None


def include_keyword(answer: str, keyword: str) -> bool:
    return _has_word(answer, keyword)


def forbid_word(answer: str, word: str) -> bool:
    return not _has_word(answer, word)


def end_with(answer: str, phrase: str) -> bool:
    """Case-insensitive, trailing whitespace ignored (as IFEval does)."""
    return answer.strip().lower().endswith(phrase.lower())


def language(answer: str, language: str) -> bool:
    return detect_language(answer) == language.lower()


# Emoji code points are "Symbol, other"; skin tones are "Sk", variation selectors "Mn",
# the zero-width joiner of composed emojis "Cf".
_EMOJI_PARTS = {"So", "Sk", "Mn", "Cf"}


def _is_emoji(token: str) -> bool:
    return (any(unicodedata.category(c) == "So" for c in token)
            and all(unicodedata.category(c) in _EMOJI_PARTS for c in token))


def only_emojis(answer: str) -> bool:
    return _is_emoji("".join(answer.split()))


def title_brackets(answer: str) -> bool:
    return re.search(r"<<[^<>\n]*\w[^<>\n]*>>", answer) is not None


def _unfenced(answer: str) -> str:
    return re.sub(r"^```(?:json)?\s*|\s*```$", "", answer.strip())


def json_format(answer: str) -> bool:
    """The whole answer parses as a JSON object or array (a ```json fence is tolerated)."""
    text = _unfenced(answer)
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def no_commas(answer: str) -> bool:
    return "," not in answer


def postscript(answer: str) -> bool:
    return re.search(r"^\s*P\.S\.", answer, re.MULTILINE) is not None


# ---------------------------------------------------------------------------------------------
# Partial credits: pure functions (answer, **args) -> float in [0, 1), asked only of an answer
# its checker fails. A count is scored by how close it comes to its bound, as the ratio of the
# smaller to the larger; a thing to avoid, found c times, earns 1 / (1 + c); a near miss of a
# format earns a fixed share.

def max_words_credit(answer: str, n: int) -> float:
    """n / words: 10 % over the limit earns 0.91, twice the limit 0.5."""
    return n / len(answer.split())


def min_sentences_credit(answer: str, n: int) -> float:
    """sentences / n: 3 of 6 sentences earn 0.5."""
    return len(sentences(answer)) / n


def bullet_count_credit(answer: str, n: int) -> float:
    """min(bullets, n) / max(bullets, n): 2 or 8 bullets for 4 earn 0.5, none earns 0."""
    found = len(_BULLET.findall(answer))
    return min(found, n) / max(found, n)


def lowercase_credit(answer: str) -> float:
    """The share of sentences without a capital letter: ordinary sentence case earns 0."""
    parts = sentences(answer)
    return sum(p == p.lower() for p in parts) / len(parts) if parts else 0.0


def include_keyword_credit(answer: str, keyword: str) -> float:
    """0.5 for another form of the keyword (a word starting with it: "friends" for "friend")."""
    return 0.5 if re.search(rf"\b{re.escape(keyword)}", answer, re.IGNORECASE) else 0.0


def _avoided(count: int) -> float:
    return 1 / (1 + count)


def forbid_word_credit(answer: str, word: str) -> float:
    """1 / (1 + uses): used once 0.5, twice 0.33."""
    return _avoided(len(re.findall(rf"\b{re.escape(word)}\b", answer, re.IGNORECASE)))


def end_with_credit(answer: str, phrase: str) -> float:
    """0.75 when the answer's last words are the phrase's but its characters differ (other
    punctuation, an emoji after it: "Hope this helps!"); 0.5 when the words appear earlier."""
    words, target = _WORD.findall(answer.lower()), _WORD.findall(phrase.lower())
    if words[-len(target):] == target:
        return 0.75
    return 0.5 if any(words[i:i + len(target)] == target for i in range(len(words))) else 0.0


def language_credit(answer: str, language: str) -> float:
    """The asked language's share of the answer's stop words, over at least 15 % of its words
    (the detector's floor): half French, half English earns 0.5."""
    hits, n_words = _stopword_hits(answer)
    total = max(sum(hits.values()), LANGUAGE_FLOOR * n_words)
    return hits[language.lower()] / total if total else 0.0


def only_emojis_credit(answer: str) -> float:
    """The share of the answer's space-separated tokens that are emojis."""
    tokens = answer.split()
    return sum(map(_is_emoji, tokens)) / len(tokens) if tokens else 0.0


def title_brackets_credit(answer: str) -> float:
    """0.5 for a title without the double brackets: a first line of at most 10 words, not a list
    item, not ending in . ! ? or :, with more text after it."""
    lines = answer.strip().splitlines()
    first = lines[0].strip() if lines else ""
    titled = (len(lines) > 1 and 0 < len(first.split()) <= 10 and not _BULLET.match(first)
              and not first.endswith((".", "!", "?", ":")))
    return 0.5 if titled else 0.0


def json_format_credit(answer: str) -> float:
    """0.5 when the answer starts a JSON object or array that does not parse (cut off), or holds
    a JSON object amid other text."""
    text = _unfenced(answer)
    if text.startswith(("{", "[")):
        return 0.5
    start, end = text.find("{"), text.rfind("}")
    return 0.5 if 0 <= start < end and json_format(text[start:end + 1]) else 0.0


def no_commas_credit(answer: str) -> float:
    """1 / (1 + commas)."""
    return _avoided(answer.count(","))


def postscript_credit(answer: str) -> float:
    """0.5 for a P.S. written otherwise ("PS", "P.S" or "P. S." anywhere, not opening a line)."""
    return 0.5 if re.search(r"\bP\.?\s?S\b", answer) else 0.0


# ---------------------------------------------------------------------------------------------
# The catalogue.

@dataclass(frozen=True)
class InstructionKind:
    """One kind of verifiable instruction."""

    name: str
    texts: tuple[str, ...]  # phrasings, formatted with the args
    check: Callable[..., bool]
    credit: Callable[..., float]  # partial credit when ``check`` fails
    sample_args: Callable[[random.Random], dict]
    conflicts: frozenset[str] = frozenset()


def _pick(key: str, values: list) -> Callable[[random.Random], dict]:
    return lambda rng: {key: rng.choice(values)}


def _no_args(rng: random.Random) -> dict:
    return {}


KEYWORDS = ["science", "friend", "history", "simple", "future", "energy", "balance", "practice",
            "curious", "water", "journey", "patience"]
FORBIDDEN = ["very", "really", "important", "basically", "thing", "actually", "good", "just"]
END_PHRASES = ["Is there anything else I can help with?", "Hope this helps.", "That is all.",
               "Thanks for reading!"]
INSTRUCTION_LANGUAGES = ["French", "German"]  # Spanish is kept for held-out GAtt constraints

EXCLUSIVE = {"only_emojis"}  # leaves no room for words: never combined with anything

KINDS: dict[str, InstructionKind] = {k.name: k for k in [
    InstructionKind("max_words", ("Answer in at most {n} words.",
                                  "Use no more than {n} words."),
                    max_words, max_words_credit, _pick("n", [20, 30, 50, 80, 100]),
                    frozenset({"min_sentences"})),
    InstructionKind("min_sentences", ("Write at least {n} sentences.",
                                      "Your answer must contain at least {n} sentences."),
                    min_sentences, min_sentences_credit, _pick("n", [3, 4, 5, 6]),
                    frozenset({"max_words", "bullet_count", "json_format"})),
    InstructionKind("bullet_count", ("Your answer must contain exactly {n} bullet points, "
                                     "each on its own line starting with \"- \".",),
                    bullet_count, bullet_count_credit, _pick("n", [2, 3, 4, 5]),
                    frozenset({"min_sentences", "json_format"})),
    InstructionKind("lowercase", ("Your entire answer must be in lowercase letters; "
                                  "no capital letters are allowed.",),
                    lowercase, lowercase_credit, _no_args,
                    frozenset({"end_with", "postscript"})),
    InstructionKind("include_keyword", ("Include the word \"{keyword}\" in your answer.",),
                    include_keyword, include_keyword_credit, _pick("keyword", KEYWORDS),
                    frozenset({"language"})),
    InstructionKind("forbid_word", ("Do not use the word \"{word}\" anywhere in your answer.",),
                    forbid_word, forbid_word_credit, _pick("word", FORBIDDEN),
                    frozenset({"language"})),
    InstructionKind("end_with", ("Finish your answer with the exact phrase \"{phrase}\". "
                                 "No other words should follow it.",),
                    end_with, end_with_credit, _pick("phrase", END_PHRASES),
                    frozenset({"lowercase", "language", "json_format", "postscript"})),
    InstructionKind("language", ("Answer in {language} only; no other language is allowed.",
                                 "Please reply in {language}."),
                    language, language_credit, _pick("language", INSTRUCTION_LANGUAGES),
                    frozenset({"include_keyword", "forbid_word", "end_with"})),
    InstructionKind("only_emojis", ("Answer only with emojis, no words at all.",),
                    only_emojis, only_emojis_credit, _no_args),
    InstructionKind("title_brackets", ("Give your answer a title wrapped in double angular "
                                       "brackets, such as <<my title>>.",),
                    title_brackets, title_brackets_credit, _no_args, frozenset({"json_format"})),
    InstructionKind("json_format", ("Wrap your entire answer in JSON format.",),
                    json_format, json_format_credit, _no_args,
                    frozenset({"min_sentences", "bullet_count", "end_with", "title_brackets",
                               "no_commas", "postscript"})),
    InstructionKind("no_commas", ("Do not use any commas in your answer.",),
                    no_commas, no_commas_credit, _no_args, frozenset({"json_format"})),
    InstructionKind("postscript", ("At the end of your answer, add a postscript starting "
                                   "with P.S.",),
                    postscript, postscript_credit, _no_args,
                    frozenset({"lowercase", "end_with", "json_format"})),
]}


def compatible(kind: str, chosen: list[str]) -> bool:
    """True if ``kind`` can join ``chosen``; conflicts are read both ways, so the table above
    needs each pair listed on one side only."""
    if chosen and EXCLUSIVE & {kind, *chosen}:
        return False
    return all(kind != other and other not in KINDS[kind].conflicts
               and kind not in KINDS[other].conflicts for other in chosen)


def sample_instructions(rng: random.Random, k: int) -> list[dict]:
    """Up to ``k`` mutually compatible instructions (fewer if the first ones exclude the rest,
    e.g. ``only_emojis``)."""
    chosen: list[dict] = []
    for name in rng.sample(sorted(KINDS), len(KINDS)):
        if len(chosen) == k:
            break
        if compatible(name, [c["kind"] for c in chosen]):
            chosen.append({"kind": name, "args": KINDS[name].sample_args(rng)})
    return chosen


def describe(instruction: dict, rng: random.Random | None = None) -> str:
    """The instruction in natural language (a random phrasing when ``rng`` is given)."""
    texts = KINDS[instruction["kind"]].texts
    text = rng.choice(texts) if rng is not None else texts[0]
    return text.format(**instruction["args"])


def check_instruction(answer: str, instruction: dict) -> bool:
    return KINDS[instruction["kind"]].check(answer, **instruction["args"])


def instruction_credit(answer: str, instruction: dict) -> float:
    """1 when the checker passes, else the kind's partial credit in [0, 1)."""
    kind = KINDS[instruction["kind"]]
    return 1.0 if kind.check(answer, **instruction["args"]) else kind.credit(answer, **instruction["args"])


def _description_pattern(text: str) -> str:
    """A phrasing as a regex, each ``{arg}`` matching any value."""
    return re.sub(r"\\\{\w+\\\}", ".+?", re.escape(text))


_DESCRIPTIONS = re.compile("|".join(_description_pattern(t) for kind in KINDS.values() for t in kind.texts))


def strip_instructions(text: str) -> str:
    """A user message without the instruction descriptions appended to it (any kind, phrasing, args)."""
    return _DESCRIPTIONS.sub(" ", text)


def parse_instructions(value) -> list[dict]:
    """A prompt's instructions from their JSON string (or an already parsed list)."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    return json.loads(value) if isinstance(value, str) else list(value)
