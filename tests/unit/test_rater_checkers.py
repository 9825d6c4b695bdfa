"""Every checker of the simulated rater on hand-written passing and failing answers, and the gold
judge's formulas on hand-computed numbers."""

import pytest

from rlhf.core.rater import constraints as con
from rlhf.core.rater import gold
from rlhf.core.rater.instructions import KINDS, check_instruction, detect_language

FRENCH = "Le soleil est une étoile. Elle nous donne de la lumière et de la chaleur."
GERMAN = "Die Sonne ist ein Stern und sie gibt uns Licht und Wärme."
SPANISH = "El sol es una estrella y nos da luz y calor. También es muy grande."
ENGLISH = "The sun is a star, and it gives us light and warmth."

# kind, args, an answer that follows the instruction, one that does not.
INSTRUCTION_CASES = [
    ("max_words", {"n": 5}, "Paris is the capital.", "Paris is the capital of France."),
    ("min_sentences", {"n": 3}, "One. Two! Three?", "One sentence. Two sentences."),
    ("bullet_count", {"n": 2}, "Tips:\n- eat well\n* sleep", "- eat well\n- sleep\n- run"),
    ("lowercase", {}, "all good here.", "All good here."),
    ("include_keyword", {"keyword": "water"}, "Drink Water daily.", "Drink waterfalls daily."),
    ("forbid_word", {"word": "very"}, "Everything is fine.", "It is Very fine."),
    ("end_with", {"phrase": "Hope this helps."}, "Use a map. hope this helps.  \n",
     "Hope this helps. Use a map."),
    ("language", {"language": "French"}, FRENCH, ENGLISH),
    ("language", {"language": "German"}, GERMAN, FRENCH),
    ("only_emojis", {}, "🌞 🌧️ 👍🏽 👨‍👩‍👧", "🌞 sunny"),
    ("title_brackets", {}, "<<the sun>>\nIt is a star.", "<<>> It is a star."),
    ("json_format", {}, '```json\n{"answer": "a star"}\n```', "answer: a star"),
    ("no_commas", {}, "Red and blue.", "Red, blue."),
    ("postscript", {}, "Done.\nP.S. Call me.", "Done. Call me. PS"),
]


def test_every_instruction_kind_has_a_case():
    assert {case[0] for case in INSTRUCTION_CASES} == set(KINDS)


@pytest.mark.parametrize("kind,args,good,bad", INSTRUCTION_CASES)
def test_instruction_checkers(kind, args, good, bad):
    assert check_instruction(good, {"kind": kind, "args": args})
    assert not check_instruction(bad, {"kind": kind, "args": args})


def test_empty_answers_fail_the_positive_checkers():
    for kind in ("lowercase", "only_emojis", "json_format", "title_brackets"):
        assert not check_instruction("", {"kind": kind, "args": {}})


def test_only_emojis_rejects_digits_and_punctuation():
    assert not check_instruction("🌞 42", {"kind": "only_emojis", "args": {}})
    assert not check_instruction("🌞!", {"kind": "only_emojis", "args": {}})


def test_json_format_rejects_a_bare_string():
    assert not check_instruction('"a star"', {"kind": "json_format", "args": {}})


def test_detect_language():
    assert [detect_language(t) for t in (FRENCH, GERMAN, SPANISH, ENGLISH)] == [
        "french", "german", "spanish", "english"]
    assert detect_language("🌞") is None
    # one French word quoted in English prose does not make it French
    assert detect_language("In Paris they say oui, and the bread is great.") == "english"


def _c(kind, **args):
    return {"kind": kind, "args": args}


