"""Files on disk: atomic directories and files, JSON and JSONL, ``manifest.json``, digests and the code
version.

Outputs are written through :func:`atomic_dir` (a directory) or :func:`atomic_file` (one file, also under
:func:`write_text`, :func:`write_json` and :func:`write_jsonl`), so a crash never leaves half of one; JSONL
is read through :func:`iter_jsonl`, so a bad line is reported as ``file:line``.

Contract (docs/design.md#the-step-contract): a step writes ``<campaign_dir>/iter-<n>/<step>/``
atomically — everything goes to a temp dir next to it, renamed into place only when complete — with a
``manifest.json`` naming its inputs and their digests, its config, its metrics and the code version. A
step's *key* hashes its config, its inputs' digests and the code version: same key, same output.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .digests import MANIFEST, check_files, digest, file_records  # noqa: F401 (digest: re-exported)
from .errors import DataError

log = logging.getLogger("rlhf")

# The code that computes step outputs is this package, the algorithm (the Prefect tasks add their own
# module's digest to their cache keys: rlhf.tasks.steps). The orchestration around it (flows, CLI,
# reports, tracking) is left out: whatever it decides reaches a step as parameters, which are in the
# step's key themselves, so fixing a report or the CLI reruns no training.
CORE_DIR = Path(__file__).resolve().parent


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able object with sorted keys (config sections, input digests)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_digest(path: Path) -> str:
    """Hash of the Python files under ``path`` (a directory or one file), with their paths relative to
    it (so the same code hashes the same from a source checkout and from an installed wheel)."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    digest_ = hashlib.sha256()
    for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
        digest_.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return digest_.hexdigest()[:12]


@cache
def code_version() -> str:
    """``<package version>+<hash of the core's sources>``: changes whenever the code that computes step
    outputs changes, with or without git. Computed once per process (reading the sources took
    ~15 ms, and every step's cache key asks for it): a process runs the code it imported when it
    started, so a source file edited while ``rlhf serve`` is up counts from the next process on, which is
    when it takes effect."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("rlhf-platform")
    except PackageNotFoundError:
        base = "0+unknown"
    return f"{base}+{source_digest(CORE_DIR)}"


def step_key(config: dict, inputs: dict[str, str]) -> str:
    """Cache key of a step: config section + input digests + code version."""
    return stable_hash({"config": config, "inputs": inputs, "code": code_version()})


@contextmanager
def atomic_dir(final: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success it replaces ``final`` in one rename (an older
    ``final`` is removed only after the new one is in place). On error the temp dir is removed.

    ``replace=False`` is for a cache any process may fill with the same content: an existing non-empty
    ``final`` (another process was first) is kept, the temp dir removed and ``OSError`` raised.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if not replace:
            os.replace(tmp, final)  # fails on a non-empty directory: the first writer's copy stays
            return
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


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for the caller to write; on success it is renamed to ``path`` in
    one step, so a reader (or a rerun after a crash) sees the old file or the whole new one, never half of
    it. On error the temp file is removed. The temp file is created by the writer, with the usual
    permissions (``mkstemp`` would make it private to the owner)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically as UTF-8, without newline translation: the same bytes on every platform."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """Write JSON atomically, indented; ``sort_keys=False`` keeps the object's own key order."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any], ensure_ascii: bool = True,
                default: Callable[[Any], Any] | None = None) -> None:
    """Write one JSON value per line, atomically. ``ensure_ascii`` and ``default`` are ``json.dumps``'s:
    ``ensure_ascii=False`` keeps non-ASCII text readable in files people open."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=ensure_ascii, default=default) + "\n" for row in rows))


def iter_jsonl(path: str | Path, on_error: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for every non-blank line of a JSONL file (``.gz``: gzip-compressed); lines are
    numbered from 1 and blank ones count, so a number is the line an editor shows.

    A line that is not UTF-8 or not JSON is a :class:`DataError` naming the file and the line: raised, or,
    given ``on_error``, passed to it (in file order, before the next line is read) and the line skipped, so
    a validator can report every bad line at once.
    """
    path = Path(path)
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                value = json.loads(text.rstrip("\r\n"))  # so an error's column is on this line
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                error = _jsonl_error(path, number, err)
                if on_error is None:
                    raise error from None
                on_error(error)
                continue
            yield number, value


