"""The optional vLLM backend: the same interface as the default one. Its sampling test needs a GPU and
vllm (``pip install '.[gpu]'``) and skips otherwise; without vllm, choosing it is a clear config error."""

import importlib.util

import pytest
import torch

from rlhf.core.errors import ConfigError
from rlhf.core.models import build_tiny_model
from rlhf.core.sampling import SamplingConfig, make_backend

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_choosing_vllm_without_it_names_the_key_and_the_fix():
    model, tok = build_tiny_model(seed=0)
    with pytest.raises(ConfigError, match=r"sampling.backend.*pip install '.\[gpu\]'"):
        make_backend(SamplingConfig(backend="vllm"), model, tok, model_path="unused")


@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vllm and a GPU")
def test_vllm_backend_returns_the_same_columns(tmp_path):
    model, tok = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts = [[{"role": "user", "content": "hello " * i}] for i in range(1, 4)]
    backend = make_backend(SamplingConfig(backend="vllm"), model, tok, model_path=str(tmp_path))
    out = backend.sample(prompts, 2, SamplingConfig(backend="vllm", temperature=1.0, max_new_tokens=8, seed=0))
    assert sorted(zip(out.prompt_index, out.sample_index)) == [(p, s) for p in range(3) for s in range(2)]
    assert set(out.stop_reason) <= {"stop", "length"}
    assert all(len(r.token_ids) == len(r.logprobs) == r.n_tokens <= 8 for r in out.itertuples())
