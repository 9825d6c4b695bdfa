"""The reward model on the tiny Llama: where the reward is read, one forward per pair batch, save/load,
truncation, and the scorer's combination of one or two RMs."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from rlhf.core.chat import pad_batch
from rlhf.core.errors import ConfigError
from rlhf.core.models import ModelConfig
from rlhf.core.reward.model import (
    EncodeReport,
    RewardModel,
    encode_answer,
    last_token_index,
    load_reward_model,
    reward_model_from_policy,
    save_reward_model,
    score,
)
from rlhf.core.reward.scorer import RewardScorer
from rlhf.core.reward.train import RankingObjective, RewardConfig, RMDataConfig, collate_pairs, encode_pairs

PROMPT = [{"role": "user", "content": "Say something nice."}]
ANSWERS = ["ok", "You are doing great, keep going!", "hi there", "x" * 40]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def rm():
    return reward_model_from_policy(ModelConfig("tiny"), name="helpful", seed=0, max_length=128)


def test_last_token_index_either_padding_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_backbone_has_no_lm_head_and_head_is_small_normal(rm):
    model, _ = rm
    assert not hasattr(model.backbone, "lm_head") and model.head.out_features == 1
    assert model.head.bias.item() == 0.0
    assert model.head.weight.std().item() == pytest.approx(1 / math.sqrt(65), rel=0.3)


def test_padding_does_not_change_a_sequence_reward(rm):
    model, tok = rm
    seqs = [encode_answer(tok, PROMPT, a, 128) for a in ANSWERS]
    assert len({len(s) for s in seqs}) == len(seqs)  # different lengths, so the batch pads
    with torch.no_grad():
        alone = torch.stack([model(*pad_batch([s], tok.pad_token_id)) for s in seqs]).squeeze(-1)
        batched = model(*pad_batch(seqs, tok.pad_token_id))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    # Reading the reward at a padding position instead (the last column) would give other numbers.
    with torch.no_grad():
        hidden = model.backbone(*pad_batch(seqs, tok.pad_token_id)).last_hidden_state
    at_last_column = model.head(hidden[:, -1]).squeeze(-1)
    assert not torch.allclose(at_last_column[:-1], alone[:-1], atol=1e-3)


def test_score_keeps_input_order_with_length_sorted_batches(rm):
    model, tok = rm
    # fp32: the invariance is exact there (under bf16 autocast, padding changes the rounding)
    one_by_one = torch.cat([score(model, tok, [PROMPT], [a], batch_size=1, precision="fp32") for a in ANSWERS])
    batched = score(model, tok, [PROMPT] * len(ANSWERS), ANSWERS, batch_size=3, precision="fp32")
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    assert model.training  # score() restores the mode it found


def test_chosen_and_rejected_go_through_one_forward_pass(rm):
    model, tok = rm
    calls = []
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(1))
    examples = [(encode_answer(tok, PROMPT, c, 128), encode_answer(tok, PROMPT, r, 128), 1.0)
                for c, r in [(ANSWERS[1], ANSWERS[0]), (ANSWERS[3], ANSWERS[2])]]
    batch = collate_pairs(examples, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["margin"].tolist() == [1.0, 1.0]
    out = RankingObjective(model)(**batch)
    assert len(calls) == 1
    with torch.no_grad():
        rewards = model(batch["input_ids"], batch["attention_mask"])
    expected = -torch.nn.functional.logsigmoid(rewards[:2] - rewards[2:] - 1.0).sum()
    assert out["loss_sum"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["correct_sum"].item() == float((rewards[:2] > rewards[2:]).sum())


def test_left_truncation_keeps_the_answer_and_counts(rm):
    _, tok = rm
    long_prompt = [{"role": "user", "content": "blah " * 60}]
    report = EncodeReport()
    full = encode_answer(tok, long_prompt, "the answer", 10_000)
    cut = encode_answer(tok, long_prompt, "the answer", 64, report)
    assert len(cut) == 64 and torch.equal(cut, full[-64:])
    assert "the answer" in tok.decode(cut)
    encode_answer(tok, PROMPT, "y" * 200, 64, report)  # the answer alone is too long
    encode_answer(tok, PROMPT, "short", 64, report)
    assert (report.n_sequences, report.n_prompt_truncated, report.n_answer_truncated) == (3, 1, 1)


MULTI_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Bye"}]


def test_truncation_counts_are_measured_on_the_final_answer(chatml_tokenizer):
    # ChatML, one token per byte plus <|im_start|> and <|im_end|>: "<|im_start|>user\nHi<|im_end|>\n" is 10 tokens,
    # the assistant turn "Hello" 18, "Bye" 11, the answer's turn "<|im_start|>assistant\nok<|im_end|>\n" 15:
    # 54 tokens, the answer "ok" starting at token 50 (the first assistant turn's content at 21).
    tok = chatml_tokenizer
    assert len(encode_answer(tok, MULTI_TURN, "ok", 10_000)) == 54
    report = EncodeReport()
    for max_length in (54, 53, 20, 4):  # the last 4 tokens are "ok<|im_end|>\n": the answer is whole in all
        encode_answer(tok, MULTI_TURN, "ok", max_length, report)
    # 53 and 20 cut only the prompt (measured from the first assistant turn, 54 - 21 = 33 > 20 would have
    # counted 20 as an answer cut), and so does 4.
    assert (report.n_sequences, report.n_prompt_truncated, report.n_answer_truncated) == (4, 3, 0)
    cut = encode_answer(tok, MULTI_TURN, "ok", 3, report)  # 3 < 4: "o" is gone
    assert tok.decode(cut) == "k<|im_end|>\n"
    assert (report.n_prompt_truncated, report.n_answer_truncated, report.n_tokens) == (3, 1, 54 + 53 + 20 + 4 + 3)


def test_encode_pairs_counts_each_answer_of_a_multi_turn_pair(chatml_tokenizer):
    # chosen "ok": 54 tokens, its answer the last 4; rejected 30 x's: 50 + 30 + 2 = 82 tokens, its answer (from
    # token 50) the last 32 > 20. Measured from the first assistant turn, both would have counted as answer cuts.
    pairs = pd.DataFrame({"prompt": [MULTI_TURN], "chosen": ["ok"], "rejected": ["x" * 30], "level": ["better"]})
    examples, report = encode_pairs(chatml_tokenizer, pairs, max_length=20, margin="large")
    assert [len(examples[0][0]), len(examples[0][1]), examples[0][2]] == [20, 20, 2.0]
    assert (report.n_sequences, report.n_prompt_truncated, report.n_answer_truncated) == (2, 1, 1)


@pytest.mark.parametrize("data, expected", [(None, None), ("pairs.jsonl", ["pairs.jsonl"]),
                                            (["a.jsonl", "b.jsonl.gz"], ["a.jsonl", "b.jsonl.gz"]),
                                            ([Path("c.parquet")], ["c.parquet"]), ([], [])])
def test_rm_data_takes_one_path_or_a_list(data, expected):
    assert RMDataConfig(data=data).data == expected


@pytest.mark.parametrize("kwargs, key, text", [
    ({"data": {"a": 1}}, "reward.*.data", "give a list: reward.helpful.data=[path]"),
    ({"data": [None]}, "reward.*.data", "expected a path, got None"),
    ({"on_bad_record": "drop"}, "reward.*.on_bad_record", "unknown value 'drop'"),
])
def test_rm_data_config_errors_name_the_key(kwargs, key, text):
    with pytest.raises(ConfigError) as info:
        RMDataConfig(**kwargs)
    assert info.value.key == key and text in str(info.value)


@pytest.mark.parametrize("n_test", [0, 8, 1000, 0.2, 0.5])
def test_n_test_is_a_count_or_a_fraction(n_test):
    assert RewardConfig(n_test=n_test).n_test == n_test


@pytest.mark.parametrize("n_test, text", [(-1, "a count must be >= 0"), (1.0, "must be in (0, 1)"),
                                          (0.0, "must be in (0, 1)"), (True, "expected a count"),
                                          ("10", "expected a count")])
def test_bad_n_test_names_reward_train_n_test(n_test, text):
    with pytest.raises(ConfigError) as info:
        RewardConfig(n_test=n_test)
    assert info.value.key == "reward.train.n_test" and text in str(info.value)


def test_save_load_round_trip_gives_identical_scores(rm, tmp_path):
    model, tok = rm
    with torch.no_grad():
        model.head.weight.add_(0.5)  # not the init: the head must really be saved
    model.info["margin"] = "small"
    save_reward_model(model, tok, tmp_path / "rm")
    loaded, loaded_tok = load_reward_model(tmp_path / "rm")
    assert loaded.info["name"] == "helpful" and loaded.info["margin"] == "small" and loaded.max_length == 128
    before = score(model, tok, [PROMPT] * 4, ANSWERS)
    after = score(loaded, loaded_tok, [PROMPT] * 4, ANSWERS)
    assert torch.equal(before, after)


def test_load_rejects_a_plain_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a reward-model directory"):
        load_reward_model(tmp_path)


def _constant_rm(value: float, tok_rm) -> tuple[RewardModel, object]:
    """An RM that gives every answer ``value``: its head reads nothing and has bias ``value``."""
    model, tok = tok_rm
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(value)
    return model, tok


def test_scorer_with_one_rm_is_that_rm(rm):
    scorer = RewardScorer(rm)
    out = scorer([PROMPT] * 4, ANSWERS, unsafe_tags=[True, False, None, False])
    assert set(out) == {"helpful", "safety", "combined"} and out["safety"] is None
    torch.testing.assert_close(out["combined"], out["helpful"])


def test_scorer_with_two_rms_switches_to_safety_on_unsafe_tags_and_low_safety():
    helpful = _constant_rm(2.0, reward_model_from_policy(ModelConfig("tiny"), seed=0))
    safe = _constant_rm(1.0, reward_model_from_policy(ModelConfig("tiny"), seed=1))
    out = RewardScorer(helpful, safe)([PROMPT] * 3, ANSWERS[:3], unsafe_tags=[True, False, None])
    assert out["helpful"].tolist() == [2.0, 2.0, 2.0] and out["safety"].tolist() == [1.0, 1.0, 1.0]
    assert out["combined"].tolist() == [1.0, 2.0, 2.0]  # sigmoid(1) = 0.73 >= 0.15: safety only where tagged
    unsure = _constant_rm(-2.0, reward_model_from_policy(ModelConfig("tiny"), seed=1))  # sigmoid(-2) = 0.12
    out = RewardScorer(helpful, unsure)([PROMPT] * 3, ANSWERS[:3], unsafe_tags=None)
    assert out["combined"].tolist() == [-2.0, -2.0, -2.0]


def test_scorer_loads_from_directories(rm, tmp_path):
    model, tok = rm
    save_reward_model(model, tok, tmp_path / "helpful")
    scorer = RewardScorer.load(tmp_path / "helpful", batch_size=2, precision="fp32")
    torch.testing.assert_close(scorer([PROMPT] * 4, ANSWERS)["helpful"],
                               score(model, tok, [PROMPT] * 4, ANSWERS, precision="fp32"))
