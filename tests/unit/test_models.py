"""The model loader: tiny model, error messages, precision, and the core's import purity."""


import pytest
import torch

from rlhf.core.errors import ConfigError
from rlhf.core.models import ModelConfig, build_tiny_model, load_model, resolve_precision


def test_tiny_model_is_deterministic_and_chat_ready():
    (m1, tok), (m2, _) = build_tiny_model(seed=3), build_tiny_model(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert not torch.equal(next(build_tiny_model(seed=4)[0].parameters()), next(m1.parameters()))
    assert m1.config.num_hidden_layers == 2 and m1.config.hidden_size == 64
    assert tok.pad_token_id != tok.eos_token_id and tok.chat_template


def test_tiny_model_saves_and_reloads_as_a_directory(tmp_path):
    model, tok = build_tiny_model()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model(ModelConfig(name_or_path=str(tmp_path)))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))
    assert tok2.chat_template == tok.chat_template and any(tmp_path.glob("*.safetensors"))


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ConfigError, match="model.name_or_path.*Offline\\?.*smollm2"):
        load_model(ModelConfig(name_or_path="some-org/some-model-that-is-not-here"))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "model.gguf")))


def test_precision_resolution():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="model.precision"):
        resolve_precision("fp8")


def test_the_machine_a_figure_was_measured_on_is_described():
    from rlhf.core.models import cpu_has_fast_bf16, describe_machine

    machine = describe_machine("fp32")
    assert machine["precision"] == "fp32" and machine["torch"] == torch.__version__
    assert machine["cores"] >= 1 and machine["fast_bf16"] == cpu_has_fast_bf16() and machine["cpu"]
    assert describe_machine("auto")["precision"] == ("bf16" if cpu_has_fast_bf16() else "fp32")
