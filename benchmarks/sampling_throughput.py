"""Sampling throughput: the engine vs transformers' batched ``generate``, like with like.

32 simulated-rater chat prompts x K=4 samples x up to 64 new tokens on the embedded SmolLM2-135M-Instruct.

Contenders (each at the precision ``auto`` resolves to on this machine, from the same full distribution at
temperature 1: no top-k, top-p 1; the same stop tokens, the same prompts and K):

- ``ours``: ``rlhf.core.sampling.TransformersBackend`` (one batch of 32 prompts x K, the prefill shared by
  the K samples of a prompt, finished rows retired).
- ``hf_batched``: ``model.generate`` on the 32 prompts as one left-padded batch with
  ``num_return_sequences=K`` (128 rows), weights cast to the precision (bf16: a bf16 model, faster than
  autocast for ``generate``), transformers' default KV cache. The peer at its best reasonable setting.
- ``hf_per_prompt`` (extra row, labelled): ``generate`` one prompt at a time (K rows each), same settings.
  What a user writes first; not the race.

Every run is its own process (``--contender NAME``): it loads the model, does one warm-up call on 4
prompts, one timed call on all 32, and reports generated tokens (stop token counted, padding and what
follows a stop not), seconds and its peak RSS (``VmHWM``) -- so each contender's memory is its own.
The repetitions are interleaved (ours, hf_batched, ours, hf_batched, ...); the figure is the median
tokens/s. The per-prompt loop runs once (it takes minutes).

MFU: model FLOPs = 2 x parameters (the tied LM head counted once, as a matmul) per generated token, plus
2 x non-embedding parameters per prompt token prefilled (once per prompt for ``ours``, K times for
``generate``, which expands the prompt before the prefill: each contender is credited the FLOPs it had to
do); divided by the seconds and by the machine's matmul peak measured in this run, both at square 2048^3
and at the decode step's own shapes (128 rows against the model's weight matrices and the LM head).

    python -m benchmarks.sampling_throughput [--reps 3]   # writes benchmarks/results/sampling_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.machine import matmul_peaks
from rlhf.core.chat import render_prompt
from rlhf.core.models import ModelConfig, describe_machine, load_model, resolve_precision
from rlhf.core.rater import make_prompts
from rlhf.core.sampling import SamplingConfig, TransformersBackend, stop_token_ids
from rlhf.core.steps.common import peak_rss_mb

N_PROMPTS, K, MAX_NEW, WARMUP_PROMPTS = 32, 4, 64, 4
OUT = Path(__file__).parent / "results" / "sampling_throughput.json"
CONTENDERS = ("ours", "hf_batched", "hf_per_prompt")


def _counted(rows: list[list[int]], stops: set[int]) -> int:
    """Generated tokens of each row up to and including its first stop token (all of them without one)."""
    total = 0
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in stops), None)
        total += end + 1 if end is not None else len(row)
    return total


def _generate(model, tokenizer, encoded: list[torch.Tensor], stops: list[int]) -> tuple[int, int]:
    """One left-padded ``generate`` call on ``encoded``; (generated tokens, prompt tokens prefilled)."""
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):], mask[row, width - len(ids):] = ids, 1
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=MAX_NEW, num_return_sequences=K, pad_token_id=pad, eos_token_id=stops)
    return _counted(out[:, width:].tolist(), set(stops)), K * int(mask.sum())


def run_hf(model, tokenizer, prompts, batched: bool) -> tuple[int, int]:
    stops = stop_token_ids(model, tokenizer)
    encoded = [render_prompt(tokenizer, p) for p in prompts]
    if batched:
        return _generate(model, tokenizer, encoded, stops)
    done = [_generate(model, tokenizer, [ids], stops) for ids in encoded]
    return sum(d[0] for d in done), sum(d[1] for d in done)


def run_ours(model, tokenizer, prompts, precision: str) -> tuple[int, int]:
    backend = TransformersBackend(model, tokenizer, precision)
    frame = backend.sample(prompts, K, SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW,
                                                      batch_prompts=N_PROMPTS))
    return int(frame.n_tokens.sum()), sum(len(render_prompt(tokenizer, p)) for p in prompts)


def one_run(contender: str, seed: int) -> dict:
    """Load, warm up, time one call; what the child process prints."""
    torch.manual_seed(seed)
    precision = resolve_precision("auto")
    model, tokenizer = load_model(ModelConfig())
    model.eval()
    if contender != "ours" and precision == "bf16":
        model = model.to(torch.bfloat16)
    prompts = list(make_prompts(N_PROMPTS, split="train", seed=0).messages)
    call = ((lambda ps: run_ours(model, tokenizer, ps, precision)) if contender == "ours" else
            (lambda ps: run_hf(model, tokenizer, ps, batched=contender == "hf_batched")))
    call(prompts[:WARMUP_PROMPTS])
    started = time.perf_counter()
    generated, prefilled = call(prompts)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())  # tied head: its weight is the embedding's, once
    embedding = model.get_input_embeddings().weight.numel()
    flops = 2 * params * generated + 2 * (params - embedding) * prefilled
    return {"contender": contender, "precision": precision, "generated_tokens": generated,
            "prefilled_tokens": prefilled, "seconds": seconds, "tokens_per_s": generated / seconds,
            "gflops_per_s": flops / seconds / 1e9, "peak_rss_mb": peak_rss_mb()}


def spawn(contender: str, seed: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.sampling_throughput", "--contender", contender,
                           "--seed", str(seed)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{contender} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_shapes(rows: int = N_PROMPTS * K) -> list[tuple[int, int, int]]:
    """(m, k, n) of the decode step's matmuls on SmolLM2-135M: q/o (576x576), k/v (576x192), MLP up/gate
    (576x1536), down (1536x576), the LM head (576x49152); ``rows`` sequences decoding one token each."""
    return [(rows, 576, 576), (rows, 576, 192), (rows, 576, 1536), (rows, 1536, 576), (rows, 576, 49152)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender", choices=CONTENDERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.contender:  # a child: one run, one JSON line
        print(json.dumps(one_run(args.contender, args.seed)))
        return
    precision = resolve_precision("auto")
    peaks = matmul_peaks(precision, decode_shapes())
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for rep in range(args.reps):  # interleaved: a drift of the machine's speed hits both alike
        for name in ("ours", "hf_batched") if rep % 2 == 0 else ("hf_batched", "ours"):
            runs[name].append(spawn(name, rep))
            print(f"rep {rep} {name}: {runs[name][-1]['tokens_per_s']:.0f} tok/s", flush=True)
    runs["hf_per_prompt"].append(spawn("hf_per_prompt", 0))
    peaks_after = matmul_peaks(precision, decode_shapes())
    peak = {kind: max(peaks[kind], peaks_after[kind]) for kind in peaks}
    contenders = {}
    for name, done in runs.items():
        median = statistics.median(r["tokens_per_s"] for r in done)
        gflops = statistics.median(r["gflops_per_s"] for r in done)
        contenders[name] = {"tokens_per_s": median, "tokens_per_s_runs": [r["tokens_per_s"] for r in done],
                            "gflops_per_s": gflops, "mfu": gflops / peak["decode"],
                            "mfu_square": gflops / peak["square"],
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in done), "runs": done}
    ours = contenders["ours"]["tokens_per_s"]
    result = {"benchmark": "sampling_throughput", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": describe_machine(), "precision": precision,
              "peak_gflops": peak, "peak_gflops_runs": {"before": peaks, "after": peaks_after},
              "config": {"prompts": N_PROMPTS, "k": K, "max_new_tokens": MAX_NEW, "temperature": 1.0, "top_k": None,
                         "top_p": 1.0, "warmup_prompts": WARMUP_PROMPTS, "reps": args.reps,
                         "hf_per_prompt_reps": 1},
              "contenders": contenders,
              "ratio_ours_over_hf_batched": ours / contenders["hf_batched"]["tokens_per_s"],
              "ratio_ours_over_hf_per_prompt": ours / contenders["hf_per_prompt"]["tokens_per_s"]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for name, c in contenders.items():
        print(f"{name}: {c['tokens_per_s']:.0f} tok/s, MFU {100 * c['mfu']:.0f} % of the decode-shape peak "
              f"({peak['decode']:.0f} GFLOP/s; {100 * c['mfu_square']:.0f} % of {peak['square']:.0f}), "
              f"peak RSS {c['peak_rss_mb']:.0f} MB")
    print(f"ours / hf_batched: {result['ratio_ours_over_hf_batched']:.2f}x -> {OUT}")


if __name__ == "__main__":
    main()
