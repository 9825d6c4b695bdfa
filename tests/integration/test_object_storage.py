"""A campaign on object storage (``campaign.root=s3://...``, docs/design.md#object-storage) against a real
S3-compatible server on loopback (moto's server mode): every step's output uploaded with its manifest last,
summary.json, the report and the registry naming the URLs; a fresh machine reruns it without computing a
step; a half-uploaded step is not taken as finished; the lock holds on the bucket; a missing bucket or
missing credentials are clear errors before any step."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import boto3
import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from servers import s3_server  # beside the tests (pytest puts tests/ on the path)

from rlhf import storage
from rlhf.cli import main
from rlhf.flows.campaign import run_campaign
from rlhf.flows.config import compose_config
from rlhf.record.layout import CampaignLocked, local_root
from rlhf.tracking import tracking_uri

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = "s3://rlhf/team"
STEP_OUTPUTS = {"iter-0/sft", "iter-0/seed_pairs", "iter-1/collect_pairs", "iter-1/annotate", "iter-1/rm-helpful",
                "iter-1/rm-safety", "iter-1/rm-helpful-eval", "iter-1/rm-safety-eval", "iter-1/search_temperature",
                "iter-1/rejection_sample", "iter-1/train_policy", "iter-1/ppo", "iter-1/evaluate"}


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url, prefect_test_harness(server_startup_timeout=60):
        yield url


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    for name, value in {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true", "RLHF_CACHE_DIR": str(tmp_path / "machine-1")}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if "rlhf" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="rlhf")
    return client


def objects(client, prefix: str = "team/c/") -> dict[str, str]:
    """Key -> ETag of every object under ``prefix``."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="rlhf", Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def smoke(*extra: str):
    return compose_config(["experiment=smoke", f"campaign.root={ROOT}", "campaign.name=c", *extra])


@pytest.mark.processes  # the rerun is `rlhf iterate` in another process (a fresh machine)
def test_a_campaign_on_s3_uploads_every_step_and_a_fresh_machine_reruns_it_cached(s3, tmp_path, monkeypatch,
                                                                                   caplog):
    caplog.set_level(logging.INFO, logger="rlhf")
    summary = run_campaign(smoke(), upto=1)
    assert len([r for r in caplog.records if r.getMessage().endswith(tuple(f"/{o}" for o in STEP_OUTPUTS))
                and ": start" in r.getMessage()]) >= len(STEP_OUTPUTS) - 2  # the RMs' evals share a line
    stored = objects(s3)
    # 1. Every step's output is on the bucket, committed by its manifest; the campaign's own files too.
    for out in STEP_OUTPUTS:
        assert f"team/c/{out}/manifest.json" in stored, out
        manifest = json.loads(s3.get_object(Bucket="rlhf", Key=f"team/c/{out}/manifest.json")["Body"].read())
        assert {f"team/c/{out}/{name}" for name in manifest["files"]} <= set(stored), out
    assert {"team/c/summary.json", "team/c/config.yaml", "team/c/report/report.md"} <= set(stored)
    # 2. summary.json (the one on the bucket), the report and the registry name the URLs.
    remote_summary = json.loads(s3.get_object(Bucket="rlhf", Key="team/c/summary.json")["Body"].read())
    assert remote_summary == json.loads(json.dumps(summary))
    assert remote_summary["campaign_dir"] == f"{ROOT}/c"
    assert remote_summary["sft"]["policy_path"] == f"{ROOT}/c/iter-0/sft"
    assert remote_summary["iterations"][0]["policy_path"] == f"{ROOT}/c/iter-1/ppo"
    assert remote_summary["report"] == f"{ROOT}/c/report/report.md"
    client = MlflowClient(tracking_uri(None, local_root(ROOT)))
    sources = {v.source for v in client.search_model_versions("name = 'c-policy'")}
    assert sources == {f"{ROOT}/c/iter-0/sft", f"{ROOT}/c/iter-1/ppo"}
    # 3. Another machine (an empty working copy and cache, its own Prefect server and results) reruns the
    # campaign: every output is taken from the bucket, none computed or uploaded again.
    env = {**os.environ, "RLHF_CACHE_DIR": str(tmp_path / "machine-2"), "PREFECT_API_URL": ""}
    env.pop("PREFECT_HOME", None)
    rerun = subprocess.run([sys.executable, "-m", "rlhf", "iterate", "experiment=smoke", f"campaign.root={ROOT}",
                            "campaign.name=c", "campaign.iteration=1"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "cached, same config and inputs" in rerun.stderr
    assert not [line for line in rerun.stderr.splitlines() if ": start" in line], "a step was computed again"
    assert {k: v for k, v in objects(s3).items() if k.endswith("manifest.json")} == \
        {k: v for k, v in stored.items() if k.endswith("manifest.json")}
    # 4. A half-uploaded step (files there, its manifest not yet) is not finished: the rerun commits it.
    s3.delete_object(Bucket="rlhf", Key="team/c/iter-1/rejection_sample/manifest.json")
    assert not storage.finished(f"{ROOT}/c/iter-1/rejection_sample")
    run_campaign(smoke(), upto=1)
    assert storage.finished(f"{ROOT}/c/iter-1/rejection_sample")


def test_the_lock_holds_on_the_bucket(s3, capsys):
    with storage.campaign_lock(f"{ROOT}/locked"):
        with pytest.raises(CampaignLocked, match="is being run by pid"):
            run_campaign(smoke("campaign.name=locked"), upto=1)
        assert main(["run", "experiment=smoke", f"campaign.root={ROOT}", "campaign.name=locked"]) == 2
    assert "is being run by" in capsys.readouterr().err
    assert not objects(s3, "team/locked/iter-"), "a step ran while another run held the lock"


@pytest.mark.parametrize("root, env, says", [
    ("s3://no-such-bucket/x", {}, "no-such-bucket"),
    (ROOT, {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent"}, "AWS_ACCESS_KEY_ID"),
])
def test_bad_storage_is_a_clear_error_before_any_step(s3, monkeypatch, capsys, root, env, says):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    before = objects(s3, "")
    assert main(["run", "experiment=smoke", f"campaign.root={root}", "campaign.name=bad"]) == 2
    err = capsys.readouterr().err
    assert "campaign.root" in err and says in err
    assert objects(s3, "") == before
