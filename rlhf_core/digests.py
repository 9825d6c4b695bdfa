"""Content digests of inputs and outputs, and the check that a finished output is still what its
manifest says it is.

Hashing a model directory (~0.5 GB for SmolLM2) on every run would cost seconds per step, so a file's
SHA-256 is remembered, in this process and in ``<cache dir>/digests.json``, under the file's identity on
disk: device, inode, size and modification time. Editing, truncating or replacing a file changes one of
them and its digest is computed again; renaming a file (what an atomic write does last) keeps them, so
an output hashed while it was written is not hashed again once it is in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("rlhf")
MANIFEST = "manifest.json"
_CACHE_FILE = "digests.json"
_CACHE_LIMIT = 20_000  # remembered digests (~2 MB of JSON)
_lock = threading.Lock()
_memory: dict[str, str] = {}  # identity -> sha256
_loaded: set[Path] = set()


def default_cache_dir() -> Path:
    """Where the platform caches what it can recompute (the dequantised embedded model, digests):
    ``RLHF_CACHE_DIR`` or ``~/.cache/rlhf``."""
    return Path(os.environ.get("RLHF_CACHE_DIR", Path.home() / ".cache" / "rlhf"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def _cache_path() -> Path:
    return default_cache_dir() / _CACHE_FILE


def _load(path: Path) -> None:
    if path in _loaded:
        return
    _loaded.add(path)
    try:
        _memory.update(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass  # no cache yet, or a damaged one: it only saves time, digests are recomputed


def _save(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_memory))
        os.replace(tmp, path)
    except OSError as err:  # a read-only home: digests are still right, only recomputed next time
        log.debug("digest cache not saved (%s)", err)


def _digest(path: Path) -> tuple[str, bool]:
    """``(sha256, newly computed)``; a new digest is remembered in memory only (see :func:`_saved`)."""
    key = _identity(path.stat())
    with _lock:
        _load(_cache_path())
        if key in _memory:
            return _memory[key], False
    value = sha256_file(path)
    if _identity(path.stat()) != key:  # changed while being read: do not remember either version
        return _digest(path)
    with _lock:
        _memory[key] = value
    return value, True


def _saved(new: bool) -> None:
    """Write the remembered digests once per call that computed any (not once per file), keeping the
    newest :data:`_CACHE_LIMIT` (identities of deleted files are never looked up again)."""
    if new:
        with _lock:
            for stale in list(_memory)[:max(0, len(_memory) - _CACHE_LIMIT)]:
                del _memory[stale]
            _save(_cache_path())


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, remembered under its identity on disk (see the module's docstring)."""
    value, new = _digest(Path(path))
    _saved(new)
    return value


def digest(path: str | Path) -> str:
    """Content digest of a file or directory. A step output is identified by its manifest, which pins
    its inputs, config and the digests of its own files."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if (path / MANIFEST).is_file():
        return file_digest(path / MANIFEST)
    combined, new = hashlib.sha256(), False
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        value, computed = _digest(file)
        combined.update(file.relative_to(path).as_posix().encode() + b"\0" + value.encode())
        new |= computed
    _saved(new)
    return combined.hexdigest()


def file_records(out_dir: str | Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file in a step's output directory but its
    manifest: what :func:`check_files` holds the directory to later."""
    out_dir, records, new = Path(out_dir), {}, False
    for file in sorted(out_dir.rglob("*")):
        if file.is_file() and file.name != MANIFEST:
            value, computed = _digest(file)
            records[file.relative_to(out_dir).as_posix()] = {"size": file.stat().st_size, "sha256": value}
            new |= computed
    _saved(new)
    return records


def check_files(out_dir: str | Path, records: dict[str, dict]) -> str | None:
    """Why the files of ``out_dir`` do not match ``records`` (a missing, truncated or changed file), or
    None when they all do. Sizes first (cheap), then digests (remembered, so cheap when unchanged)."""
    out_dir = Path(out_dir)
    for name, record in records.items():
        file = out_dir / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != record["size"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {record['size']}"
    new, problem = False, None
    for name, record in records.items():
        value, computed = _digest(out_dir / name)
        new |= computed
        if value != record["sha256"]:
            problem = f"{name} changed since it was written (its SHA-256 differs from the manifest's)"
            break
    _saved(new)
    return problem


NOT_CONTENT = frozenset({"here", "export_path", "cache_dir"})  # config fields naming paths written to, not read


def names_an_input(value, field: str = "") -> bool:
    """True when the config value ``value`` (of the field ``field``) names an existing local file or directory
    that a step reads: a string with a directory part or a file suffix (not a bare word like "tiny" or "auto"
    that a folder in the current directory might happen to be called), outside :data:`NOT_CONTENT`. The
    paths whose content digest a cache key follows (tasks/steps.py, rlhf/record/finished.py)."""
    return (isinstance(value, str) and field not in NOT_CONTENT and ("/" in value or bool(Path(value).suffix))
            and Path(value).exists())


def with_input_digests(value: Any, field: str = "", first: Callable[[Any], Any] | None = None) -> Any:
    """``value`` (a config: dicts, lists, dataclasses) with each string that :func:`names_an_input` followed by
    its content digest, ``{"path", "digest"}``: what a cache key holds of it. ``first(value)``, when given,
    is tried on every value before anything else and replaces it unless it returns None (the task keys use
    it for upstream references)."""
    if first is not None and (replaced := first(value)) is not None:
        return replaced
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: with_input_digests(v, k, first) for k, v in value.items()}
    if isinstance(value, list):
        return [with_input_digests(v, field, first) for v in value]
    if names_an_input(value, field):
        return {"path": value, "digest": digest(value)}
    return value
