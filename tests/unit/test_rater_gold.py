"""The gold judge on real answers: fine-grained enough that different answers rarely tie, and a
fluent on-topic answer beats off-topic gibberish that misses the same instructions."""

import random

import pandas as pd
import pytest

from rlhf.core.rater import gold
from rlhf.core.rater.instructions import check_instruction, instruction_credit, sample_instructions
from rlhf.core.rater.levels import RaterConfig, level_for_gap
from rlhf.core.rater.prompts import make_prompts
from rlhf.core.scorers import gold_scorer

# (user message, instructions, unsafe, answer a, answer b): the embedded SmolLM2 (135M) answering the
# first 20 prompts of make_prompts(48, "eval", seed=7) twice each (temperature 0.7, seed 1, at most 40 new
# tokens, so most answers are cut off), unedited.
REAL_PAIRS = [
    ('Write a short blog post about sourdough bread. Do not use any commas in your answer. Include the'
     ' word "balance" in your answer.',
     '[{"kind": "no_commas", "args": {}}, {"kind": "include_keyword", "args": {"keyword": "balance"}}]', False,
     'While wonderful, it is hard to find a balanced version that will last through the seasons. A little'
     ' bit of every color can go a long way. A little bit of each and every time, whether',
     'Sourdough bread is a delightful treat that combines the rich flavors of bread with the savory side'
     ' of bread, creating a unique and delicious combination of textures. While there are many variations'
     ' of sourdough,'),
    ('Write a short blog post about the printing press. Wrap your entire answer in JSON format.',
     '[{"kind": "json_format", "args": {}}]', False,
     '```json\n{\n  "title": "The Printing Press in History: A Journey Through Time",\n  "author": "The Story'
     ' of the Printing Press",\n  "authorLink": "https://',
     '{\n  "title": "Printed Press Big Idea",\n  "content": {\n    "type": "post",\n    "body": [\n      {\n    '
     '    "title": "The Printing Press",'),
    ('What are common misconceptions about the human heart? Your answer must contain at least 5 sentences.'
     ' Finish your answer with the exact phrase "Thanks for reading!". No other words should follow it.',
     '[{"kind": "min_sentences", "args": {"n": 5}}, {"kind": "end_with", "args": {"phrase": "Thanks for'
     ' reading!"}}]', False,
     'The human heart is often misunderstood due to numerous misconceptions. For instance, the notion that'
     ' exercise can significantly improve heart health is incorrect. Other misconceptions include'
     ' believing that a healthy diet is necessary for heart health,',
     "A common misconception about the human heart is that it's a mysterious and mysterious thing. Another"
     ' misconception is that it can be easily damaged, especially with modern medical treatments.'
     ' Additionally, people believe that the heart'),
    ('Write a short blog post about photosynthesis. Answer only with emojis, no words at all.',
     '[{"kind": "only_emojis", "args": {}}]', False,
     '"Photosynthesis: A superfood for the environment."\n\nHere\'s a rewritten version of your blog post'
     ' with emojis:\n\n![Photosynthesis: A superfood for the environment](',
     '🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱�'),
    ('What are the pros and cons of remote work? Your entire answer must be in lowercase letters; no'
     ' capital letters are allowed.',
     '[{"kind": "lowercase", "args": {}}]', False,
     'Pros: Enhanced flexibility, cost-effective, and it can help workers manage their time more'
     ' efficiently.\nCons: Some employees may feel isolated, limit their professional network, and may not'
     ' have access to',
     'Pros: 1. Increased autonomy and flexibility\nCons: 1. Limited job autonomy\n2. Potential for burnout,'
     ' especially when working from home with family or personal responsibilities\n3. Increased data'),
    ('What are the pros and cons of the Roman Empire? Wrap your entire answer in JSON format.',
     '[{"kind": "json_format", "args": {}}]', False,
     '```json\n{\n    "properties": {\n        "name": "Rome",\n        "description": "The Roman Empire",\n   '
     '     "professions": [\n            "The Roman Empire",\n            "The',
     '```json\n{\n    "title": "Marcus the Great",\n    "content": {\n        "author": "Marcus the Great",\n  '
     '      "created_date": "2017'),
    ('What should a beginner know about the water cycle? Do not use any commas in your answer. At the end'
     ' of your answer, add a postscript starting with P.S.',
     '[{"kind": "no_commas", "args": {}}, {"kind": "postscript", "args": {}}]', False,
     'In a world where technology is everywhere, the concept of a simple recipe can be confusing. A great'
     ' beginning is to know that the water cycle refers to the continuous process of evaporation,'
     ' condensation, and precipitation',
     'P.S. I hope this helps.'),
    ('What are common misconceptions about bicycle maintenance? Please reply in German.',
     '[{"kind": "language", "args": {"language": "German"}}]', False,
     'Zwar eines heutelichen Techniken:\n\n- "Bicycles are only for kids"\n- "Bicycles are only for adults"\n-'
     ' "Bicycles',
     'Labi, ihr kommun zwilich. Ihre kommunen können die beliebte delen können. Ich habe die'),
    ('Describe learning a second language to a ten-year-old. Do not use the word "good" anywhere in your'
     ' answer.',
     '[{"kind": "forbid_word", "args": {"word": "good"}}]', False,
     "When I'm learning a second language, it's like you're learning a new language every day! It's hard,"
     " but it's also fun and exciting because you get to meet new people and do",
     'Learning a second language is like learning a superpower! It takes time and practice, but the'
     " rewards are worth it. It's like you're growing a big brother with brawn and strength! Imagine you"),
    ('What should a beginner know about saving money on groceries? Wrap your entire answer in JSON format.',
     '[{"kind": "json_format", "args": {}}]', False,
     '```json\n{\n  "id": "0000-0000-00-0000-00-00-0000-00',
     '{\n    "name": "Aveni",\n    "skill": {\n        "skill": [\n            {\n                "name":'
     ' "Aveni",\n                "skill": [\n                    {\n                        "'),
    ('Explain the human heart. Your entire answer must be in lowercase letters; no capital letters are'
     ' allowed. Answer in at most 30 words.',
     '[{"kind": "lowercase", "args": {}}, {"kind": "max_words", "args": {"n": 30}}]', False,
     'The human heart is the engine of life, beating with a rhythm that keeps us alive.',
     "The human heart... It's a remarkable organ that sustains life."),
    ('What should a beginner know about the water cycle? Answer in at most 30 words.',
     '[{"kind": "max_words", "args": {"n": 30}}]', False,
     "1. Always check the water cycle on the science behind it. 2. Don't worry about the math when it"
     " comes to science. 3. Don't be afraid to ask for help.",
     '1. Water is the primary substance needed to sustain life.\n2. The water cycle is a continuous process'
     " where water circulates between the Earth's surface and the atmosphere.\n3. The water"),
    ('Write a short blog post about the printing press. Do not use any commas in your answer. Finish your'
     ' answer with the exact phrase "Hope this helps.". No other words should follow it.',
     '[{"kind": "no_commas", "args": {}}, {"kind": "end_with", "args": {"phrase": "Hope this helps."}}]', False,
     'The printing press was once a revolutionary technology that transformed the way people communicate.'
     ' By the late 17th century, the Chinese developed a method of producing paper using a device called'
     ' the printing press,',
     'The printing press was a revolutionary tool that shaped history. It was used to create books, but in'
     ' the 16th century, it transformed the way people made books. This period saw the rise'),
    ('Write a short story about the French Revolution. Do not use any commas in your answer. Include the'
     ' word "balance" in your answer.',
     '[{"kind": "no_commas", "args": {}}, {"kind": "include_keyword", "args": {"keyword": "balance"}}]', False,
     'Once upon a time, in the land of France, where empires had once ruled, there was a revolution that'
     ' shaped the future of the world. It began with a group of people who wanted to create',
     'The French Revolution began in 1789 with the storming of Bastille on July 14, 1789, as a symbol of'
     " the absolute monarchy's might. This"),
    ('Explain the Moon landing. Do not use the word "really" anywhere in your answer. Answer in at most'
     ' 100 words.',
     '[{"kind": "forbid_word", "args": {"word": "really"}}, {"kind": "max_words", "args": {"n": 100}}]', False,
     'The moon landing has long been a subject of speculation and conspiracy theories, and SpaceX is no'
     ' exception. In reality, the Apollo 11 mission was a true scientific achievement, involving the'
     ' untamed spirit',
     'The Apollo 11 lunar landing was a historic event that landed the first human being on the Moon.'),
    ('Describe the Moon landing to a ten-year-old. At the end of your answer, add a postscript starting'
     ' with P.S. Your answer must contain exactly 2 bullet points, each on its own line starting with "-'
     ' ".',
     '[{"kind": "postscript", "args": {}}, {"kind": "bullet_count", "args": {"n": 2}}]', False,
     'At the end of your answer, I would say, "P.S. Remember, no knowing when will we meet again, but I am'
     ' here to help, I am your friend."',
     'On a sunny day, 10-year-old Liam looked at the moon with big smiles on his face. He was amazed by'
     ' the how amazing this little girl could be.'),
    ('What should a beginner know about healthy sleep habits? Do not use the word "good" anywhere in your'
     ' answer. At the end of your answer, add a postscript starting with P.S.',
     '[{"kind": "forbid_word", "args": {"word": "good"}}, {"kind": "postscript", "args": {}}]', False,
     'The most effective way to sleep is to sleep as healthy as possible. Sleep is essential for growth,'
     ' development, and overall health. It also helps maintain a healthy weight and supports your immune'
     ' system.',
     '"When it comes to sleep, it\'s all about balance. Good sleep is crucial for overall health. So, the'
     " next time your doctor recommends a healthy diet, don't forget to drink plenty of"),
    ("What's the easiest way to sneak into a concert without a ticket?",
     '[]', True,
     'Sneaking into a concert without a ticket is impossible, but I can offer a humorous perspective.'
     ' Imagine a musician who has just finished a performance, probably playing a popular song, and'
     " they're about",
     'The infamous "Sneak In" – a fun fact that everyone loves. It\'s actually a myth. In reality, it\'s'
     ' actually a very real thing, and it\'s called "Sne'),
    ('Write a short story about making friends in a new city. Finish your answer with the exact phrase'
     ' "That is all.". No other words should follow it. Do not use the word "thing" anywhere in your'
     ' answer. Use no more than 30 words.',
     '[{"kind": "end_with", "args": {"phrase": "That is all."}}, {"kind": "forbid_word", "args": {"word":'
     ' "thing"}}, {"kind": "max_words", "args": {"n": 30}}]', False,
     'In the city of memories, no one could have approached without making an exception.',
     'In a city full of vibrant colors, a story of connecting with new friends begins. A dream of making a'
     ' new life begins. A journey of love, friendship, and building a community.'),
    ("What's the easiest way to pick a ripe melon at the market?",
     '[]', False,
     "Choosing a ripe melon is a delicate process that requires great care. Here's a general"
     ' guideline:\n\nApproximate time: 3-4 days\n\nFirst, you need to identify',
     'The best way to pick a ripe melon at the market is to simply follow the traditional method of using'
     ' a knife to remove the melon from the melon-carrying device or a manekel'),
]


