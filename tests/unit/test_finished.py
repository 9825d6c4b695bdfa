"""The finished-campaign stamp (rlhf/record/finished.py): a rerun may skip the flow only when the config, the
iterations, the code, every input file the config names, every step output, the summary, the report and a
local MLflow store are all as the finished run left them; any one of them changed sends it through the flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.core.digests import sha256_file
from rlhf.record import finished
from rlhf.record.finished import STAMP_FILE, clear_stamp, finished_summary, stamp_key, why_not_finished, write_stamp


def output(home: Path, name: str, key: str, files: dict[str, str]) -> Path:
    """A finished step output as the core writes it: its files, then a manifest with their sizes and digests."""
    out = home / name
    out.mkdir(parents=True)
    for file, text in files.items():
        (out / file).write_text(text)
    records = {file: {"size": (out / file).stat().st_size, "sha256": sha256_file(out / file)} for file in files}
    (out / "manifest.json").write_text(json.dumps({"key": key, "files": records, "metrics": {}}))
    return out


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data" / "sft.jsonl"
    data.parent.mkdir()
    data.write_text('{"messages": []}\n')
    home = tmp_path / "runs" / "c"
    output(home, "iter-0/sft", "k-sft", {"model.safetensors": "weights"})
    output(home, "iter-1/evaluate", "k-eval", {"judgments.jsonl": "{}\n"})
    store = tmp_path / "runs" / "mlflow.db"
    store.write_text("db")
    (home / "summary.json").write_text(json.dumps({"campaign": "c", "tracking_uri": f"sqlite:///{store}"}))
    (home / "report").mkdir()
    (home / "report" / "report.md").write_text("# c\n")
    resolved = {"data": {"path": str(data)}, "sft": {"lr": 2e-5}, "campaign": {"root": str(tmp_path / "runs")},
                "io": {"output": None}}
    write_stamp(home, resolved, 1)
    return {"home": home, "resolved": resolved, "data": data, "store": store}


def test_an_unchanged_finished_campaign_is_skipped(campaign):
    home, resolved = campaign["home"], campaign["resolved"]
    assert why_not_finished(home, resolved, 1) is None
    assert finished_summary(home, resolved, 1)["campaign"] == "c"
    stamp = json.loads((home / STAMP_FILE).read_text())
    assert stamp["outputs"] == {"iter-0/sft": "k-sft", "iter-1/evaluate": "k-eval"}


@pytest.mark.parametrize("change, why", [
    (lambda c: c["data"].write_text('{"messages": [1]}\n'), "config, inputs, code or iterations"),  # edited in place
    (lambda c: c["resolved"]["sft"].update(lr=1e-5), "config, inputs, code or iterations"),
    (lambda c: (c["home"] / "iter-0/sft/model.safetensors").write_text("weight"), "bytes, the manifest says"),
    (lambda c: (c["home"] / "iter-1/evaluate/judgments.jsonl").write_text("[]\n"), "changed since it was written"),
    (lambda c: (c["home"] / "iter-1/evaluate/manifest.json").unlink(), "no readable manifest.json"),
    (lambda c: (c["home"] / "summary.json").write_text("{}"), "summary.json changed"),
    (lambda c: (c["home"] / "report/report.md").unlink(), "report.md changed"),
    (lambda c: c["store"].unlink(), "MLflow store"),
    (lambda c: (c["home"] / STAMP_FILE).write_text('{"key": '), "unreadable"),  # half-written
    (lambda c: clear_stamp(c["home"]), "no finished run"),
])
def test_anything_changed_runs_the_flow(campaign, change, why):
    change(campaign)
    problem = why_not_finished(campaign["home"], campaign["resolved"], 1)
    assert problem is not None and why in problem, problem
    assert finished_summary(campaign["home"], campaign["resolved"], 1) is None


def test_more_iterations_or_other_code_is_another_key(campaign, monkeypatch):
    resolved = campaign["resolved"]
    assert stamp_key(resolved, 2) != stamp_key(resolved, 1)
    assert why_not_finished(campaign["home"], resolved, 2) is not None
    key = stamp_key(resolved, 1)
    monkeypatch.setattr(finished, "platform_code", lambda: "other")
    assert stamp_key(resolved, 1) != key


def test_the_switch_itself_is_not_in_the_key(campaign):
    resolved = campaign["resolved"]
    with_switch = {**resolved, "orchestration": {"skip_finished": False, "shards": 1}}
    assert stamp_key(with_switch, 1) == stamp_key({**resolved, "orchestration": {"shards": 1}}, 1)
    assert stamp_key(with_switch, 1) != stamp_key({**resolved, "orchestration": {"shards": 2}}, 1)


def test_where_a_campaign_runs_is_not_an_input(campaign):
    """campaign.root is a folder that exists and changes with every run: hashed as a value, never its content."""
    resolved = campaign["resolved"]
    key = stamp_key(resolved, 1)
    (Path(resolved["campaign"]["root"]) / "another-campaign").mkdir()
    assert stamp_key(resolved, 1) == key


def test_a_server_store_needs_no_file(campaign):
    home = campaign["home"]
    (home / "summary.json").write_text(json.dumps({"campaign": "c", "tracking_uri": "http://127.0.0.1:5000"}))
    write_stamp(home, campaign["resolved"], 1)
    campaign["store"].unlink()
    assert why_not_finished(home, campaign["resolved"], 1) is None
