"""Packed reward-model pairs (``reward.train.pack_pairs``): one row per pair, the prompt once, both answers
attending to it. The layout and mask by hand, then the invariance: packed rewards, losses, gradients and a
whole training run equal the two-rows-per-pair ones (fp32, the tiny Llama)."""

import pandas as pd
import pytest
import torch

from rlhf.core.models import ModelConfig
from rlhf.core.reward.model import encode_answer, packed_attention_mask, reward_model_from_policy
from rlhf.core.reward.train import (
    RankingObjective,
    RewardConfig,
    collate_packed_pairs,
    collate_pairs,
    evaluate_reward_model,
    shared_prefix_length,
    train_reward_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [{"role": "user", "content": "Say something nice."}]
MULTI_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Tell me a joke about cats."}]


@pytest.fixture
def rm():
    return reward_model_from_policy(ModelConfig("tiny"), name="helpful", seed=0, max_length=128)


def ids(*values):
    return torch.tensor(values)


@pytest.mark.parametrize("chosen, rejected, expected", [
    ((1, 2, 3, 4), (1, 2, 5), 2),      # they part after two tokens
    ((1, 2, 3), (1, 2, 3), 2),         # identical: each keeps its last token
    ((1, 2), (1, 2, 3), 1),            # one a prefix of the other: the shorter keeps its last token
    ((5, 1), (6, 1), 0),               # nothing shared (two sequences cut differently from the left)
])
def test_shared_prefix_length(chosen, rejected, expected):
    assert shared_prefix_length(ids(*chosen), ids(*rejected)) == expected


def test_collate_packs_prefix_chosen_rejected_with_own_positions():
    batch = collate_packed_pairs([(ids(1, 2, 3, 4), ids(1, 2, 7), 0.5), (ids(9, 8), ids(9, 6, 5), 1.0)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 7], [9, 8, 6, 5, 0]]
    assert batch["segments"].tolist() == [[1, 1, 2, 2, 3], [1, 2, 3, 3, 0]]
    # the rejected suffix continues the prefix: positions 2 (first row) and 1, 2 (second row)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 1, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["margin"].tolist() == [0.5, 1.0]


def test_mask_lets_each_answer_see_the_prefix_and_itself_only():
    mask = packed_attention_mask(torch.tensor([[1, 1, 2, 2, 3, 0]]))
    assert mask.shape == (1, 1, 6, 6)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],   # prefix: causal
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],   # chosen: prefix + itself, causal
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],   # rejected: prefix + itself, not the chosen answer before it
        [0, 0, 0, 0, 0, 1],   # padding: itself only (no NaN row)
    ]


def pair_examples(tok, max_length=128):
    """Pairs of several shapes: a shared prompt, a multi-turn one, a pair cut from the left differently (no
    shared prefix at all), identical answers, one answer a prefix of the other."""
    raw = [(PROMPT, "You are doing great, keep going!", "ok"),
           (MULTI_TURN, "Why did the cat sit on the computer? To keep an eye on the mouse.", "No."),
           (PROMPT, "I like your shoes." * 4, "Nice " * 30),
           (PROMPT, "same answer", "same answer"),
           (PROMPT, "Yes", "Yes, and more")]
    out = [(encode_answer(tok, p, c, max_length), encode_answer(tok, p, r, max_length), m)
           for (p, c, r), m in zip(raw, [0.0, 1.0, 0.5, 0.0, 2.0])]
    return out