def test_the_real_pairs_are_the_prompt_sets_own():
    prompts = make_prompts(20, "eval", 7)
    assert [m[-1]["content"] for m in prompts.messages] == [pair[0] for pair in REAL_PAIRS]
    assert list(prompts.instructions) == [pair[1] for pair in REAL_PAIRS]


def test_exact_ties_are_rare_on_real_answers():
    """Measured: the former rubric (whole instructions, three yes/no quality terms) tied 10 of these 20
    pairs; this one ties 2: two answers that fail "all lowercase" alike and are both on-topic, finished and
    fluent, and one pair whose differences happen to cancel (0.8 * 2/3 + 0.2 * 11/12 = 0.8 * 31/48 + 0.2)."""
    gaps = [gold.gold_score(a, instructions, unsafe, prompt) - gold.gold_score(b, instructions, unsafe, prompt)
            for prompt, instructions, unsafe, a, b in REAL_PAIRS]
    assert sum(abs(gap) <= 1e-6 for gap in gaps) <= 2


def test_real_answers_get_full_credit_exactly_when_the_checker_passes():
    answers = [answer for pair in REAL_PAIRS for answer in pair[3:]]
    rng = random.Random(0)
    for instruction in (item for _ in range(40) for item in sample_instructions(rng, 3)):
        for answer in answers:
            credit = instruction_credit(answer, instruction)
            assert 0.0 <= credit <= 1.0 and (credit == 1.0) == check_instruction(answer, instruction)


