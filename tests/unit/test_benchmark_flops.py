"""The PPO benchmark's FLOP count (benchmarks/ppo_step.py ``update_flops``), checked by hand on a toy shape."""

from types import SimpleNamespace

from benchmarks.ppo_step import update_flops


def test_update_flops_by_hand():
    # hidden 4, one layer, 2 heads of 2 with 1 KV head (k/v 2 wide), MLP 8, vocabulary 10; one row of 3 tokens, a
    # 2-token answer. Per token and layer: q, o 4x4 each = 32, k, v 4x2 each = 16, MLP 3 x 4x8 = 96 -> 144
    # parameters. A trunk forward: 2 x 144 x 3 tokens = 864, attention scores 4 x 1 layer x 4 x 3^2 = 144 -> 1008.
    # The LM head on answer + 1 = 3 positions: 2 x 4 x 10 x 3 = 240. Rollout-time passes: policy and reference
    # (trunk + head) 2 x 1248, value (trunk) 1008; update: forward + backward (x3) of policy (1248) and value
    # (1008): 3 x 2256 = 6768. Total 2496 + 1008 + 6768 = 10272.
    config = SimpleNamespace(hidden_size=4, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=8, vocab_size=10)
    metrics = {"batch/rows": 1, "batch/width": 3, "batch/answer_width": 2}
    assert update_flops(config, metrics) == 10272
