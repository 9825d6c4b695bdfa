"""Progress bars of the long steps: on a terminal or with RLHF_PROGRESS=1 they count to the total with a rate
and an ETA; off a terminal, with RLHF_PROGRESS=0 or under ``quiet`` they print nothing; drawing them does
not change a seeded result."""

import io
import re
import sys

import numpy as np
import pandas as pd
import pytest

from rlhf.core.gatt import GAttConfig, draw_instructions, synthesize
from rlhf.core.models import ModelConfig, build_tiny_model
from rlhf.core.progress import ENV, progress, quiet, shown
from rlhf.core.rejection import search_temperature
from rlhf.core.reward.model import reward_model_from_policy, score
from rlhf.core.sampling import SamplingConfig, TransformersBackend

PROMPTS = [[{"role": "user", "content": "hello " * i}] for i in range(1, 7)]
PROMPT_FRAME = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(4)], "messages": PROMPTS[:4], "safety": False})
CFG = SamplingConfig(temperature=1.0, max_new_tokens=6, batch_prompts=2, seed=3)
RATE_AND_ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(prompt/s|s/prompt)")

pytestmark = pytest.mark.usefixtures("one_thread")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def automatic(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)  # a developer's own setting must not decide these tests


@pytest.fixture(scope="module")
def backend():
    model, tok = build_tiny_model(seed=0)
    return TransformersBackend(model, tok, "fp32")


def last_count(text: str, desc: str) -> tuple[int, int]:
    """The last ``n/total`` drawn by the bar labelled ``desc``."""
    counts = re.findall(re.escape(desc) + r":[^\r\n]*?(\d+)/(\d+) \[", text)
    assert counts, f"no {desc!r} bar in {text!r}"
    return tuple(map(int, counts[-1]))


def test_forced_on_sampling_counts_prompts_to_the_total_with_rate_and_eta(backend, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    backend.sample(PROMPTS, 2, CFG)
    err = capsys.readouterr().err
    assert last_count(err, "sample T=1 x2") == (6, 6)
    assert RATE_AND_ETA.search(err), err


def test_not_a_terminal_and_no_env_var_prints_nothing(backend, capsys):
    assert not shown()
    backend.sample(PROMPTS, 2, CFG)
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_the_bar_and_env_zero_turns_it_off(backend, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert shown()
    backend.sample(PROMPTS, 1, CFG)
    assert last_count(sys.stderr.getvalue(), "sample T=1") == (6, 6)

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setenv(ENV, "0")
    assert not shown()
    backend.sample(PROMPTS, 1, CFG)
    assert sys.stderr.getvalue() == ""


def test_quiet_and_the_callers_veto_beat_the_env_var(backend, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    with quiet():
        assert not shown()
        backend.sample(PROMPTS, 1, CFG)
    with progress(3, "vetoed", disable=True) as bar:  # e.g. training on a process other than the main one
        bar.update(3)
    assert capsys.readouterr().err == ""
    assert shown() and not shown(disable=True)


def test_bars_do_not_change_seeded_samples(backend, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    with_bar = backend.sample(PROMPTS, 3, CFG)
    monkeypatch.setenv(ENV, "0")
    without = backend.sample(PROMPTS, 3, CFG)
    assert list(with_bar.token_ids) == list(without.token_ids)
    assert list(with_bar.logprobs) == list(without.logprobs)


def test_temperature_search_counts_temperatures_times_prompts(backend, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    search_temperature(backend, PROMPT_FRAME, [0.6, 1.2], 2, SamplingConfig(max_new_tokens=4),
                       lambda frame, answers: np.array([len(a) for a in answers], dtype=float))
    assert last_count(capsys.readouterr().err, "temperature search") == (2 * len(PROMPT_FRAME),) * 2


def test_reward_scoring_counts_answers(monkeypatch, capsys):
    rm, tok = reward_model_from_policy(ModelConfig("tiny"), name="helpful", seed=0, max_length=64)
    monkeypatch.setenv(ENV, "1")
    score(rm, tok, PROMPTS[:5], ["ok", "fine", "a longer answer", "no", "yes"], batch_size=2)
    assert last_count(capsys.readouterr().err, "score helpful") == (5, 5)


def test_gatt_synthesis_total_shrinks_when_dialogues_end(backend, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    cfg = GAttConfig(n_dialogues=4, turns=3, k=2, constraints=["lowercase"])
    users = [[f"question {d}.{t}" for t in range(3)] for d in range(4)]
    out = synthesize(backend, users, draw_instructions(4, False, cfg, seed=0), cfg,
                     SamplingConfig(max_new_tokens=6, seed=0))
    answered = sum(len(shares) for shares in out.followed_share)  # one share per turn a dialogue reached
    assert last_count(capsys.readouterr().err, "gatt dialogues") == (answered, answered)


def test_transformers_bars_follow_ours(monkeypatch):
    from transformers.utils import logging as hf_logging

    from rlhf.core.progress import follow_library_bars

    monkeypatch.setenv("RLHF_PROGRESS", "0")
    follow_library_bars()
    assert not hf_logging.is_progress_bar_enabled()
    monkeypatch.setenv("RLHF_PROGRESS", "1")
    follow_library_bars()
    assert hf_logging.is_progress_bar_enabled()
