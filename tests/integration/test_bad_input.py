"""The bad-input catalogue: each user mistake through the real CLI is exit code 2 and one message that
names the file, line and field or the config key and says what to do -- never a traceback, never a
silent skip, nothing written into a campaign."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.core.assets import asset_path
from rlhf.record.layout import campaign_lock

CHAT = {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def sft_file(tmp: Path) -> dict[str, Path]:
    """The bad SFT files of the catalogue, by case name."""
    line = json.dumps(CHAT)
    return {
        "not_utf8": write(tmp / "latin1.jsonl", line.encode() + b"\n" + '{"messages": "caf\xe9"}\n'.encode("latin-1")),
        "not_json": write(tmp / "broken.jsonl", line + "\n{messages: [}\n"),
        "csv": write(tmp / "chats.csv", "role,content\nuser,hi\n"),
        "fake_parquet": write(tmp / "chats.parquet", "this is not parquet"),
        "fake_gzip": write(tmp / "chats.jsonl.gz", "not gzip at all"),
        "empty_user": write(tmp / "empty_user.jsonl", json.dumps({"messages": [
            {"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}) + "\n" + line + "\n"),
        "tiny": write(tmp / "tiny.jsonl", "\n".join(asset_path("sft_demo.jsonl").read_text().splitlines()[:5])),
        "missing": tmp / "nowhere.jsonl",
    }


SFT_CASES = {  # case -> (extra overrides, what the message must say)
    "not_utf8": ([], ["latin1.jsonl:2", "not UTF-8"]),
    "not_json": ([], ["broken.jsonl:2", "not valid JSON"]),
    "csv": ([], ["chats.csv", ".jsonl"]),
    "fake_parquet": ([], ["chats.parquet", "Parquet"]),
    "fake_gzip": ([], ["chats.jsonl.gz"]),
    "empty_user": ([], ["empty_user.jsonl:1", "messages[0].content", "empty user content"]),
    "tiny": (["data.eval_size=16"], ["data.eval_size", "holds out 16 of the 5", "leaving none to train on"]),
    "missing": ([], ["nowhere.jsonl"]),
}


@pytest.mark.parametrize("case", sorted(SFT_CASES))
def test_bad_sft_data(tmp_path, capsys, case):
    extra, says = SFT_CASES[case]
    path = sft_file(tmp_path)[case]
    code = main(["sft", "model=tiny", f"data.path={path}", f"campaign.root={tmp_path / 'runs'}", "campaign.name=c",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert all(fragment in err for fragment in says), err
    assert not (tmp_path / "runs" / "c").exists()  # nothing written, not even an empty campaign directory


@pytest.mark.parametrize("args, key, says", [
    (["sample", "rejection.k=0"], "rejection.k", "at least 1, got 0"),
    (["sample", "rejection.k=-1"], "rejection.k", "at least 1, got -1"),
    (["sample", "prompts.n=-3"], "prompts.n", "at least 0"),
    (["sft", "sft.batch_size=0"], "sft.batch_size", "at least 1"),
    (["run", "experiment=smoke", "debug.fail_at=sft:x"], "debug.fail_at", "a whole number"),
    (["run", "experiment=smoke", "debug.fail_at=nosuch"], "debug.fail_at", "unknown step"),
    (["run", "experiment=smoke", "campaign.name=../escaped"], "campaign.name", "no '..'"),
    (["sft", "campaign.name=a/b"], "campaign.name", "no path separators"),
    (["rm", "train", "reward.train.n_test=abc"], "reward.train.n_test", "incompatible"),
    (["sample", "rejection.kk=3"], "rejection.kk", "not in 'RejectionConfig'"),
])
def test_bad_config_names_the_key(tmp_path, capsys, args, key, says):
    assert main([*args, "model=tiny", f"campaign.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert key in err and says in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir()) or all(p.name == ".prefect" for p in tmp_path.iterdir())


def test_bad_labels_file(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl.gz"
    with gzip.open(source, "wb") as handle:
        handle.write(b'{"pair_id": "p0", "prompt": [{"role": "user", "content": "hi"}]}\n\xff\xfe\n')
    assert main(["annotate", f"io.input={source}"]) == 2
    err = capsys.readouterr().err
    assert "pairs.jsonl.gz:2" in err and "UTF-8" in err and "Traceback" not in err, err


def test_report_of_a_damaged_or_missing_summary(tmp_path, capsys):
    assert main(["report", "nosuch", f"campaign.root={tmp_path}"]) == 2
    assert "run the campaign first" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    write(tmp_path / "c" / "summary.json", '{"campaign": "c", "itera')
    assert main(["report", "c", f"campaign.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "summary.json is unreadable" in err and "rerun the campaign" in err
    assert {p.name for p in (tmp_path / "c").iterdir()} == {".lock", "summary.json"}  # no half-written report


def test_every_writer_respects_a_running_campaign(tmp_path, capsys):
    """Another process holds the campaign (a run in progress): single-step commands refuse, naming it."""
    held, release = threading.Event(), threading.Event()

    def run_in_progress():
        with campaign_lock(tmp_path / "c"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=run_in_progress)
    holder.start()
    held.wait(10)
    try:
        for args in (["sft"], ["rm", "train"], ["sample"], ["report"], ["gatt", "eval"]):
            assert main([*args, "model=tiny", f"campaign.root={tmp_path}", "campaign.name=c"]) == 2, args
            assert "is being run by pid" in capsys.readouterr().err
    finally:
        release.set()
        holder.join()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs of its own (mounting needs root, which CI has; elsewhere the tests are skipped)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_is_a_clear_error_and_nothing_is_lost(small_disk, tmp_path, capsys):
    chats = write(tmp_path / "chats.jsonl", "".join(json.dumps(CHAT) + "\n" for _ in range(8)))
    args = ["sft", "model=tiny", f"data.path={chats}", "data.eval_size=0", f"campaign.root={small_disk}",
            "campaign.name=c"]
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (4 * 2**20 - 96 * 2**10))  # leaves less than the tiny model needs
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err.lower() and "Traceback" not in err, err
    assert not list(small_disk.rglob(".sft.tmp-*"))  # no half-written output
    filler.unlink()
    assert main(args) == 0  # room again: the same command finishes
    assert (small_disk / "c" / "iter-0" / "sft" / "model.safetensors").is_file()


def test_a_read_only_campaign_root_is_a_clear_error(small_disk, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert main(["sft", "model=tiny", f"campaign.root={small_disk}", "campaign.name=c"]) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and "Traceback" not in err, err


def test_a_tracking_database_that_refuses_is_a_clear_error_before_any_step(tmp_path, capsys):
    """tracking.uri naming a PostgreSQL server that is not there (port 1 refuses at once)."""
    uri = "postgresql+psycopg2://rlhf:secret-pw@127.0.0.1:1/mlflow"
    assert main(["run", "experiment=smoke", f"campaign.root={tmp_path}", "campaign.name=c",
                 f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert "tracking.uri=postgresql+psycopg2://rlhf:***@127.0.0.1:1/mlflow" in err and "cannot be reached" in err, err
    assert "secret-pw" not in err and "Traceback" not in err
    assert not (tmp_path / "c" / "iter-0").exists()  # no step ran
