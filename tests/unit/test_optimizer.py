"""The optimizer every training loop uses (``rlhf.core.training.adamw``): the fused AdamW kernel where the
parameters are plain tensors, ``foreach`` where FSDP will shard them, and the same update either way."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from rlhf.core.models import build_tiny_model
from rlhf.core.training import adamw

CFG = SimpleNamespace(weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-5)


def steps(model, optimizer, n=3):
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def test_fused_where_plain_and_the_same_update_as_foreach():
    model, _ = build_tiny_model(seed=0)
    other = copy.deepcopy(model)
    fused, plain = adamw(model, 1e-2, CFG), adamw(other, 1e-2, CFG, sharded=True)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in plain.param_groups)
    # weight decay on matrices only, in both
    assert [len(g["params"]) for g in fused.param_groups] == [len(g["params"]) for g in plain.param_groups]
    steps(model, fused)
    steps(other, plain)
    start = dict(build_tiny_model(seed=0)[0].named_parameters())
    for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(a, start[name]), name  # every parameter was updated
