"""`rlhf serve` with an interval and no Prefect server, end to end in a process of its own, as a user
starts it: each scheduled run performs the campaign's next iteration (the first SFT + RLHF-V1, the second
RLHF-V2 with everything before it cached)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes  # `rlhf serve` in a process of its own: `make test-processes`

CLI = "import sys; from rlhf.cli import main; raise SystemExit(main(sys.argv[1:]))"


def test_each_scheduled_run_performs_the_next_iteration(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / ".prefect"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CLI, "serve", "experiment=smoke", f"campaign.root={tmp_path}", "campaign.name=s",
         "orchestration.interval=1", "orchestration.max_runs=2"],
        env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "running the schedule (every 1.0 s) in this process" in log
    assert "schedule: run 1 of 2" in log and "schedule: run 2 of 2" in log
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    assert (tmp_path / "s" / "iter-2" / "evaluate" / "manifest.json").is_file()
    # the first run did SFT and RLHF-V1 (with PPO); the second only RLHF-V2 (with Ghost Attention), the
    # 11 steps before it Cached
    first, second = log.split("schedule: run 2 of 2")
    assert "ppo: start" in first and "gatt: start" not in first
    assert "ppo: start" not in second and "gatt: start" in second
    assert second.count("Finished in state Cached") == 11
