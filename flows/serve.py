"""``rlhf serve``: a campaign's next iteration on a schedule, or whenever a new file lands.

- ``orchestration.cron`` / ``orchestration.interval``: a Prefect deployment of ``next_iteration_flow``
  served from this process (``flow.serve``); each scheduled run performs the campaign's next iteration,
  and shows up in the Prefect UI with its task states. With ``PREFECT_API_URL`` pointing at a server
  (docker/), the deployment lives there.
- ``orchestration.watch=<dir>``: poll the directory (``orchestration.poll_seconds``) and run the next
  iteration whenever a file appears or changes there -- typically the labels directory of a human
  annotator whose ``labels_path`` is ``<dir>/iter-{iteration}.jsonl``. An iteration whose labels are
  not in yet stops at ``annotate`` (after exporting the pairs to label); the next file landing reruns
  it, with everything before ``annotate`` cached.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from rlhf_core.errors import RLHFError

log = logging.getLogger("rlhf")


def serve(cfg, overrides: list[str]) -> None:
    from .campaign import next_iteration_flow

    o = cfg.orchestration
    if o.watch:
        watch(Path(o.watch), o.poll_seconds, lambda: next_iteration_flow(overrides=overrides))
        return
    name = f"{cfg.campaign.name}-next-iteration"
    log.info("serving deployment %s (%s); Ctrl-C to stop", name, f"cron {o.cron}" if o.cron else f"every {o.interval} s")
    next_iteration_flow.serve(name=name, cron=o.cron, interval=o.interval, parameters={"overrides": overrides})


def snapshot(directory: Path) -> dict[str, float]:
    """Visible files of ``directory`` and their modification times."""
    if not directory.is_dir():
        return {}
    return {p.name: p.stat().st_mtime for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}


def watch(directory: Path, poll_seconds: float, run: Callable[[], object], max_polls: int | None = None) -> int:
    """Call ``run`` once now and again whenever a file of ``directory`` appears or changes; returns how
    many times it ran (``max_polls`` bounds the loop, for tests). A run that fails on a user-facing
    error (labels not in yet, bad labels) is logged and waits for the next file."""
    seen, runs, polls = snapshot(directory), 0, 0

    def attempt() -> None:
        nonlocal runs
        runs += 1
        try:
            run()
        except RLHFError as err:
            log.info("watch: the run stopped: %s; waiting for the next file in %s", err, directory)

    attempt()
    while max_polls is None or polls < max_polls:
        time.sleep(poll_seconds)
        polls += 1
        now = snapshot(directory)
        changed = sorted(name for name, mtime in now.items() if seen.get(name) != mtime)
        seen = now
        if changed:
            log.info("watch: new or changed in %s: %s", directory, ", ".join(changed))
            attempt()
    return runs
