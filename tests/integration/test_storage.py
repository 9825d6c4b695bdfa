"""rlhf.storage against a real S3-compatible server on loopback (moto's server mode, one per module): step
outputs uploaded with their manifest as the commit marker and fetched once into a verified local cache, the
campaign lock as a lease object with conditional writes, and the up-front check of campaign.root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import servers
from botocore.exceptions import ClientError

from rlhf import storage
from rlhf.core.artifacts import MANIFEST, atomic_dir, digest, prune_weights, read_manifest, write_manifest
from rlhf.core.errors import ConfigError
from rlhf.record.layout import CampaignLocked

FILES = {"metrics.json": b'{"loss": 0.25}\n', "pairs.parquet": os.urandom(3000),
         "model/model.safetensors": os.urandom(20_000), "model/config.json": b'{"layers": 2}'}


@pytest.fixture(scope="module")
def endpoint():
    with servers.s3_server() as url:
        yield url


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    """Dummy credentials, the server as the endpoint, boto kept away from ~/.aws and instance metadata, a
    fresh bucket; yields what the tests use."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("RLHF_CACHE_DIR", str(tmp_path / "rlhf-cache"))
    client = boto3.session.Session().client("s3", endpoint_url=endpoint)
    bucket = f"rlhf-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return SimpleNamespace(endpoint=endpoint, client=client, bucket=bucket, root=f"s3://{bucket}/campaigns",
                           cache=tmp_path / "cache")


