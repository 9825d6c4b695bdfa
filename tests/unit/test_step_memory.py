"""Per-step memory (rlhf_core/steps/common.py): what a step frees goes back to the OS before the next step
starts, and the next step's peak is measured from there, not from the process's high-water mark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlhf.core.steps.common import peak_rss_mb, release_memory, reset_peak_rss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_freed_heap_memory_is_handed_back():
    """~190 MB of 32 kB blocks freed between small blocks that stay: the C heap keeps those pages resident (no
    free memory at its top to trim) until release_memory hands them back."""
    chunks, kept = [], []
    for _ in range(6000):
        chunks.append(bytearray(32 * 1024))
        kept.append(bytearray(2000))
    del chunks
    before = rss_mb()
    release_memory()
    assert before - rss_mb() > 100, (before, rss_mb())
    assert len(kept) == 6000


def test_the_peak_is_measured_from_the_reset():
    block = bytearray(300 * 1024 * 1024)  # touched: resident
    high = peak_rss_mb()
    del block
    release_memory()
    reset_peak_rss()
    assert peak_rss_mb() < high - 200, (peak_rss_mb(), high)
