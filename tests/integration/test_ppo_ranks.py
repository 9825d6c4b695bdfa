"""PPO's ranks end together: the main rank ends a launched step by removing the work dir, so every rank must
have read the run's best weights from it before any goes on. Two real processes in a gloo group run the tiny
model's PPO; rank 1 is made slow to read the best weights (the fault injected: a busy machine), and rank 0
removes the work dir the moment ``run_ppo`` returns, as the step does. Without the barrier rank 1 found the
file gone (seen in CI on two busy cores: FileNotFoundError on ``.ppo.work/best/step-2.safetensors``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes  # two processes of its own: `make test-processes`

RANK = r"""
import shutil, sys, time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

rank, init, work = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
from rlhf.core import ppo_loop
from rlhf.core.models import build_tiny_model
from rlhf.core.ppo import PPOConfig, ValueModel
from rlhf.core.sampling import SamplingConfig

if rank == 1:  # the injected fault: this rank reads the best weights 3 s late
    read = ppo_loop.load_file
    ppo_loop.load_file = lambda *args, **kwargs: (time.sleep(3), read(*args, **kwargs))[1]
policy, tokenizer = build_tiny_model(seed=0)
reference, _ = build_tiny_model(seed=0)
prompts = lambda n, offset: pd.DataFrame({"messages": [[{"role": "user", "content": f"question {i}"}]
                                                       for i in range(offset, offset + n)], "safety": False})
reward = lambda prompts, answers, tags: torch.tensor([len(a) / 8.0 for a in answers])
cfg = PPOConfig(steps=2, batch_size=8, mini_batch_size=8, micro_batch_size=4, max_new_tokens=4, eval_every=1,
                patience=0, value_init="policy", checkpoint_every=0, seed=0)
ppo_loop.run_ppo(policy, tokenizer, reference, ValueModel.from_policy(reference), reward, prompts(16, 0),
                 prompts(8, 1000), cfg, SamplingConfig(max_new_tokens=4, batch_prompts=8), work, precision="fp32")
if rank == 0:
    shutil.rmtree(work)  # what the step does once its main rank is done (steps/common.finish)
dist.destroy_process_group()
print("done")
"""


def test_no_rank_of_ppo_goes_on_before_every_rank_has_read_the_best_weights(tmp_path):
    work, init = tmp_path / "work", tmp_path / "init"
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(init), str(work)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = [rank.communicate(timeout=600) for rank in ranks]
    for rank, (out, err) in zip(ranks, results):
        assert rank.returncode == 0 and out.strip().endswith("done"), err[-3000:]
    assert not work.exists()
