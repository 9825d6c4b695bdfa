"""`rlhf serve`: with orchestration.watch=DIR the next iteration runs at start and whenever a file lands
or changes; with a cron or interval and no Prefect server, the schedule runs in the process. A run stopped
by a user-facing error (labels not in yet) waits for the next file or slot."""

import os
import threading
import time
from datetime import datetime
from itertools import islice

import pytest

from rlhf.core.errors import ConfigError, RLHFError
from rlhf.flows.serve import check_schedule, schedule, snapshot, ticks, watch


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


class FakeClock:
    """Time that moves only when the code sleeps or a run takes time."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_interval_schedule_runs_at_once_then_on_each_slot_skipping_missed_ones():
    clock, started = FakeClock(), []

    def run():
        started.append(clock.now)
        clock.now += 25 if len(started) == 2 else 1  # the second run outlasts two 10 s slots

    runs = schedule(ticks(None, 10.0, clock.now), run, max_runs=4, clock=clock, sleep=clock.sleep)
    assert runs == 4
    assert started == [1000, 1010, 1040, 1050]  # 1020 and 1030 passed during the second run


def test_a_run_stopped_by_a_user_facing_error_does_not_end_the_schedule():
    clock, calls = FakeClock(), []

    def run():
        calls.append(clock.now)
        if len(calls) == 1:
            raise RLHFError("labels for iteration 1 are not in yet")

    assert schedule(ticks(None, 5.0, clock.now), run, max_runs=2, clock=clock, sleep=clock.sleep) == 2
    assert calls == [1000, 1005]


def test_cron_ticks_follow_the_expression():
    start = datetime(2026, 11, 23, 2, 59, 30).timestamp()  # a Monday, local time
    times = [datetime.fromtimestamp(t) for t in islice(ticks("0 3 * * 1", None, start), 2)]
    assert times == [datetime(2026, 11, 23, 3, 0), datetime(2026, 11, 30, 3, 0)]
    every_5 = list(islice(ticks("*/5 * * * *", None, start), 3))
    assert [b - a for a, b in zip(every_5, every_5[1:])] == [300, 300]


def test_bad_schedules_are_config_errors():
    with pytest.raises(ConfigError, match="orchestration.cron.*not a cron expression"):
        check_schedule("every monday", None)
    with pytest.raises(ConfigError, match="orchestration.interval.*> 0"):
        check_schedule(None, 0)
    check_schedule("0 3 * * 1", None)
    check_schedule(None, 60)


def test_last_finished_iteration_is_the_highest_evaluated_one(tmp_path):
    from rlhf.record.layout import last_finished_iteration

    assert last_finished_iteration(tmp_path) == 0
    for n, evaluated in ((1, True), (2, True), (3, False)):
        (tmp_path / f"iter-{n}" / "evaluate").mkdir(parents=True)
        if evaluated:
            (tmp_path / f"iter-{n}" / "evaluate" / "manifest.json").write_text('{"key": "k"}')
    (tmp_path / "iter-0" / "sft").mkdir(parents=True)
    assert last_finished_iteration(tmp_path) == 2  # iteration 3 started but did not finish
