"""Ghost Attention's data and evaluation pieces: where the instruction goes, what is trained on, and the
adherence arithmetic."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from rlhf.core.chat import render_conversation
from rlhf.core.errors import ConfigError
from rlhf.core.gatt import (
    GAttConfig,
    adherence_by_turn,
    draw_instructions,
    synthesize,
    training_examples,
    user_messages,
    with_instruction,
)
from rlhf.core.models import build_tiny_model, build_tiny_tokenizer
from rlhf.core.prompt_sets import PromptsConfig, load_prompt_set
from rlhf.core.sampling import SamplingConfig, TransformersBackend

pytestmark = pytest.mark.usefixtures("one_thread")

INSTRUCTION = "Always answer in lowercase letters only."


def dialogues() -> pd.DataFrame:
    return pd.DataFrame({"constraint_id": ["lowercase", "lowercase"], "instruction": [INSTRUCTION, "Case: lowercase"],
                         "users": [["u1 first", "u1 second", "u1 third"], ["u2 first", "u2 second", "u2 third"]],
                         "answers": [["a1 one", "a1 two", "a1 three"], ["a2 one"]]})


def test_instruction_only_in_the_first_turn_and_only_the_last_answer_is_trained():
    tok = build_tiny_tokenizer()
    rows = training_examples(dialogues(), "every_turn")
    assert len(rows) == 3 + 1  # one per kept turn
    assert len(training_examples(dialogues(), "last")) == 2
    for row in rows:
        messages = row["messages"]
        assert messages[0]["role"] == "system" and messages[0]["content"] in (INSTRUCTION, "Case: lowercase")
        assert all(messages[0]["content"] not in m["content"] for m in messages[1:])
        assert messages[-1]["role"] == "assistant"
        ids, _, mask = render_conversation(tok, messages, mode="last")
        trained = tok.decode(ids[mask])
        assert trained == messages[-1]["content"] + "<|end|>"  # the last answer and its end-of-turn, nothing else
        earlier = [m["content"] for m in messages[:-1]]
        assert not any(text in trained for text in earlier)
    longest = rows[2]["messages"]
    assert [m["content"] for m in longest if m["role"] == "assistant"] == ["a1 one", "a1 two", "a1 three"]


def test_sampling_chat_carries_the_instruction_on_every_user_turn():
    chat = with_instruction(["q1", "q2", "q3"], ["a1", "a2"], "Hobby: chess")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in chat if m["role"] == "user"] == ["q1\n\nHobby: chess", "q2\n\nHobby: chess",
                                                                   "q3\n\nHobby: chess"]


def test_user_messages_are_the_questions_without_the_users_own_instructions():
    """A GAtt dialogue is about the system instruction: a user message that also asks for, say, at least 6
    sentences conflicts with "at most 20 words", and the kept answer would teach the model to ignore it. The
    generated questions are one sentence each, the instructions' descriptions follow it."""
    prompts = load_prompt_set(PromptsConfig(n=24, split="train", seed=0, unsafe_share=0.0, lookalike_share=0.0))
    full = [m[-1]["content"] for m in prompts.messages]
    assert sum(inst != "[]" for inst in prompts.instructions) >= 12  # most questions come with instructions
    users = user_messages(prompts, 8, 3)
    assert [len(d) for d in users] == [3] * 8
    assert [u for d in users for u in d] == [re.match(r".*?[.?!](?=\s|$)", text).group(0) for text in full]


class Spy:
    """The real tiny backend, recording every chat it is asked to answer."""

    def __init__(self, backend):
        self.backend, self.chats = backend, []

    def sample(self, prompts, k, cfg):
        self.chats += [list(p) for p in prompts]
        return self.backend.sample(prompts, k, cfg)


def test_synthesis_reaches_every_user_message_and_keeps_only_following_answers():
    model, tok = build_tiny_model(seed=0)
    spy = Spy(TransformersBackend(model, tok, "fp32"))
    cfg = GAttConfig(n_dialogues=6, turns=3, k=4, constraints=["lowercase"], short_form_share=0.5)
    instructions = draw_instructions(6, False, cfg, seed=0)
    users = [[f"question {d}.{t}" for t in range(3)] for d in range(6)]
    out = synthesize(spy, users, instructions, cfg, SamplingConfig(max_new_tokens=6, seed=0))
    assert spy.chats, "nothing was sampled"
    for chat in spy.chats:
        instruction = next(i for i in instructions.instruction if chat[0]["content"].endswith(i))
        assert all(m["content"].endswith("\n\n" + instruction) for m in chat if m["role"] == "user")
    assert set(instructions.instruction) <= {INSTRUCTION, "Case: lowercase"}
    for row in out.itertuples():
        assert all(a == a.lower() and any(c.isalpha() for c in a) for a in row.answers)  # all follow
        assert len(row.followed_share) >= len(row.answers)
    # a later turn's chat holds the answers kept before it, in order
    kept = out[out.answers.map(len) == 3]
    if len(kept):
        row = kept.iloc[0]
        last_chats = [c for c in spy.chats if len(c) == 5 and c[0]["content"].startswith(row.users[0])]
        assert [m["content"] for m in last_chats[0] if m["role"] == "assistant"] == list(row.answers[:2])


def test_adherence_by_turn_on_hand_made_judgments():
    judged = pd.DataFrame({"dialogue": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], "turn": [1, 2, 3] * 4,
                           "follows": [True, True, False, True, False, False, True, True, True, False, False, False]})
    assert adherence_by_turn(judged) == {1: 0.75, 2: 0.5, 3: 0.25}
    with pytest.raises(ValueError, match="no judgments"):
        adherence_by_turn(judged.iloc[:0])


def test_constraint_choice_is_validated():
    with pytest.raises(ConfigError, match="gatt.constraints"):
        draw_instructions(3, False, GAttConfig(constraints=["speak-klingon"]), seed=0)
    with pytest.raises(ConfigError, match="gatt.examples"):
        GAttConfig(examples="all").validate()
    drawn = draw_instructions(200, False, GAttConfig(), seed=1)
    assert 0.35 < (drawn.instruction == drawn.short_form).mean() < 0.65  # short form about half the time
    assert not draw_instructions(50, True, GAttConfig(), seed=1).held_out.eq(False).any()
