"""A user's mistake on the command line: one clear message that names the key and what to do, exit
status 2, and nothing left behind (no campaign directory, no Prefect home, no temp folder). Also the
line Prefect prints when a task run ends: named, with its duration."""

from __future__ import annotations

import logging
import os
import re

import pytest

from rlhf.cli import _campaign_shorthand, main
from rlhf.core.errors import ConfigError
from rlhf.record.layout import campaign_lock


def _fails(capsys, root, *args: str) -> str:
    """Run `rlhf <args> campaign.root=<root>`: exit status 2, one error message, nothing left in root."""
    assert main([*args, f"campaign.root={root}"]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("error: config '") or out.err.startswith("error: "), out.err
    assert not out.out  # no config printed, nothing started
    assert sorted(os.listdir(root)) == []
    return out.err


@pytest.fixture
def no_prefect_home():
    """PREFECT_HOME unset, as for a user: `prepare` then puts it in campaign.root (Prefect itself is
    imported first, so the session keeps the test one)."""
    import prefect  # noqa: F401

    saved = dict(os.environ)
    os.environ.pop("PREFECT_HOME", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("args, key, suggestion", [
    (["run", "rejection.kk=3"], "rejection.kk", "did you mean rejection.k?"),
    (["run", "+rejection.kk=3"], "rejection.kk", "did you mean rejection.k?"),
    (["run", "experimnt=smoke"], "experimnt", "did you mean experiment=smoke?"),
    (["sft", "sampling.temp=0.5"], "sampling.temp", "did you mean sampling.temperature?"),
    (["report", "campain.name=x"], "campain.name", "did you mean campaign.name?"),
    (["run", "reward.helpful.n_synth=3"], "reward.helpful.n_synth", "did you mean reward.helpful.n_synthetic?"),
])
def test_an_unknown_key_gets_the_nearest_keys(tmp_path, capsys, args, key, suggestion):
    err = _fails(capsys, tmp_path, *args)
    assert err.startswith(f"error: config '{key}': no such key") and suggestion in err and "--cfg" in err


def test_a_missing_group_option_lists_the_groups_options(tmp_path, capsys):
    err = _fails(capsys, tmp_path, "run", "experiment=nosuch")
    assert "no option 'nosuch'" in err
    assert "Available options in 'experiment': demo, demo_fp32, llama2, replicate, smoke" in err
    assert "did you mean experiment=smoke?" in _fails(capsys, tmp_path, "run", "experiment=smok")
    assert "smollm2, tiny" in _fails(capsys, tmp_path, "sft", "model=nosuch")


@pytest.mark.parametrize("args, group, options", [
    (["run", "experiment"], "experiment", "demo, demo_fp32, llama2, replicate, smoke"),
    (["resume", "model"], "model", "smollm2, tiny"),
    (["run", "--cfg", "experiment"], "experiment", "demo, demo_fp32, llama2, replicate, smoke"),
    # not the first word
    (["run", "campaign.name=x", "experiment"], "experiment", "demo, demo_fp32, llama2, replicate, smoke"),
])
def test_a_bare_group_name_is_not_a_campaign_name(tmp_path, capsys, args, group, options):
    err = _fails(capsys, tmp_path, *args)
    assert f"did you mean {group}=<option>?" in err and f"Available options in '{group}': {options}" in err


def test_a_bare_key_asks_for_its_value(tmp_path, capsys):
    assert "did you mean rejection.k=<value>?" in _fails(capsys, tmp_path, "run", "rejection.k")


def test_any_other_bare_first_word_still_names_the_campaign(tmp_path, capsys):
    assert _campaign_shorthand(["demo", "rejection.k=3"]) == ["campaign.name=demo", "rejection.k=3"]
    assert _campaign_shorthand(["experiment=smoke"]) == ["experiment=smoke"]
    err = _fails(capsys, tmp_path, "resume", "demo")
    assert "config 'campaign.name': no campaign 'demo'" in err
    with pytest.raises(ConfigError, match="did you mean experiment=<option>"):
        _campaign_shorthand(["experiment"])


def test_report_on_a_missing_campaign_creates_nothing(tmp_path, capsys, no_prefect_home):
    err = _fails(capsys, tmp_path, "report", "nosuch")
    assert "no campaign 'nosuch'" in err and str(tmp_path) in err
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.yaml").write_text("{}\n")
    assert main(["report", "dmeo", f"campaign.root={tmp_path}"]) == 2
    assert "the campaigns there: demo; did you mean demo?" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["demo", "demo/config.yaml"]


def test_report_on_a_campaign_without_iterations_says_so(tmp_path, capsys, no_prefect_home):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("{}\n")
    assert main(["report", "c", f"campaign.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "campaign 'c' has no finished iteration" in err and "`rlhf resume c`" in err
    # the campaign's lock file (it was taken, to read the summary no run is writing) and nothing else
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["c", "c/.lock",
                                                                                      "c/config.yaml"]


@pytest.mark.parametrize("args, key", [
    (["run", "experiment=smoke", "debug.fail_at=nope"], "debug.fail_at"),  # refused after Prefect is prepared
    (["serve", "experiment=smoke", "orchestration.cron=bad"], "orchestration.cron"),
])
def test_a_config_mistake_found_after_preparing_prefect_leaves_no_prefect_home(tmp_path, capsys, no_prefect_home,
                                                                               args, key):
    assert main([*args, f"campaign.root={tmp_path / 'new' / 'root'}"]) == 2
    assert f"config '{key}'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_resume_of_a_missing_campaign_leaves_nothing(tmp_path, capsys, no_prefect_home):
    assert main(["resume", "nosuch", f"campaign.root={tmp_path / 'root'}"]) == 2
    assert "no campaign 'nosuch'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_step_that_fails_before_writing_leaves_no_campaign_directory(tmp_path, capsys):
    assert main(["sft", "model=tiny", f"data.path={tmp_path / 'missing.jsonl'}",
                 f"campaign.root={tmp_path / 'runs'}"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_lock_removes_the_empty_folders_of_a_new_campaign(tmp_path):
    with pytest.raises(RuntimeError):
        with campaign_lock(tmp_path / "root" / "c"):
            (tmp_path / "root" / "c" / "iter-0" / "sft").mkdir(parents=True)  # a step's parent, then it failed
            raise RuntimeError("step failed")
    assert os.listdir(tmp_path) == []
    with campaign_lock(tmp_path / "root" / "c"):  # something written: all of it stays (the lock file too)
        (tmp_path / "root" / "c" / "iter-0").mkdir()
        (tmp_path / "root" / "c" / "iter-0" / "x").write_text("x")
    assert sorted(os.listdir(tmp_path / "root" / "c")) == [".lock", "iter-0"]
    (tmp_path / "old").mkdir()
    with campaign_lock(tmp_path / "old"):  # an existing campaign directory is never removed
        (tmp_path / "old" / "empty").mkdir()
    assert (tmp_path / "old" / "empty").is_dir()


# --------------------------------------------------------------------------------------------------
# Prefect's "Finished in state ..." line


def test_a_finished_line_without_its_engine_still_gets_the_name():
    from rlhf.flows.environment import NameFinishedLines, name_finished_lines

    name_finished_lines()
    name_finished_lines()  # once only
    assert sum(isinstance(f, NameFinishedLines) for f in logging.getLogger("prefect.task_runs").filters) == 1

    def record(logger: str, msg: str, **extra) -> str:
        rec = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, (), None)
        rec.__dict__.update(extra)
        assert NameFinishedLines().filter(rec)
        return rec.getMessage()

    assert record("prefect.task_runs", "Finished in state Completed()", task_run_name="sft", task_run_id="x") == \
        "sft: Finished in state Completed()"
    assert record("prefect.flow_runs", "Finished in state Failed('x')\nmore", flow_run_name="c", flow_run_id="y") == \
        "c: Finished in state Failed('x')\nmore"
    assert record("prefect.task_runs", "Something else", task_run_name="sft") == "Something else"
    assert record("prefect.task_runs", "Finished in state Completed()") == "Finished in state Completed()"


def test_a_task_runs_finished_line_names_the_task_and_its_duration(caplog):
    import time

    from prefect import flow, task
    from prefect.settings import temporary_settings

    from rlhf.flows.environment import name_finished_lines, prefect_api

    name_finished_lines()

    @task(name="quick-step", task_run_name="quick-step")
    def quick_step() -> int:
        time.sleep(0.2)
        return 1

    @flow(name="one-task", flow_run_name="one-task-run")
    def one_task() -> int:
        return quick_step()

    with temporary_settings(restore_defaults={"api.url"}), prefect_api(), caplog.at_level(logging.INFO):
        assert one_task() == 1
    lines = [r.getMessage() for r in caplog.records if "Finished in state" in r.getMessage()]
    task_line = next(line for line in lines if line.startswith("quick-step: "))
    assert re.fullmatch(r"quick-step: Finished in state Completed\(\) after (\d+\.\d) s", task_line), lines
    assert 0.2 <= float(task_line.split(" after ")[1][:-2]) < 30
    assert any(line.startswith("one-task-run: Finished in state Completed() after ") for line in lines), lines
    assert not any(line.startswith("Finished in state") for line in lines)


def test_an_interrupted_process_exits_even_if_a_stray_thread_would_keep_it():
    """After an interrupt, `rlhf` exits with 130 even when a library left a non-daemon thread behind (seen
    with Prefect: an idle executor worker started during interpreter shutdown kept a Ctrl-C'd run alive)."""
    import subprocess
    import sys

    stuck = ("import threading; from rlhf.cli import exit_even_if_stuck; "
             "threading.Thread(target=threading.Event().wait).start(); exit_even_if_stuck(130, grace=0.5)")
    assert subprocess.run([sys.executable, "-c", stuck], timeout=60).returncode == 130