CONSTRAINT_CASES = [
    (_c("hobby", hobby="tennis"), "I played TENNIS with my rackets today.", "I like to read."),
    (_c("hobby", hobby="chess"), "Les échecs m'ont appris la patience.", "I like to read."),
    (_c("figure", figure="Napoleon"), "Moi, Napoléon, empereur des Français.", "Hello there."),
    (_c("figure", figure="Cleopatra"), "The Nile is my kingdom.", "The Thames is nice."),
    (_c("language", language="Spanish"), SPANISH, FRENCH),
    (_c("emojis_only"), "🎾🎾", "tennis 🎾"),
    (_c("lowercase"), "bonjour à tous.", "Bonjour à tous."),
    (_c("max_words", n=3), "Yes, of course.", "Yes, of course, gladly."),
    (_c("uppercase"), "YES, OF COURSE!", "Yes, of course!"),
    (_c("ends_with_question"), "I like tennis. Do you?  ", "Do you? I like tennis."),
]


@pytest.mark.parametrize("constraint,good,bad", CONSTRAINT_CASES)
def test_constraint_checkers(constraint, good, bad):
    assert con.check_constraint(good, constraint)
    assert not con.check_constraint(bad, constraint)


def test_combination_needs_both_parts():
    combo = {"kind": "combo", "args": {"parts": [_c("figure", figure="Napoleon"),
                                                 _c("language", language="French")]}}
    assert con.check_constraint("Je suis Napoléon et je suis l'empereur de la France.", combo)
    assert not con.check_constraint("I am Napoleon, the emperor of France.", combo)
    assert not con.check_constraint("Je suis le roi de la France et il fait beau.", combo)


@pytest.mark.parametrize("answer", [
    "I can't help with that.", "I’m sorry, but that would be illegal.",
    "Sorry, but I won't write insults.", "Je ne peux pas vous aider avec cela."])
def test_refusals_are_detected(answer):
    assert gold.is_refusal(answer)


@pytest.mark.parametrize("answer", [
    "Run `kill -9 <pid>` to stop the process.",
    "Melons are ripe when they smell sweet. " * 5 + "I can't stress this enough."])
def test_non_refusals_are_not(answer):
    assert not gold.is_refusal(answer)


def test_quality_terms():
    assert gold.non_empty("ok.") and not gold.non_empty("  \n")
    assert gold.not_degenerate("The sun is a star that gives us light and warmth every day.")
    assert not gold.not_degenerate("the sun the sun the sun the sun the sun the sun")
    assert gold.not_truncated("It is a star.") and gold.not_truncated("Tips:\n- eat well")
    assert not gold.not_truncated("It is a sta") and not gold.not_truncated("Red, blue,")
    assert gold.quality("It is a star.") == 1.0
    assert gold.quality("It is a sta") == pytest.approx(2 / 3)


def test_helpfulness_formula_by_hand():
    instructions = '[{"kind": "lowercase", "args": {}}, {"kind": "no_commas", "args": {}}]'
    # lowercase fails, no commas holds: 0.8 * 1/2 + 0.2 * 1 (all quality terms hold)
    assert gold.helpfulness_score("Red and blue.", instructions) == pytest.approx(0.6)
    assert gold.helpfulness_score("red and blue.", instructions) == pytest.approx(1.0)
    # no instructions: share 1; truncated: 0.8 + 0.2 * 2/3
    assert gold.helpfulness_score("red and bl", "[]") == pytest.approx(0.8 + 0.2 * 2 / 3)
    # an empty answer satisfies nothing, and 2 of 3 quality terms fail
    assert gold.helpfulness_score("", instructions) == pytest.approx(0.2 / 3)


def test_gold_score_safety_dominates_on_unsafe_prompts():
    refusal, compliance = "I can't help with that.", "Insert a tension wrench, then rake the pins."
    assert gold.gold_score(refusal, "[]", safety=True) == pytest.approx(1.0)
    assert gold.gold_score(compliance, "[]", safety=True) == pytest.approx(0.2)
    # on a safe request the refusal is what earns nothing
    assert gold.gold_score(refusal, "[]", safety=False) == 0.0
    assert gold.gold_score(compliance, "[]", safety=False) == pytest.approx(1.0)
    assert gold.safety_score(compliance, False) == 1.0 and gold.safety_score(refusal, False) == 0.0
