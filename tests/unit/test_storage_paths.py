"""rlhf.storage without a server: telling URLs from paths, local pass-through, and the upload/fetch contract on
fsspec's in-memory filesystem (memory://). The same functions against a real S3 server:
tests/integration/test_storage.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from rlhf import storage
from rlhf.core.artifacts import atomic_dir, digest, read_manifest, verify_output, write_manifest
from rlhf.core.errors import ConfigError
from rlhf.record.layout import CampaignLocked


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE_DIR", str(tmp_path / "rlhf-cache"))  # digests.json, default fetch cache


def make_output(out: Path, key: str, files: dict[str, bytes]) -> dict:
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        write_manifest(tmp, "sft", key, {"lr": 1}, {}, {"loss": 0.5})
    return read_manifest(out)


def memory_url() -> str:
    return f"memory://rlhf-{uuid.uuid4().hex[:8]}/campaign"


def test_urls_and_paths_are_told_apart():
    assert not storage.is_url("runs") and not storage.is_url(Path("/tmp/x")) and not storage.is_url("file:///tmp/x")
    assert storage.is_url("s3://bucket/prefix") and storage.is_url("memory://x")
    assert storage.protocol("S3://b/p") == "s3" and storage.protocol("/a/b") is None
    assert not storage.is_url("runs/odd://name")  # a path that happens to hold "://" later on
    assert storage.local_path("file:///tmp/a%20b/c") == Path("/tmp/a b/c")
    assert storage.local_path("runs/x") == Path("runs/x")
    with pytest.raises(ValueError):
        storage.local_path("s3://b/p")
    assert storage.join("s3://bucket/prefix/", "camp", "iter-1/") == "s3://bucket/prefix/camp/iter-1"
    assert storage.join("/tmp/root", "camp", "iter-1") == Path("/tmp/root/camp/iter-1")
    assert storage.join("file:///tmp/root", "camp") == Path("/tmp/root/camp")
    assert storage.s3_bucket_key("s3://bucket/a/b/") == ("bucket", "a/b")
    assert storage.s3_bucket_key("s3://bucket") == ("bucket", "")


def test_display_hides_credentials_in_a_url():
    assert storage.display("s3://AKIA:secret@bucket/prefix") == "s3://bucket/prefix"
    assert storage.display("file:///tmp/x") == "/tmp/x"


def test_endpoint_prefers_mlflows_variable(monkeypatch):
    for name in storage.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert storage.endpoint() == (None, None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws:1")
    assert storage.endpoint() == ("http://aws:1", "AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio:9000")
    assert storage.endpoint() == ("http://minio:9000", "MLFLOW_S3_ENDPOINT_URL")


def test_cache_path_is_named_after_the_key(tmp_path):
    assert storage.cache_path("ab12" * 16, tmp_path) == tmp_path / ("ab12" * 16)
    odd = storage.cache_path("../../etc", tmp_path)
    assert odd.parent == tmp_path and ".." not in odd.name


def test_check_root(monkeypatch):
    storage.check_root("/tmp/anything")  # local: today's behaviour, nothing to check
    storage.check_root(memory_url())
    with pytest.raises(ConfigError, match="unknown storage protocol 'nope'") as err:
        storage.check_root("nope://x/y", key="campaign.root")
    assert err.value.key == "campaign.root"


def test_round_trip_on_memory(tmp_path):
    files = {"metrics.json": b'{"loss": 0.5}', "model/weights.bin": b"\x00" * 1000}
    manifest = make_output(tmp_path / "sft", "k1", files)
    url = storage.join(memory_url(), "iter-0", "sft")
    assert storage.remote_manifest(url) is None and not storage.finished(url)
    assert storage.upload_output(tmp_path / "sft", url) == manifest
    assert storage.remote_manifest(url) == manifest and storage.finished(url)
    copy = storage.fetch_output(url, "k1", tmp_path / "cache")
    assert copy == tmp_path / "cache" / "k1"
    assert {name: (copy / name).read_bytes() for name in files} == files
    assert digest(copy) == digest(tmp_path / "sft")  # the same bytes of manifest: the same input digest
    with pytest.raises(storage.StorageError, match="another version"):
        storage.fetch_output(url, "k2", tmp_path / "cache")


def test_reupload_on_memory_replaces_without_nesting(tmp_path):
    url = storage.join(memory_url(), "iter-1", "annotate")
    make_output(tmp_path / "v1", "k1", {"a.txt": b"1", "old/b.txt": b"2"})
    make_output(tmp_path / "v2", "k2", {"a.txt": b"one", "c.txt": b"3"})
    storage.upload_output(tmp_path / "v1", url)
    storage.upload_output(tmp_path / "v2", url)
    fs, path = storage.filesystem(url)
    assert sorted(name[len(path) + 1:] for name in fs.find(path)) == ["a.txt", "c.txt", "manifest.json"]
    assert storage.remote_manifest(url)["key"] == "k2"


def test_local_locations_pass_through(tmp_path):
    make_output(tmp_path / "out", "k1", {"a.txt": b"1"})
    assert storage.fetch_output(tmp_path / "out", "k1") == tmp_path / "out"  # used in place, not copied
    with pytest.raises(storage.StorageError, match="key differs"):
        storage.fetch_output(tmp_path / "out", "k2")
    storage.upload_output(tmp_path / "out", f"file://{tmp_path}/copy")
    assert verify_output(tmp_path / "copy", "k1")[0] is not None
    storage.upload_output(tmp_path / "out", tmp_path / "out")  # onto itself: nothing to do
    assert storage.finished(tmp_path / "out")
    storage.write_remote_json(tmp_path / "s" / "summary.json", {"b": 1, "a": 2}, sort_keys=False)
    assert storage.read_remote_text(tmp_path / "s" / "summary.json") == '{\n  "b": 1,\n  "a": 2\n}\n'
    assert storage.exists(tmp_path / "s" / "summary.json") and not storage.exists(tmp_path / "none")


def test_small_files_on_memory():
    url = storage.join(memory_url(), "summary.json")
    assert not storage.exists(url)
    with pytest.raises(FileNotFoundError):
        storage.read_remote_text(url)
    storage.write_remote_json(url, {"iterations": [1, 2]})
    assert storage.exists(url)
    assert storage.read_remote_text(url) == '{\n  "iterations": [\n    1,\n    2\n  ]\n}\n'


def test_upload_refuses_an_unfinished_output(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "a.txt").write_text("x")
    with pytest.raises(storage.StorageError, match="not a finished step output"):
        storage.upload_output(tmp_path / "half", memory_url())


def test_locks_local_and_memory(tmp_path):
    for where in (tmp_path / "campaign", memory_url()):
        with storage.campaign_lock(where):
            with pytest.raises(CampaignLocked, match=r"pid \d+ on .* since"):
                with storage.campaign_lock(where):
                    pass
        with storage.campaign_lock(where):  # released: free again
            pass


def test_no_lock_on_storage_without_conditional_writes(tmp_path):
    with pytest.raises(storage.StorageError, match="no campaign lock on ftp://"):
        with storage.campaign_lock("ftp://host/campaign"):
            pass


def test_refs_move_between_local_and_remote(tmp_path):
    make_output(tmp_path / "pool", "k1", {"pool_sft.jsonl": b"{}\n", "sub/a.txt": b"a"})
    url = storage.join(memory_url(), "iter-1", "pool")
    ref = {"step": "rejection_sample", "path": str(tmp_path / "pool"), "key": "k1", "metrics": {"n": 1},
           "files": {"pool_sft": str((tmp_path / "pool" / "pool_sft.jsonl").resolve()), "other": "/elsewhere/x"}}
    storage.upload_output(ref["path"], url)
    remote = storage.ref_at(ref, url)
    assert remote == {**ref, "path": url, "files": {"pool_sft": f"{url}/pool_sft.jsonl", "other": "/elsewhere/x"}}
    local = storage.fetch_ref(remote, tmp_path / "cache")
    assert local["path"] == str(tmp_path / "cache" / "k1") and local["metrics"] == {"n": 1}
    assert Path(local["files"]["pool_sft"]).read_bytes() == b"{}\n"
    assert storage.fetch_ref(ref) is ref  # local: as it is
