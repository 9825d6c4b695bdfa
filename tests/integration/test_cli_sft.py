"""`rlhf sft` end to end on the tiny model: output dir, manifest, cache hit, clear user errors."""

import json
import logging
import subprocess
import sys

import pytest

from rlhf.cli import main
from rlhf.core.models import ModelConfig, load_model


@pytest.fixture
def chats(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Count to {n}"},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}]}
            for n in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(tmp_path, chats, *extra):
    return main(["sft", "model=tiny", f"data.path={chats}", "data.eval_size=2", f"campaign.root={tmp_path}",
                 "campaign.name=t", "sft.epochs=2", "sft.batch_size=2", "sft.micro_batch_size=1",
                 "sft.checkpoint_every=2", *extra])


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "rlhf.cli", "--help"], capture_output=True, text=True, check=True)
    assert "sft" in out.stdout and "e.g. rlhf sft" in out.stdout
    out = subprocess.run([sys.executable, "-m", "rlhf.cli", "sft", "--help"], capture_output=True, text=True,
                         check=True)
    assert "example:" in out.stdout


def test_sft_writes_a_model_dir_with_manifest_and_is_cached_on_rerun(tmp_path, chats, caplog):
    assert run(tmp_path, chats) == 0
    out = tmp_path / "t" / "iter-0" / "sft"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step"] == "sft" and manifest["metrics"]["steps"] == 6
    assert manifest["inputs"]["data"]["path"] == str(chats) and len(manifest["inputs"]["data"]["digest"]) == 64
    assert manifest["config"]["sft"]["batch_size"] == 2 and manifest["code_version"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    assert not (tmp_path / "t" / "iter-0" / ".sft.work").exists()  # checkpoints removed on success
    model, tok = load_model(ModelConfig(name_or_path=str(out)))
    assert model.config.num_hidden_layers == 2 and tok.chat_template

    created = manifest["created"]
    caplog.set_level(logging.INFO, logger="rlhf")
    assert run(tmp_path, chats) == 0
    assert "cached" in caplog.text
    assert json.loads((out / "manifest.json").read_text())["created"] == created
    assert run(tmp_path, chats, "sft.lr=1e-4") == 0  # a config change reruns
    assert json.loads((out / "manifest.json").read_text())["config"]["sft"]["lr"] == 1e-4


def test_bad_override_is_a_clear_error(tmp_path, chats, capsys):
    assert run(tmp_path, chats, "sft.nope=1") == 2
    err = capsys.readouterr().err
    assert "error: config" in err and "nope" in err and "Traceback" not in err


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n')
    assert run(tmp_path, bad) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: field 'messages[1].role': unknown role 'bot'" in err


def test_checkpoints_resume_only_under_the_config_that_wrote_them(tmp_path, chats, caplog):
    """A crash after 2 steps, then the same command with another learning rate: the checkpoints of the
    first run are discarded (one model is never trained under two configs); with the same config they
    are resumed."""
    caplog.set_level(logging.INFO, logger="rlhf")
    out = tmp_path / "t" / "iter-0" / "sft"
    assert run(tmp_path, chats, "sft.fail_after_steps=3") == 2  # the injected fault is reported, exit 2
    assert run(tmp_path, chats, "sft.lr=5e-4") == 0
    assert "discarding the checkpoints" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["resumed_from_step"] == 0 and manifest["config"]["sft"]["lr"] == 5e-4

    caplog.clear()
    assert run(tmp_path, chats, "sft.lr=1e-3", "sft.fail_after_steps=3") == 2
    assert run(tmp_path, chats, "sft.lr=1e-3") == 0
    assert "discarding" not in caplog.text
    assert json.loads((out / "manifest.json").read_text())["metrics"]["resumed_from_step"] == 2


def test_a_truncated_output_is_computed_again_not_reused(tmp_path, chats, caplog):
    caplog.set_level(logging.INFO, logger="rlhf")
    assert run(tmp_path, chats) == 0
    weights = tmp_path / "t" / "iter-0" / "sft" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2048])
    assert run(tmp_path, chats) == 0
    assert "not reusing" in caplog.text and "model.safetensors has 2048 bytes" in caplog.text
    model, _ = load_model(ModelConfig(name_or_path=str(weights.parent)))  # whole again: it loads
    assert model.config.num_hidden_layers == 2