def _jsonl_error(path: Path, line: int, err: UnicodeDecodeError | json.JSONDecodeError) -> DataError:
    if isinstance(err, UnicodeDecodeError):
        return DataError(path, f"not UTF-8 text ({err.reason})", line, hint="save the file as UTF-8")
    return DataError(path, f"not valid JSON ({err.msg} at column {err.colno})", line,
                     hint="fix or remove this line")


def read_jsonl(path: str | Path) -> list[dict]:
    """The values of a JSONL file, one per non-blank line (objects, in the files the platform writes);
    a bad line raises :class:`DataError` (see :func:`iter_jsonl`)."""
    return [value for _, value in iter_jsonl(path)]


def write_manifest(out_dir: str | Path, step: str, key: str, config: dict, inputs: dict[str, dict],
                   metrics: dict, **extra: Any) -> dict:
    """Write ``manifest.json`` in ``out_dir``, last: ``inputs`` maps an input's name to ``{"path",
    "digest"}``, ``key`` is :func:`step_key` of the config and those digests, and ``files`` records the
    size and digest of every file already in ``out_dir`` (what :func:`verify_output` checks)."""
    manifest = {
        "step": step,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "inputs": inputs,
        "config": config,
        "metrics": metrics,
        "files": file_records(out_dir),
        **extra,
    }
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict | None:
    """The output's manifest; None when there is none or it is unreadable (a half-written or damaged
    ``manifest.json`` makes the output unfinished, never a crash)."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s): the output counts as unfinished", path, err)
        return None
    return manifest if isinstance(manifest, dict) and "key" in manifest else None


def verify_output(out_dir: str | Path, key: str | None = None) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` when ``out_dir`` holds a finished output (of ``key``, when given) whose files
    are what its manifest recorded; else ``(None, why not)``."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        return None, f"no readable {MANIFEST}"
    if key is not None and manifest["key"] != key:
        return None, "it was written with another config, other inputs or other code (its key differs)"
    if "files" not in manifest:
        return None, f"its {MANIFEST} records no file digests (written by an older version)"
    pruned = set(pruned_files(out_dir))
    problem = check_files(out_dir, {name: r for name, r in manifest["files"].items() if name not in pruned})
    return (None, problem) if problem else (manifest, None)


PRUNED = "pruned.json"  # in an output whose model weights were deleted to save disk (campaign.keep)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def pruned_files(out_dir: str | Path) -> list[str]:
    """The files of an output deleted on purpose (:func:`prune_weights`); [] for a whole output."""
    path = Path(out_dir) / PRUNED
    return json.loads(path.read_text())["files"] if path.is_file() else []


def prune_weights(out_dir: str | Path) -> int:
    """Delete a finished output's weight files to save disk; returns the bytes freed. The output stays a
    valid, cached step result (its manifest, metrics and tables stay; ``pruned.json``, written before
    anything is deleted, lists what is gone), so a rerun of the campaign does not recompute it; loading
    it as a model is a clear error."""
    manifest = read_manifest(out_dir)
    weights = sorted(name for name in (manifest or {}).get("files", {}) if name.endswith(WEIGHT_SUFFIXES)
                     and (Path(out_dir) / name).exists())
    if not weights:
        return 0
    write_json(Path(out_dir) / PRUNED, {"files": sorted(set(pruned_files(out_dir)) | set(weights)),
                                        "pruned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    freed = 0
    for name in weights:
        freed += (Path(out_dir) / name).stat().st_size
        (Path(out_dir) / name).unlink()
    return freed
