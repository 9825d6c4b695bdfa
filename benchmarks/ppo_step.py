"""Seconds per PPO iteration on the embedded SmolLM2-135M-Instruct, for a fixed batch, split into rollout
(sampling engine), scoring (the reward model) and update (log-probs of policy and reference, values,
GAE, one gradient step per mini-batch for policy and value model).

``python -m benchmarks.ppo_step`` builds the policy and the frozen reference from the embedded model, a
reward model from the same backbone (an untrained head: the scores' values do not change the cost), the
value model from that RM, and runs ``warmup + timed`` PPO iterations on simulated-rater training prompts
with ``rlhf.core.ppo_loop.PPORun.iteration`` -- the code the ``ppo`` step runs. Each precision the CPU
offers (fp32, and bf16 autocast where it is fast) is measured in the same run, alternating iterations,
so background load hits both alike.

Results go to ``benchmarks/results/ppo_step.json``; a summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.machine import matmul_peaks  # noqa: E402
from benchmarks.sft_throughput import machine_info  # noqa: E402
from rlhf.core.models import ModelConfig, cpu_has_fast_bf16, load_model  # noqa: E402
from rlhf.core.ppo import PPOConfig, ValueModel  # noqa: E402
from rlhf.core.ppo_loop import PPORun  # noqa: E402
from rlhf.core.prompt_sets import PromptsConfig, load_prompt_set  # noqa: E402
from rlhf.core.reward.model import reward_model_from_policy, score  # noqa: E402
from rlhf.core.sampling import SamplingConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ppo_step.json"


@dataclass
class BenchConfig:
    batch_size: int = 16  # rollouts per PPO iteration
    mini_batch_size: int = 8  # two gradient steps per iteration
    micro_batch_size: int = 8
    max_new_tokens: int = 64
    warmup: int = 1
    timed: int = 3
    seed: int = 0


def make_run(bench: BenchConfig, precision: str) -> PPORun:
    model_cfg = ModelConfig(precision=precision)
    policy, tokenizer = load_model(model_cfg)
    reference, _ = load_model(model_cfg)
    rm, rm_tokenizer = reward_model_from_policy(model_cfg, name="bench")
    value = ValueModel.from_reward_model(rm)

    def reward(prompts, answers, tags):
        return score(rm, rm_tokenizer, prompts, answers, batch_size=16, precision=precision)

    cfg = PPOConfig(batch_size=bench.batch_size, mini_batch_size=bench.mini_batch_size,
                    micro_batch_size=bench.micro_batch_size, max_new_tokens=bench.max_new_tokens, seed=bench.seed)
    sampling = SamplingConfig(max_new_tokens=bench.max_new_tokens, batch_prompts=bench.batch_size)
    return PPORun(policy, tokenizer, reference, value, reward, cfg, sampling, precision)


def update_flops(config, metrics: dict) -> float:
    """The FLOPs of one update as ``PPORun.iteration`` runs it, from the padded batch it built (``batch/rows`` x
    ``batch/width``, answers ``batch/answer_width`` wide): rollout-time passes of policy, reference and value
    model (forward), then one forward + backward (3 forwards' worth) of policy and value model per answer.
    A forward is 2 x non-embedding parameters per padded token plus the attention scores (4 x layers x
    hidden x width^2 per row); the policy's and reference's LM head runs on the answer positions (+1)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_token = layers * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size)
    rows, width, answer = metrics["batch/rows"], metrics["batch/width"], metrics["batch/answer_width"]
    trunk = 2 * per_token * rows * width + 4 * layers * d * rows * width ** 2
    head = 2 * d * config.vocab_size * rows * (answer + 1)
    # experience: policy + reference (trunk + head), value (trunk); update: 3 x (policy + value)
    return float(2 * (trunk + head) + trunk + 3 * (trunk + head) + 3 * trunk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed", type=int, default=BenchConfig.timed)
    args = parser.parse_args(argv)
    bench = BenchConfig(timed=args.timed)
    precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
    prompts = load_prompt_set(PromptsConfig(n=bench.batch_size * (bench.warmup + bench.timed), split="train"))
    runs = {p: make_run(bench, p) for p in precisions}
    samples: dict[str, list[dict]] = {p: [] for p in precisions}
    for step in range(bench.warmup + bench.timed):
        batch = prompts.iloc[step * bench.batch_size:(step + 1) * bench.batch_size].reset_index(drop=True)
        for p, run in runs.items():  # alternate precisions step by step
            metrics = run.iteration(batch, step)
            if step >= bench.warmup:
                samples[p].append({k: metrics[k] for k in ("time/rollout_s", "time/score_s", "time/update_s",
                                                           "response_length")}
                                  | {"update_gflop": update_flops(run.policy.config, metrics) / 1e9})
    result = {"benchmark": "ppo_step", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "config": asdict(bench), "machine": machine_info(),
              "torch_threads": torch.get_num_threads(), "precisions": {},
              "peak_gflops": {p: matmul_peaks(p)["square"] for p in precisions}}
    for p, rows in samples.items():
        mean = {k.split("/")[-1]: statistics.mean(r[k] for r in rows) for k in rows[0]}
        mean["total_s"] = mean["rollout_s"] + mean["score_s"] + mean["update_s"]
        mean["seconds_per_iteration"] = mean["total_s"]
        peak = result["peak_gflops"][p]
        mean["update_mfu"] = mean["update_gflop"] / mean["update_s"] / peak
        mean["update_s_at_peak"] = mean["update_gflop"] / peak  # the update's floor at this machine's matmul peak
        result["precisions"][p] = mean
    if "bf16" in result["precisions"]:
        result["bf16_speedup"] = result["precisions"]["fp32"]["total_s"] / result["precisions"]["bf16"]["total_s"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nPPO iteration on SmolLM2-135M-Instruct: {bench.batch_size} rollouts x <= {bench.max_new_tokens} new "
          f"tokens, {bench.batch_size // bench.mini_batch_size} gradient steps (mean of {bench.timed})")
    for p, m in result["precisions"].items():
        print(f"  {p}: rollout {m['rollout_s']:.1f} s, scoring {m['score_s']:.1f} s, update {m['update_s']:.1f} s "
              f"= {m['total_s']:.1f} s per iteration (answers {m['response_length']:.0f} tokens on average); "
              f"update {m['update_gflop']:.0f} GFLOP, MFU {100 * m['update_mfu']:.0f} % of "
              f"{result['peak_gflops'][p]:.0f} GFLOP/s ({m['update_s_at_peak']:.1f} s at the peak)")
    if "bf16_speedup" in result:
        print(f"  bf16 autocast is {result['bf16_speedup']:.2f}x fp32 here")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