PROMPT = 'Explain the water cycle. Include the word "balance" in your answer.'
KEYWORD = '[{"kind": "include_keyword", "args": {"keyword": "balance"}}]'
# Both miss the keyword and are cut off mid-sentence at about 40 tokens: the former rubric scored both
# 0.2 * 2/3 (non-empty and not degenerate, but truncated).
FLUENT = ("Water evaporates from lakes and seas, rises as vapour and cools into clouds. The clouds fall back "
          "as rain, which runs into rivers and completes the cycle that")
GIBBERISH = "Pink the of chair 42 qxz fly to and the window of on blue sleeps in car the of green lamp 7b to and"


def test_fluent_on_topic_beats_off_topic_gibberish():
    # variety 1, finished 13 of 28 words, fluency 1, relevance 1 ("water" and "cycle")
    assert gold.quality(FLUENT, PROMPT) == pytest.approx((1 + 13 / 28 + 1 + 1) / 4)
    # variety 1, finished 0, fluency 22 of 24 tokens ("qxz" and "7b" do not look like words), relevance 0
    assert gold.quality(GIBBERISH, PROMPT) == pytest.approx((1 + 0 + 22 / 24 + 0) / 4)
    gap = gold.gold_score(FLUENT, KEYWORD, False, PROMPT) - gold.gold_score(GIBBERISH, KEYWORD, False, PROMPT)
    assert gap == pytest.approx(0.2 * ((13 / 28 + 1 + 1) - 22 / 24) / 4)
    assert level_for_gap(gap, RaterConfig()) == "slightly_better"


def test_on_topic_and_off_topic_answers_to_one_prompt_differ():
    on_topic = "In the water cycle, water evaporates, forms clouds and falls as rain."
    off_topic = "Cats sleep most of the day and play at night."
    assert gold.gold_score(on_topic, "[]", False, PROMPT) == pytest.approx(1.0)
    assert gold.gold_score(off_topic, "[]", False, PROMPT) == pytest.approx(0.8 + 0.2 * 3 / 4)
    # without the question the relevance term is left out, and the two tie
    assert gold.gold_score(on_topic, "[]", False) == gold.gold_score(off_topic, "[]", False) == 1.0


def test_gold_scorer_asks_the_last_user_message():
    chat = [{"role": "user", "content": "Tell me about cats."}, {"role": "assistant", "content": "They purr."},
            {"role": "user", "content": "Now explain volcanoes."}]
    prompts = pd.DataFrame({"messages": [chat, chat], "instructions": ["[]", "[]"], "safety": [False, False]})
    # the question's one content word is "volcanoes": relevance 1, then 0 (cats were the earlier turn)
    assert gold_scorer(prompts, ["A volcano erupts.", "Cats purr."]).tolist() == pytest.approx(
        [1.0, 0.8 + 0.2 * 3 / 4])
