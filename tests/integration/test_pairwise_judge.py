"""The pairwise judge end to end: the evaluate step asks a real OpenAI-compatible HTTP server on loopback
(``rlhf chat-server``'s, serving the tiny model) or a local model, in the recorded order; its position bias and
the with/without system prompt win rates land in the manifest."""

import os
import socket
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
from servers import free_port  # beside the tests (pytest puts tests/ on the path)

from rlhf.cli.chat_server import ChatServer
from rlhf.core.errors import RLHFError
from rlhf.core.evaluation import EvalConfig
from rlhf.core.models import ModelConfig
from rlhf.core.pairwise import EndpointJudge, LocalChat, PairwiseConfig
from rlhf.core.sampling import SamplingConfig
from rlhf.core.scorers import ScorerConfig
from rlhf.core.steps.evaluate import evaluate_step

TINY, OTHER = ModelConfig(name_or_path="tiny"), ModelConfig(name_or_path="tiny", tiny_seed=1)
CFG = EvalConfig(n_prompts=6, n_bootstrap=100, max_new_tokens=8, judges=["gold", "pairwise"])

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_server():
    chat = LocalChat.load(TINY)
    with ChatServer(lambda conversations, n: chat(conversations, n), "tiny", api_key="sekret") as server:
        yield server


def test_the_evaluate_step_asks_an_endpoint_serving_the_tiny_model(tmp_path, tiny_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    cfg = replace(CFG, pairwise=PairwiseConfig(url=tiny_server.url, api_model="tiny", api_key_env="JUDGE_KEY"))
    manifest = evaluate_step(TINY, {"sft": TINY, "other": OTHER}, None, SamplingConfig(), ScorerConfig(), cfg,
                             tmp_path / "e")
    rates = manifest["metrics"]["win_rate"]
    assert set(rates) == {"sft/gold", "sft/pairwise", "other/gold", "other/pairwise"}
    for key in ("sft/pairwise", "other/pairwise"):
        r = rates[key]
        assert r["n"] == 6 and 0 <= r["unparsed"] <= 6 and r["win"] + r["tie"] + r["loss"] == pytest.approx(1)
        assert {"win_rate_when_first", "win_rate_when_second"} <= set(r)
    judged = pd.read_parquet(tmp_path / "e" / "judgments.parquet")
    pairwise = judged[judged.judge == "pairwise"]
    assert len(pairwise) == 12 and pairwise.reply.map(type).eq(str).all()  # what the server said, kept
    assert set(pairwise.verdict) <= {"a", "b", "tie", "unparsed"}
    # the verdict is read in the recorded order: "a" is a win exactly where the model's answer came first
    decided = pairwise[pairwise.verdict.isin(["a", "b"])]
    assert ((decided.verdict == "a") == (decided.order == "model_first")).eq(decided.outcome == 1).all()


def test_position_bias_of_a_judge_that_always_answers_a(tmp_path):
    """A server whose judge always says "A": the model wins exactly where it was shown first."""
    with ChatServer(lambda conversations, n: ["A"] * len(conversations), "always-a") as server:
        cfg = replace(CFG, judges=["pairwise"], pairwise=PairwiseConfig(url=server.url, api_key_env=""))
        manifest = evaluate_step(TINY, {"other": OTHER}, None, SamplingConfig(), ScorerConfig(), cfg, tmp_path / "e")
    r = manifest["metrics"]["win_rate"]["other/pairwise"]
    assert r["win_rate_when_first"] == 1.0 and r["win_rate_when_second"] == 0.0 and r["unparsed"] == 0
    assert r["win_rate"] == pytest.approx(r["model_first_share"])


def test_a_wrong_key_or_a_dead_endpoint_is_a_clear_error(tiny_server, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    judge = EndpointJudge(PairwiseConfig(url=tiny_server.url, api_key_env="JUDGE_KEY", retries=0))
    with pytest.raises(RLHFError, match="put its API key in the environment variable 'JUDGE_KEY'"):
        judge([[{"role": "user", "content": "hi"}]])
    dead = EndpointJudge(PairwiseConfig(url=f"http://127.0.0.1:{free_port()}/v1", retries=0, timeout=5))
    with pytest.raises(RLHFError, match="did not answer.*eval.pairwise.url"):
        dead([[{"role": "user", "content": "hi"}]])


def test_a_local_judge_model_and_the_system_prompt_condition(tmp_path):
    cfg = replace(CFG, pairwise=PairwiseConfig(model="tiny"), system_prompt="Answer in one sentence.")
    manifest = evaluate_step(TINY, {"other": OTHER}, None, SamplingConfig(), ScorerConfig(), cfg, tmp_path / "e")
    metrics = manifest["metrics"]
    assert set(metrics["win_rate"]) == set(metrics["win_rate_with_system"]) == {"other/gold", "other/pairwise"}
    assert set(metrics["violation_rate_with_system"]) == {"model", "other"}
    answers = pd.read_parquet(tmp_path / "e" / "answers.parquet")
    assert len(answers) == 2 * 2 * 6 and answers.system_prompt.sum() == 12
    judged = pd.read_parquet(tmp_path / "e" / "judgments.parquet")
    assert len(judged) == 2 * 2 * 6 and judged.system_prompt.sum() == 12
    assert "pairwise_judge" in manifest["inputs"]  # the local judge's weights are part of the cache key
    # a local judge's reply is the likelier letter: a verdict every time
    assert metrics["win_rate"]["other/pairwise"]["unparsed"] == 0
    assert set(judged[judged.judge == "pairwise"].verdict) <= {"a", "b"}


def test_a_local_judge_chooses_the_same_letter_batched_as_one_at_a_time():
    """Left padding must not change a verdict: the batch's choices equal each conversation's alone, and each is
    the letter with the larger next-token logit."""
    import torch

    chat = LocalChat.load(TINY, batch_size=4)
    conversations = [[{"role": "user", "content": "Which? " + "word " * n}] for n in (1, 7, 3, 12, 5)]
    batched = chat.choose(conversations)
    alone = [chat.choose([c])[0] for c in conversations]
    assert batched == alone and set(batched) <= {"A", "B"}
    tok = chat.tokenizer
    a, b = (tok.encode(x, add_special_tokens=False)[0] for x in "AB")
    for conversation, choice in zip(conversations, batched):
        ids = tok(tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True),
                  return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            last = chat.model(**ids).logits[0, -1]
        assert choice == ("A" if last[a] >= last[b] else "B")


def test_the_chat_server_command_serves_until_stopped(tmp_path):
    port = free_port()
    env = os.environ | {"RLHF_CHAT_SERVER_KEY": "k2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", "chat-server", "model=tiny", f"io.port={port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in banner and "RLHF_CHAT_SERVER_KEY" in banner
        os.environ["K2"] = "k2"
        try:
            judge = EndpointJudge(PairwiseConfig(url=f"http://127.0.0.1:{port}/v1", api_key_env="K2", retries=0))
            [reply] = judge([[{"role": "user", "content": "A or B?"}]])
        finally:
            del os.environ["K2"]
        assert isinstance(reply, str)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with socket.socket() as s:  # nobody listens there any more (TIME_WAIT of the closed connection aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
