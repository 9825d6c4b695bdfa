"""Sampling throughput: the engine vs the loop a user writes by hand, measured in the same run.

32 chat prompts x K=4 samples x up to 64 new tokens on the embedded SmolLM2-135M-Instruct.
Baseline: ``model.generate(..., num_return_sequences=K)`` per prompt, fp32 (what a user writes first).
Engine: ``rlhf.core.sampling.TransformersBackend`` (one batch of prompts x K, shared prefill, finished
rows retired), at the precision ``auto`` resolves to on this machine.
Figure: generated tokens per second (stop tokens included, padding excluded), and the ratio.

    python -m benchmarks.sampling_throughput        # writes benchmarks/results/sampling_throughput.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from rlhf.core.chat import render_prompt
from rlhf.core.models import ModelConfig, cpu_has_fast_bf16, load_model, resolve_precision
from rlhf.core.rater import make_prompts
from rlhf.core.sampling import SamplingConfig, TransformersBackend, stop_token_ids

N_PROMPTS, K, MAX_NEW = 32, 4, 64
OUT = Path(__file__).parent / "results" / "sampling_throughput.json"


def baseline(model, tokenizer, prompts) -> tuple[int, float]:
    stops = stop_token_ids(model, tokenizer)
    tokens, started = 0, time.perf_counter()
    for messages in prompts:
        ids = render_prompt(tokenizer, messages)[None]
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_p=1.0, max_new_tokens=MAX_NEW, num_return_sequences=K,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
        for row in out[:, ids.shape[1]:].tolist():
            ends = [i for i, t in enumerate(row) if t in stops]
            tokens += ends[0] + 1 if ends else len(row)
    return tokens, time.perf_counter() - started


def engine(model, tokenizer, prompts, precision) -> tuple[int, float]:
    backend = TransformersBackend(model, tokenizer, precision)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=MAX_NEW, batch_prompts=N_PROMPTS)
    started = time.perf_counter()
    frame = backend.sample(prompts, K, cfg)
    return int(frame.n_tokens.sum()), time.perf_counter() - started


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model(ModelConfig())
    model.eval()
    prompts = list(make_prompts(N_PROMPTS, split="train", seed=0).messages)
    precision = resolve_precision("auto")
    engine(model, tokenizer, prompts[:2], precision)  # warm-up (allocator, kernels)
    base_tokens, base_s = baseline(model, tokenizer, prompts)
    eng_tokens, eng_s = engine(model, tokenizer, prompts, precision)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "fast_bf16": cpu_has_fast_bf16()},
        "config": {"prompts": N_PROMPTS, "k": K, "max_new_tokens": MAX_NEW, "engine_precision": precision,
                   "baseline_precision": "fp32"},
        "baseline": {"tokens": base_tokens, "seconds": base_s, "tokens_per_s": base_tokens / base_s},
        "engine": {"tokens": eng_tokens, "seconds": eng_s, "tokens_per_s": eng_tokens / eng_s},
    }
    result["ratio_engine_over_baseline"] = result["engine"]["tokens_per_s"] / result["baseline"]["tokens_per_s"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"baseline (generate per prompt, fp32): {result['baseline']['tokens_per_s']:.0f} tok/s "
          f"({base_tokens} tokens in {base_s:.1f} s)")
    print(f"engine ({precision}): {result['engine']['tokens_per_s']:.0f} tok/s ({eng_tokens} tokens in {eng_s:.1f} s)")
    print(f"ratio: {result['ratio_engine_over_baseline']:.1f}x -> {OUT}")


if __name__ == "__main__":
    main()
