"""Step outputs on disk: atomic directories, ``manifest.json``, digests and the code version.

Contract (DESIGN.md): a step writes ``<campaign_dir>/iter-<n>/<step>/`` atomically — everything goes to a
temp dir next to it, renamed into place only when complete — with a ``manifest.json`` naming its inputs
and their digests, its config, its metrics and the code version. A step's *key* hashes its config, its
inputs' digests and the code version: same key, same output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
# The code that computes step outputs: the algorithm and the tasks that call it. The orchestration
# around them (flows/: the DAG's wiring, the CLI, reports; tasks/tracking.py) is left out: whatever it
# decides reaches a step as parameters, which are in the step's key themselves, so fixing a report or
# the CLI reruns no training.
_STEP_CODE = ("rlhf_core", "tasks/steps.py")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def digest(path: str | Path) -> str:
    """Content digest of a file or directory. A step output is identified by its manifest (which pins
    its own inputs, config and metrics), so its directory is not re-read byte by byte."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if (path / MANIFEST).is_file():
        return sha256_file(path / MANIFEST)
    digest_ = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest_.update(str(file.relative_to(path)).encode())
        digest_.update(sha256_file(file).encode())
    return digest_.hexdigest()


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able object with sorted keys (config sections, input digests)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_digest(root: Path, parts: tuple[str, ...]) -> str:
    """Hash of the Python files under ``root/<part>`` (a directory or one file), with their paths."""
    digest_ = hashlib.sha256()
    for part in parts:
        path = root / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest_.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest_.hexdigest()[:12]


@cache
def code_version() -> str:
    """``<package version>+<hash of the step code>``: changes whenever the code that computes step outputs
    changes (``_STEP_CODE``), with or without git. Computed once per process (reading the sources took
    ~15 ms, and every step's cache key asks for it): a process runs the code it imported when it
    started, so a source file edited while ``rlhf serve`` is up counts from the next process on, which is
    when it takes effect."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("rlhf-platform")
    except PackageNotFoundError:
        base = "0+unknown"
    return f"{base}+{source_digest(Path(__file__).resolve().parent.parent, _STEP_CODE)}"


def step_key(config: dict, inputs: dict[str, str]) -> str:
    """Cache key of a step: config section + input digests + code version."""
    return stable_hash({"config": config, "inputs": inputs, "code": code_version()})


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success it replaces ``final`` in one rename (an older
    ``final`` is removed only after the new one is in place). On error the temp dir is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def write_manifest(out_dir: str | Path, step: str, key: str, config: dict, inputs: dict[str, dict],
                   metrics: dict, **extra: Any) -> dict:
    """Write ``manifest.json`` in ``out_dir``; ``inputs`` maps an input's name to ``{"path", "digest"}``
    and ``key`` is :func:`step_key` of the config and those digests."""
    manifest = {
        "step": step,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "inputs": inputs,
        "config": config,
        "metrics": metrics,
        **extra,
    }
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
