"""`rlhf serve orchestration.watch=DIR`: the next iteration runs at start and whenever a file lands or
changes, and a run stopped by a user-facing error (labels not in yet) waits for the next file."""

import os
import threading
import time

from flows.serve import snapshot, watch
from rlhf_core.errors import RLHFError


def test_snapshot_sees_visible_files_only(tmp_path):
    (tmp_path / "iter-1.jsonl").write_text("{}\n")
    (tmp_path / ".iter-2.jsonl.tmp").write_text("")
    (tmp_path / "sub").mkdir()
    assert set(snapshot(tmp_path)) == {"iter-1.jsonl"}
    assert snapshot(tmp_path / "missing") == {}


def test_watch_runs_at_start_and_on_each_new_or_changed_file(tmp_path):
    calls = []

    def run():
        calls.append(sorted(snapshot(tmp_path)))
        if len(calls) == 1:
            raise RLHFError("labels for iteration 1 are not in yet")  # waits instead of dying

    def land_files():
        time.sleep(0.15)
        (tmp_path / "iter-1.jsonl").write_text("a\n")
        time.sleep(0.3)
        path = tmp_path / "iter-1.jsonl"
        os.utime(path, (time.time() + 5, time.time() + 5))  # rewritten: a new mtime

    writer = threading.Thread(target=land_files)
    writer.start()
    runs = watch(tmp_path, poll_seconds=0.05, run=run, max_polls=16)
    writer.join()
    assert runs == 3
    assert calls == [[], ["iter-1.jsonl"], ["iter-1.jsonl"]]


def test_watch_does_not_rerun_without_news(tmp_path):
    (tmp_path / "old.jsonl").write_text("x\n")
    calls = []
    assert watch(tmp_path, poll_seconds=0.01, run=lambda: calls.append(1), max_polls=5) == 1
