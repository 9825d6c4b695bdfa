"""The machine's measured matmul peak, the ceiling a benchmark's MFU is a fraction of (its description is
``rlhf.core.models.describe_machine``, a process's peak memory ``rlhf.core.steps.common.peak_rss_mb``)."""

from __future__ import annotations

import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _best_gflops(shapes: list[tuple[int, int, int]], dtype: torch.dtype, trials: int) -> float:
    """GFLOP/s of one pass over ``shapes`` ((m, k, n) products, in turn), the best of ``trials`` passes."""
    operands = [(torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in operands:  # first calls: the library picks and prepares its kernels
        a @ b
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for a, b in operands:
            a @ b
        best = max(best, flops / (time.perf_counter() - started) / 1e9)
    return best


def matmul_peaks(precision: str, shapes: list[tuple[int, int, int]] | None = None, trials: int = 10) -> dict:
    """This machine's matmul GFLOP/s in ``precision``'s dtype on torch's current threads: ``square`` (2048^3,
    three products a pass) and, given a workload's own ``shapes``, ``decode`` (one pass over them, as its step
    runs them). The best of ``trials``: a shared machine's load lowers it, so take it before and after."""
    dtype = DTYPES[precision]
    peaks = {"square": _best_gflops([(2048, 2048, 2048)] * 3, dtype, max(3, trials // 2))}
    if shapes:
        peaks["decode"] = _best_gflops(shapes, dtype, trials)
    return peaks