def test_packed_rewards_losses_and_gradients_equal_two_rows_per_pair(rm):
    model, tok = rm
    examples = pair_examples(tok, max_length=48)  # 48: the third pair's two sequences are cut differently
    assert shared_prefix_length(examples[2][0], examples[2][1]) == 0
    packed, plain = collate_packed_pairs(examples, tok.pad_token_id), collate_pairs(examples, tok.pad_token_id)
    assert packed["attention_mask"].sum() < plain["attention_mask"].sum()  # the prompts went in once

    objective = RankingObjective(model)
    out_plain = objective(**plain)
    out_plain["loss_sum"].backward()
    grads_plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out_packed = objective(**packed)
    out_packed["loss_sum"].backward()
    for key in out_plain:
        torch.testing.assert_close(out_packed[key], out_plain[key], atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads_plain[name], atol=1e-5, rtol=1e-4, msg=name)

    with torch.no_grad():  # the rewards themselves, pair by pair
        rewards = model(plain["input_ids"], plain["attention_mask"])
        chosen, rejected = model.forward_packed(packed["input_ids"], packed["segments"], packed["position_ids"])
    torch.testing.assert_close(torch.cat([chosen, rejected]), rewards, atol=1e-5, rtol=1e-5)

    # The mask is what makes it exact: a plain causal pass over the same rows lets the rejected answer read the
    # chosen one, and its rewards move.
    with torch.no_grad():
        causal = model.backbone(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                                attention_mask=packed["attention_mask"]).last_hidden_state
        last = (packed["segments"] == 3).long().cumsum(-1).argmax(-1)
        leaked = model.head(causal[torch.arange(len(examples)), last]).squeeze(-1)
    assert not torch.allclose(leaked, rejected, atol=1e-3)


def tiny_pairs(n: int) -> pd.DataFrame:
    """Pairs whose chosen answer has more x's than its rejected one (a rule the tiny RM can pick up)."""
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: most x wins."}],
             "chosen": "x" * (4 + i % 5) + "o" * 3, "rejected": "x" * (i % 4) + "o" * 6,
             "level": ["significantly_better", "better", "slightly_better", "negligibly_better"][i % 4]}
            for i in range(n)]
    return pd.DataFrame(rows)


def test_training_packed_equals_training_two_rows_per_pair(tmp_path):
    pairs = tiny_pairs(24)
    histories, heads = [], []
    for pack in (True, False):
        model, tok = reward_model_from_policy(ModelConfig("tiny"), seed=0, max_length=64)
        cfg = RewardConfig(lr=1e-3, epochs=2, batch_size=8, micro_batch_size=4, max_length=64, n_test=0,
                           checkpoint_every=0, min_warmup_steps=0, warmup_ratio=0.0, pack_pairs=pack)
        result, _ = train_reward_model(model, tok, pairs, cfg, tmp_path / str(pack), precision="fp32")
        histories.append([(h["loss"], h["correct"], h["grad_norm"]) for h in result.history])
        heads.append(model.head.weight.detach().clone())
    assert len(histories[0]) == 6
    assert histories[0][-1][0] < histories[0][0][0]  # it learns
    torch.testing.assert_close(torch.tensor(histories[0]), torch.tensor(histories[1]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(heads[0], heads[1], atol=1e-5, rtol=1e-4)


def test_packed_evaluation_scores_every_pair_as_sequence_scoring_does(rm):
    model, tok = rm
    raw = [(PROMPT, "You are doing great, keep going!", "ok"), (MULTI_TURN, "A cat joke.", "No."),
           (PROMPT, "I like your shoes." * 8, "Nice " * 40), (PROMPT, "Yes", "Yes, and more")] * 3
    pairs = pd.DataFrame([{"prompt": p, "chosen": c, "rejected": r, "level": "better"} for p, c, r in raw])
    packed_metrics, packed = evaluate_reward_model(model, tok, pairs, batch_size=4, precision="fp32")
    plain_metrics, plain = evaluate_reward_model(model, tok, pairs, batch_size=4, precision="fp32", packed=False)
    for column in ("chosen_score", "rejected_score"):  # in the pairs' own order, whatever the batches were
        torch.testing.assert_close(torch.tensor(packed[column].to_numpy()), torch.tensor(plain[column].to_numpy()),
                                   atol=1e-5, rtol=1e-5)
    assert packed_metrics["accuracy"] == plain_metrics["accuracy"]
    assert packed_metrics["n_prompt_truncated"] == plain_metrics["n_prompt_truncated"]
    assert model.training  # scoring restores the mode it found
