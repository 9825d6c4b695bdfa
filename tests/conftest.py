"""Shared fixtures: the tiny model and tokenizers built in code (nothing downloaded)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# Before anything imports Prefect: its home (database, cached task results) in a fresh temp dir, no
# telemetry, and no leftover empty API URL (empty is not "unset" to Prefect). Removed when the session's
# process exits.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rlhf-tests-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
if not os.environ.get("PREFECT_API_URL"):
    os.environ.pop("PREFECT_API_URL", None)
# Under pytest-xdist (the Makefile's targets run one worker per core) each worker computes on one thread, and so
# do the processes its tests start: two workers of two threads each on 2 cores would oversubscribe them, OpenMP's
# threads waiting on each other. Set before torch is imported, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from rlhf.core.models import build_tiny_model, build_tiny_tokenizer

atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture
def one_thread():
    """One BLAS thread: on tiny matrices a second thread only costs synchronisation (on a busy 2-core box,
    a lot of it). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    """(model, tokenizer): a fresh random 2-layer Llama, same weights every time."""
    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def chatml_tokenizer():
    """The byte-level tiny tokenizer with SmolLM2's ChatML template (no default system prompt)."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer
