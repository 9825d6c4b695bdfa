"""Content digests and the check that a finished output is what its manifest recorded: truncated,
edited, missing or foreign outputs are never reused, and unchanged files are not hashed twice."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from rlhf.core import digests
from rlhf.core.artifacts import atomic_dir, read_manifest, verify_output, write_manifest
from rlhf.core.digests import check_files, file_digest, file_records


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own digest cache (in memory and on disk)."""
    monkeypatch.setenv("RLHF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(digests, "_memory", {})
    monkeypatch.setattr(digests, "_loaded", set())


def test_file_digest_is_sha256_and_follows_edits(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"abc")
    assert file_digest(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")  # same path, new content: a new size, so not the remembered digest
    assert file_digest(path) == hashlib.sha256(b"abcd").hexdigest()
    os.utime(path, ns=(1, 1))  # same size, new mtime: hashed again, same answer
    assert file_digest(path) == hashlib.sha256(b"abcd").hexdigest()


def test_unchanged_files_are_not_hashed_again_even_after_a_rename(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 1000)
    first = file_digest(path)
    calls = []
    monkeypatch.setattr(digests, "sha256_file", lambda p, chunk=1 << 20: calls.append(p) or "never")
    moved = path.rename(tmp_path / "model.bin")  # what an atomic write does last
    assert file_digest(moved) == first and calls == []
    # another process reads the cache file
    monkeypatch.setattr(digests, "_memory", {})
    monkeypatch.setattr(digests, "_loaded", set())
    assert file_digest(moved) == first and calls == []


def test_a_damaged_cache_file_only_costs_time(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "digests.json").write_text("{not json")
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_digest(path) == hashlib.sha256(b"abc").hexdigest()


def _output(tmp_path, key="k1"):
    out = tmp_path / "step"
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"w" * 4096)
        (tmp / "pairs.parquet").write_bytes(b"p" * 100)
        write_manifest(tmp, "step", key, {"lr": 1}, {}, {"loss": 0.5})
    return out


def test_manifest_records_every_file_and_a_whole_output_verifies(tmp_path):
    out = _output(tmp_path)
    manifest = read_manifest(out)
    assert manifest["files"] == {"model.safetensors": {"size": 4096, "sha256": hashlib.sha256(b"w" * 4096).hexdigest()},
                                 "pairs.parquet": {"size": 100, "sha256": hashlib.sha256(b"p" * 100).hexdigest()}}
    assert verify_output(out, "k1") == (manifest, None)


@pytest.mark.parametrize("damage, why", [
    (lambda out: (out / "model.safetensors").write_bytes(b"w" * 1000), "model.safetensors has 1000 bytes"),
    (lambda out: (out / "pairs.parquet").unlink(), "pairs.parquet is missing"),
    (lambda out: (out / "pairs.parquet").write_bytes(b"q" * 100), "pairs.parquet changed"),
    (lambda out: (out / "manifest.json").write_text('{"step": "step", "ke'), "no readable manifest.json"),
])
def test_a_damaged_output_is_not_trusted(tmp_path, damage, why):
    out = _output(tmp_path)
    damage(out)
    manifest, problem = verify_output(out, "k1")
    assert manifest is None and why in problem


def test_an_output_of_another_key_is_not_trusted(tmp_path):
    out = _output(tmp_path, key="config-B")
    assert "another config" in verify_output(out, "config-A")[1]


def test_check_files_names_the_first_problem(tmp_path):
    (tmp_path / "a").write_bytes(b"12")
    records = file_records(tmp_path)
    assert check_files(tmp_path, records) is None
    assert check_files(tmp_path, {**records, "b": {"size": 1, "sha256": "x"}}) == "b is missing"


def test_a_manifest_without_file_records_is_an_older_output(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"step": "s", "key": "k1", "metrics": {}}))
    assert "older version" in verify_output(out, "k1")[1]