def keys(s3, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` in the test's bucket."""
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def make_output(out: Path, key: str, files: dict[str, bytes] = FILES) -> dict:
    """A step output as a step writes it: an atomic directory, manifest.json last."""
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        write_manifest(tmp, "train_policy", key, {"lr": 1e-5}, {"sft": {"path": "x", "digest": "d"}},
                       {"loss": 0.25})
    return read_manifest(out)


def step_url(s3, step: str = "train_policy") -> str:
    return storage.join(s3.root, "demo", "iter-1", step)


def prefix_of(url: str) -> str:
    return storage.s3_bucket_key(url)[1]


# --- upload and fetch -------------------------------------------------------------------------------------

def test_round_trip(s3, tmp_path):
    manifest = make_output(tmp_path / "out", "k" * 64)
    url = step_url(s3)
    assert not storage.finished(url) and not storage.exists(url)
    assert storage.upload_output(tmp_path / "out", url) == manifest
    prefix = prefix_of(url)
    assert keys(s3, prefix) == sorted(f"{prefix}/{name}" for name in [*FILES, MANIFEST])
    assert storage.remote_manifest(url) == manifest and storage.finished(url) and storage.exists(url)

    copy = storage.fetch_output(url, "k" * 64, s3.cache)
    assert copy == storage.cache_path("k" * 64, s3.cache) and copy.parent == s3.cache
    assert {name: (copy / name).read_bytes() for name in FILES} == FILES
    assert (copy / MANIFEST).read_bytes() == (tmp_path / "out" / MANIFEST).read_bytes()
    assert digest(copy) == digest(tmp_path / "out")  # what a downstream step's key hashes: the same everywhere
    assert sorted(p.name for p in s3.cache.iterdir()) == [copy.name]  # no temp dir left behind


def test_default_cache_is_under_rlhf_cache_dir(s3, tmp_path):
    make_output(tmp_path / "out", "key-default")
    storage.upload_output(tmp_path / "out", step_url(s3))
    copy = storage.fetch_output(step_url(s3), "key-default")
    assert copy == tmp_path / "rlhf-cache" / "outputs" / "key-default"


def test_a_half_uploaded_output_is_not_finished(s3, tmp_path):
    make_output(tmp_path / "out", "k1")
    url = step_url(s3)
    for name in FILES:  # the files are there, the commit marker is not
        s3.client.upload_file(str(tmp_path / "out" / name), s3.bucket, f"{prefix_of(url)}/{name}")
    assert storage.exists(url)
    assert storage.remote_manifest(url) is None and not storage.finished(url)
    with pytest.raises(storage.StorageError, match=f"{url} holds no finished step output"):
        storage.fetch_output(url, "k1", s3.cache)
    assert not s3.cache.exists()


class Interrupted(ConnectionError):
    pass


class CutAfterOneFile:
    """A filesystem whose multi-file upload stops after its first file, like a dropped connection."""

    def __init__(self, fs):
        self.fs = fs

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def put(self, lpaths, rpaths, **kwargs):
        self.fs.put_file(lpaths[0], rpaths[0])
        raise Interrupted("connection reset")


def test_an_interrupted_reupload_leaves_no_manifest(s3, tmp_path, monkeypatch):
    url = step_url(s3)
    make_output(tmp_path / "v1", "k1")
    make_output(tmp_path / "v2", "k2", {name: data + b"v2" for name, data in FILES.items()})
    storage.upload_output(tmp_path / "v1", url)
    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem", lambda u: (CutAfterOneFile(real(u)[0]), real(u)[1]))
    with pytest.raises(Interrupted):
        storage.upload_output(tmp_path / "v2", url)
    monkeypatch.setattr(storage, "filesystem", real)
    # v1's manifest went first: neither the old manifest over a mix of files, nor the new one
    assert storage.remote_manifest(url) is None
    with pytest.raises(storage.StorageError, match="no finished step output"):
        storage.fetch_output(url, "k1", s3.cache)
    storage.upload_output(tmp_path / "v2", url)  # run again: complete
    assert storage.remote_manifest(url)["key"] == "k2"
    copy = storage.fetch_output(url, "k2", s3.cache)
    assert (copy / "pairs.parquet").read_bytes() == FILES["pairs.parquet"] + b"v2"


def test_reupload_replaces_and_removes_stale_files(s3, tmp_path):
    url = step_url(s3)
    prefix = prefix_of(url)
    make_output(tmp_path / "v1", "k1")
    make_output(tmp_path / "v2", "k2", {"metrics.json": b'{"loss": 0.1}', "candidates.jsonl": b"{}\n"})
    storage.upload_output(tmp_path / "v1", url)
    storage.upload_output(tmp_path / "v2", url)
    assert keys(s3, prefix) == [f"{prefix}/{name}" for name in ("candidates.jsonl", MANIFEST, "metrics.json")]
    storage.upload_output(tmp_path / "v2", url)  # the same again: no nesting, no duplicates
    assert keys(s3, prefix) == [f"{prefix}/{name}" for name in ("candidates.jsonl", MANIFEST, "metrics.json")]
    assert storage.remote_manifest(url)["key"] == "k2"
    copy = storage.fetch_output(url, "k2", s3.cache)
    assert sorted(p.name for p in copy.iterdir()) == ["candidates.jsonl", MANIFEST, "metrics.json"]
    with pytest.raises(storage.StorageError, match=r"another version .* expected k1"):
        storage.fetch_output(url, "k1", s3.cache)


@pytest.mark.parametrize("damage", ["changed", "truncated", "missing"])
def test_a_damaged_remote_file_is_caught_on_fetch(s3, tmp_path, damage):
    url = step_url(s3)
    make_output(tmp_path / "out", "k1")
    storage.upload_output(tmp_path / "out", url)
    name, key = "model/model.safetensors", f"{prefix_of(url)}/model/model.safetensors"
    if damage == "changed":  # same size, other bytes: only the digest tells
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(len(FILES[name])))
    elif damage == "truncated":
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=FILES[name][:100])
    else:
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    with pytest.raises(storage.StorageError, match=f"{url} is damaged: {name}"):
        storage.fetch_output(url, "k1", s3.cache)
    assert not storage.cache_path("k1", s3.cache).exists()
    assert list(s3.cache.iterdir()) == []  # the temp dir went too


def test_fetch_downloads_once(s3, tmp_path):
    url = step_url(s3)
    make_output(tmp_path / "out", "k1")
    storage.upload_output(tmp_path / "out", url)
    first = storage.fetch_output(url, "k1", s3.cache)
    for key in keys(s3, prefix_of(url)):  # the remote copy is gone: a second fetch must not need it
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    assert storage.fetch_output(url, "k1", s3.cache) == first
    assert (first / "pairs.parquet").read_bytes() == FILES["pairs.parquet"]
    # a cached copy that no longer verifies is not trusted: fetched again
    (first / "pairs.parquet").write_bytes(b"edited")
    with pytest.raises(storage.StorageError, match="no finished step output"):
        storage.fetch_output(url, "k1", s3.cache)
    storage.upload_output(tmp_path / "out", url)
    assert storage.fetch_output(url, "k1", s3.cache) == first
    assert (first / "pairs.parquet").read_bytes() == FILES["pairs.parquet"]


def test_a_pruned_output_round_trips(s3, tmp_path):
    url = step_url(s3)
    make_output(tmp_path / "out", "k1")
    assert prune_weights(tmp_path / "out") > 0
    storage.upload_output(tmp_path / "out", url)
    copy = storage.fetch_output(url, "k1", s3.cache)
    assert not (copy / "model" / "model.safetensors").exists() and (copy / "pruned.json").is_file()


def test_small_files(s3):
    url = storage.join(s3.root, "demo", "summary.json")
    assert not storage.exists(url)
    with pytest.raises(FileNotFoundError):
        storage.read_remote_text(url)
    storage.write_remote_json(url, {"iterations": [{"n": 1}]})
    assert json.loads(storage.read_remote_text(url)) == {"iterations": [{"n": 1}]}
    assert storage.exists(url)
    storage.write_remote_text(url, "replaced\n")
    assert s3.client.get_object(Bucket=s3.bucket, Key="campaigns/demo/summary.json")["Body"].read() == b"replaced\n"


def test_upload_dir_mirrors_a_folder(s3, tmp_path):
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "index.html").write_text("<html/>")
    (report / "figures" / "a.png").write_bytes(b"png")
    url = storage.join(s3.root, "demo", "report")
    storage.upload_dir(report, url)
    (report / "figures" / "a.png").unlink()
    storage.upload_dir(report, url)
    assert keys(s3, "campaigns/demo/report") == ["campaigns/demo/report/index.html"]


# --- the campaign lock ------------------------------------------------------------------------------------

def lock_key(s3) -> str:
    return "campaigns/demo/.lock"


def lock_body(s3) -> dict:
    return json.loads(s3.client.get_object(Bucket=s3.bucket, Key=lock_key(s3))["Body"].read())


def write_stale_lock(s3) -> None:
    """A lock whose holder died: lease 0, so it is stale once the server's clock moves a second on."""
    s3.client.put_object(Bucket=s3.bucket, Key=lock_key(s3), Body=json.dumps(
        {"holder": "pid 4242 on deadhost since 2026-01-01 00:00:00", "lease": 0, "token": "dead"}).encode())
    time.sleep(1.1)


def test_a_second_run_is_refused_with_who_holds_the_lock(s3):
    campaign = storage.join(s3.root, "demo")
    with storage.campaign_lock(campaign, lease=30) as held:
        body = lock_body(s3)
        assert body["pid"] == os.getpid() and body["token"] == held.token
        with pytest.raises(CampaignLocked, match=rf"campaign demo \({campaign}\) is being run by pid {os.getpid()} "
                                                 r"on \S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"):
            with storage.campaign_lock(campaign, lease=30):
                pass
        assert lock_body(s3)["token"] == held.token  # the refused run changed nothing
    assert keys(s3, lock_key(s3)) == []  # released
    with storage.campaign_lock(campaign, lease=30):  # and free for the next run
        pass


KILLED_HOLDER = """
import sys, time
from rlhf import storage
with storage.campaign_lock(sys.argv[1], lease=2):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_killed_holders_lock_is_taken_over_after_its_lease(s3):
    campaign = storage.join(s3.root, "demo")
    holder = subprocess.Popen([sys.executable, "-c", KILLED_HOLDER, campaign], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # killed: it never releases its lock
        holder.wait()
        holder.stdout.close()
    killed = time.monotonic()
    with pytest.raises(CampaignLocked, match=f"pid {holder.pid} on"):  # its lease still runs
        with storage.campaign_lock(campaign, lease=30):
            pass
    while True:
        try:
            with storage.campaign_lock(campaign, lease=30) as held:
                assert lock_body(s3)["token"] == held.token
            break
        except CampaignLocked:
            assert time.monotonic() - killed < 2 + 3, "the dead holder's lock was not taken over after its lease"
            time.sleep(0.3)
    assert keys(s3, lock_key(s3)) == []


def test_a_stale_lock_taken_over_by_two_runs_at_once_has_one_winner(s3, monkeypatch):
    campaign = storage.join(s3.root, "demo")
    write_stale_lock(s3)
    both_read = threading.Barrier(2, timeout=20)
    first_read: set[int] = set()
    attempts: list[tuple[str, str]] = []
    read, put = storage.S3Lease.read, storage.S3Lease._put

    def read_then_wait(self):
        found = read(self)
        if threading.get_ident() not in first_read:  # both see the stale lock before either writes
            first_read.add(threading.get_ident())
            both_read.wait()
        return found

    def recorded_put(self, **condition):
        try:
            etag = put(self, **condition)
        except ClientError as err:
            attempts.append((next(iter(condition)), err.response["Error"]["Code"]))
            raise
        attempts.append((next(iter(condition)), "ok"))
        return etag

    monkeypatch.setattr(storage.S3Lease, "read", read_then_wait)
    monkeypatch.setattr(storage.S3Lease, "_put", recorded_put)
    outcomes: list[str] = []
    tried = threading.Event()
    errors: list[BaseException] = []

    def take_over():
        try:
            with storage.campaign_lock(campaign, lease=30) as held:
                outcomes.append("won")
                assert lock_body(s3)["token"] == held.token
                assert tried.wait(20)  # hold it until the other run has tried
        except CampaignLocked as err:
            outcomes.append("refused")
            assert "is being run by pid" in str(err) and "deadhost" not in str(err)
            tried.set()
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)
            tried.set()

    threads = [threading.Thread(target=take_over) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(outcomes) == ["refused", "won"]
    takeovers = [result for condition, result in attempts if condition == "IfMatch"]
    assert sorted(takeovers) == ["PreconditionFailed", "ok"]  # both swapped on the stale etag; one won
    assert keys(s3, lock_key(s3)) == []


def test_renewal_keeps_a_live_lock_past_its_lease(s3):
    campaign = storage.join(s3.root, "demo")
    lease = 3.0
    with storage.campaign_lock(campaign, lease=lease) as held:
        etag = held.etag
        time.sleep(lease + 1.5)  # past the lease (and the server clock's one-second steps)
        with pytest.raises(CampaignLocked, match=f"pid {os.getpid()}"):
            with storage.campaign_lock(campaign, lease=lease):
                pass
        assert held.etag != etag and not held.lost.is_set()  # renewed meanwhile
        assert lock_body(s3)["token"] == held.token
    assert keys(s3, lock_key(s3)) == []


def test_a_lock_taken_over_is_not_deleted_by_its_old_holder(s3):
    campaign = storage.join(s3.root, "demo")
    other = json.dumps({"holder": "pid 7 on elsewhere since now", "lease": 120, "token": "other"}).encode()
    with storage.campaign_lock(campaign, lease=3) as held:
        s3.client.put_object(Bucket=s3.bucket, Key=lock_key(s3), Body=other)  # taken over behind its back
        assert held.lost.wait(3), "the renewal did not notice that the lock was taken over"
    assert lock_body(s3)["token"] == "other"


# --- the up-front check -----------------------------------------------------------------------------------

def reset_auth(endpoint: str, count: str) -> None:
    """moto: check IAM credentials and policies after ``count`` more requests ("inf": never)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


def iam_user(s3, *actions: str) -> dict:
    iam = boto3.session.Session().client("iam", endpoint_url=s3.endpoint)
    name = f"user-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    if actions:
        iam.put_user_policy(UserName=name, PolicyName="some", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]}))
    return iam.create_access_key(UserName=name)["AccessKey"]


def test_check_root_accepts_a_usable_bucket(s3):
    storage.check_root(s3.root)
    storage.check_root(f"s3://{s3.bucket}")
    assert keys(s3) == []  # the write check cleaned up after itself


def test_check_root_names_a_missing_bucket(s3):
    with pytest.raises(ConfigError, match=r"the bucket 'no-such-bucket' does not exist at the S3 endpoint "
                                          rf"{s3.endpoint} \(MLFLOW_S3_ENDPOINT_URL\); create it") as err:
        storage.check_root("s3://no-such-bucket/campaigns")
    assert err.value.key == "campaign.root"


def test_check_root_names_missing_credentials(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.check_root(s3.root, key="campaign.root")


def test_check_root_names_an_unreachable_endpoint(s3, monkeypatch):
    nowhere = f"http://127.0.0.1:{servers.free_port()}"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", nowhere)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"cannot reach the S3 endpoint {nowhere} \(MLFLOW_S3_ENDPOINT_URL\)"):
        storage.check_root(s3.root)
    assert time.monotonic() - started < 10


def test_check_root_names_denied_access(s3, monkeypatch):
    nobody, reader = iam_user(s3), iam_user(s3, "s3:ListBucket", "s3:HeadBucket", "s3:GetObject")
    reset_auth(s3.endpoint, "0")
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", nobody["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", nobody["SecretAccessKey"])
        with pytest.raises(ConfigError, match=f"access denied reading bucket '{s3.bucket}' .* as "
                                              f"{nobody['AccessKeyId']}"):
            storage.check_root(s3.root)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader["SecretAccessKey"])
        with pytest.raises(ConfigError, match=f"access denied writing bucket '{s3.bucket}'"):
            storage.check_root(s3.root)
    finally:
        reset_auth(s3.endpoint, "inf")


def test_check_root_names_the_missing_package(s3, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"needs the package s3fs: pip install '\.\[storage\]'"):
        storage.check_root(s3.root)
