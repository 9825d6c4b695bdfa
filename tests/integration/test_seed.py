"""`campaign.seed` drives every random choice of a campaign: the smoke campaign run twice with seed 1, each
through the CLI in its own process under another name and root, writes the same summary.json (timings, paths,
names and MLflow run ids aside) -- the second with every training step in a child process of its own
(`launch.isolate=true`, what the demo does), which must not change a number; seed 2 labels other pairs and
gets other results. A rerun of a finished one
from the command line has nothing to run (no Prefect server), unless an output was damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# Three CLI campaigns in their own processes (~3 min on an idle 2-core machine): `make test-processes` runs it.
pytestmark = [pytest.mark.slow, pytest.mark.processes]
TIMINGS = ("wall_seconds", "tokens_per_s", "peak_rss_mb")  # and PPO's "seconds_per_step/<phase>"


def run_smoke(root: Path, name: str, seed: int, *overrides: str) -> dict:
    """`rlhf run experiment=smoke` in a fresh process (its own hash seed and temporary Prefect server)."""
    cli_run(root, name, seed, *overrides)
    return json.loads((root / name / "summary.json").read_text())


def cli_run(root: Path, name: str, seed: int, *overrides: str) -> str:
    """The output of `rlhf run experiment=smoke ...` in a fresh process, which must succeed."""
    env = {**os.environ, "PREFECT_HOME": str(root / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "rlhf", "run", "experiment=smoke", f"campaign.root={root}",
                           f"campaign.name={name}", f"campaign.seed={seed}", *overrides], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


def normalised(summary: dict, root: Path, name: str) -> dict:
    """The summary with what differs between two runs of one config taken out: the campaign's directory,
    root and name in every string (paths, tracking URI, experiment), timings and MLflow run ids."""
    text = json.dumps(summary).replace(str(root / name), "<campaign>").replace(str(root), "<root>")
    return _without_timings_and_ids(json.loads(text.replace(name, "<name>")))


def _without_timings_and_ids(value):
    if isinstance(value, dict):
        return {k: _without_timings_and_ids(v) for k, v in value.items()
                if k not in TIMINGS and k != "mlflow_run_id" and not k.startswith("seconds_per_step/")}
    if isinstance(value, list):
        return [_without_timings_and_ids(v) for v in value]
    return value


def labelled(home: Path) -> pd.DataFrame:
    return pd.read_parquet(home / "iter-1" / "annotate" / "pairs.parquet")


def test_the_same_seed_gives_the_same_summary_and_another_seed_another(tmp_path):
    summaries = {}
    for name, seed, overrides in (("seed-one-a", 1, ()), ("seed-one-b", 1, ("launch.isolate=true",)),
                                  ("seed-two", 2, ())):
        root = tmp_path / name
        summaries[name] = normalised(run_smoke(root, name, seed, *overrides), root, name)
    first, again, other = summaries["seed-one-a"], summaries["seed-one-b"], summaries["seed-two"]
    assert first["campaign_dir"] == "<campaign>" and "mlflow_run_id" not in first  # the normaliser did its job

    assert again["config"]["launch"]["isolate"] and not first["config"]["launch"]["isolate"]
    again["config"]["launch"]["isolate"] = False
    assert again == first  # every number: RM accuracies, temperatures, pools, PPO, GAtt, win rates

    assert other["config"]["reward"]["helpful"]["seed"] == 2 and first["config"]["reward"]["helpful"]["seed"] == 1
    v1, v1_other = first["iterations"][0], other["iterations"][0]
    assert v1_other["reward"] != v1["reward"]  # other seed pairs and eval pairs: other RMs, other accuracies
    assert v1_other["rejection"]["pool_mean_score"] != v1["rejection"]["pool_mean_score"]
    pairs, pairs_other = (labelled(tmp_path / name / name) for name in ("seed-one-a", "seed-two"))
    assert list(pairs_other.prompt) != list(pairs.prompt)  # another slice of another prompt sequence

    # Run again from the command line, finished with the same config: nothing to run, and no Prefect server is
    # started (rlhf/record/finished.py); the summary is left as it was.
    root, name = tmp_path / "seed-one-a", "seed-one-a"
    written = (root / name / "summary.json").read_bytes()
    rerun = cli_run(root, name, 1)
    assert "nothing to run" in rerun and "temporary server" not in rerun, rerun[-3000:]
    assert (root / name / "summary.json").read_bytes() == written
    # A damaged output is not trusted: the rerun goes through the flow, which recomputes that step (the same
    # seed: the same judgments, so the same summary)
    judgments = root / name / "iter-2" / "evaluate" / "judgments.parquet"
    judgments.write_bytes(judgments.read_bytes()[:-100])
    rerun = cli_run(root, name, 1)
    assert "nothing to run" not in rerun and "temporary server" in rerun, rerun[-3000:]
    assert "running the flow: " in rerun and "judgments.parquet has" in rerun  # it says why
    assert "evaluate: Finished in state Completed" in rerun and "train_policy: Finished in state Cached" in rerun
    assert normalised(json.loads((root / name / "summary.json").read_text()), root, name) == first
