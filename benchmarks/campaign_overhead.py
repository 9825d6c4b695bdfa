"""Orchestration and tracking overhead of a campaign: the smoke campaign, its cached rerun, and the share
of an iteration's wall time spent outside ``rlhf_core``.

    python -m benchmarks.campaign_overhead        # writes benchmarks/results/campaign_overhead.json

One process, Prefect's ephemeral server with a fresh PREFECT_HOME and a fresh MLflow SQLite store, both
in a temp dir. Figures:

- ``first_s`` / ``rerun_s``: wall time of ``run_campaign`` (SFT + 2 iterations on the tiny model) and of
  the same call again (every step Cached); ``speedup`` is their ratio;
- ``outside_core_share``: per iteration, 1 - (time spent in calls into ``rlhf_core``) / (the iteration
  flow run's wall time from Prefect). The time in ``rlhf_core`` is measured around each task's call of its
  core step (``rlhf.tasks.steps._outputs``, wrapped here: the step with its cache check, input digests and
  manifest); the remainder is Prefect (flow and task runs, cache keys, result persistence), the flow's
  own code, and whatever MLflow work is not overlapped by the tracking thread (rlhf.tracking.Recorder).
  ``run_step_share`` is the older, stricter figure: only the steps' own ``wall_seconds`` (measured inside
  ``run_step``, without digests and manifests) count as core.
The tiny model makes the core steps as short as they get, so this share is an upper bound: on a real
model the same overhead is divided by minutes of training instead of seconds.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "campaign_overhead.json"


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-"))
    os.environ["PREFECT_HOME"] = str(tmp / ".prefect")
    os.environ.pop("PREFECT_API_URL", None)
    import torch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from rlhf.flows.campaign import run_campaign
    from rlhf.flows.config import compose_config
    from rlhf.tasks import steps

    core_seconds: dict[str, float] = {}  # per iteration directory name ("iter-1")
    outputs = steps._outputs

    def timed_outputs(step, fault, body):
        started = time.perf_counter()
        refs = outputs(step, fault, body)
        where = Path(next(iter(refs.values()))["path"]).parent.name
        core_seconds[where] = core_seconds.get(where, 0.0) + time.perf_counter() - started
        return refs

    steps._outputs = timed_outputs
    torch.set_num_threads(1)
    cfg = compose_config(["experiment=smoke", f"campaign.root={tmp}", "campaign.name=bench"])
    started = time.perf_counter()
    summary = run_campaign(cfg)
    first = time.perf_counter() - started
    started = time.perf_counter()
    run_campaign(cfg)
    rerun = time.perf_counter() - started

    shares = {}
    with get_client(sync_client=True) as client:
        for it in summary["iterations"]:
            name = f"bench-RLHF-V{it['iteration']}"
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
                                         sort=FlowRunSort.START_TIME_ASC, limit=10)
            run = min(runs, key=lambda r: r.start_time)  # the first, executing run
            flow_s = (run.end_time - run.start_time).total_seconds()
            core_s, run_step_s = core_seconds[f"iter-{it['iteration']}"], sum(it["wall_seconds"].values())
            shares[str(it["iteration"])] = {"flow_s": flow_s, "core_s": core_s,
                                            "outside_core_share": 1 - core_s / flow_s, "run_step_s": run_step_s,
                                            "run_step_share": 1 - run_step_s / flow_s}
    result = {"first_s": first, "rerun_s": rerun, "speedup": first / rerun, "iterations": shares,
              "machine": {"python": sys.version.split()[0], "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count()}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"smoke campaign: {first:.1f} s; cached rerun: {rerun:.1f} s ({first / rerun:.1f}x faster)")
    for n, s in shares.items():
        print(f"  RLHF-V{n}: flow {s['flow_s']:.2f} s, inside rlhf_core {s['core_s']:.2f} s, "
              f"outside {100 * s['outside_core_share']:.0f} % (counting only run_step as core: "
              f"{100 * s['run_step_share']:.0f} %)")
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
