"""``rlhf serve``: a campaign's next iteration on a schedule, or whenever a new file lands.

- ``orchestration.cron`` / ``orchestration.interval``: each scheduled run performs the campaign's next
  iteration (``next_iteration_flow``), and shows up in the Prefect UI with its task states.
  With ``PREFECT_API_URL`` pointing at a Prefect server (docker/), this is a deployment served from this
  process (``flow.serve``) whose schedule the server keeps. Without one, Prefect's ephemeral server
  cannot schedule anything ("Cannot schedule flows on an ephemeral server"), so the schedule runs in
  this process instead (:func:`schedule`): the first interval run at once, cron runs at the cron's times
  (local time), a run that outlasts its slot skips the slots it missed (no backlog, no overlap);
  ``orchestration.max_runs`` stops after that many runs (default: until stopped).
- ``orchestration.watch=<dir>``: poll the directory (``orchestration.poll_seconds``) and run the next
  iteration whenever a file appears or changes there -- typically the labels directory of a human
  annotator whose ``labels_path`` is ``<dir>/iter-{iteration}.jsonl``. An iteration whose labels are
  not in yet stops at ``annotate`` (after exporting the pairs to label); the next file landing reruns
  it, with everything before ``annotate`` cached.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rlhf.core.errors import ConfigError, RLHFError

log = logging.getLogger("rlhf")


def _next_iteration(overrides: list[str]):
    """One scheduled run, with the settings a campaign run uses on the ephemeral server (no heartbeats,
    batched task-run records, a temporary server that dies with this process:
    ``rlhf.flows.environment.prefect_api``)."""
    from .campaign import next_iteration_flow
    from .environment import prefect_api

    with prefect_api():
        return next_iteration_flow(overrides=overrides)


def serve(cfg, overrides: list[str]) -> None:
    from prefect.settings import get_current_settings

    from .campaign import next_iteration_flow

    orchestration = cfg.orchestration
    run = partial(_next_iteration, overrides)
    if orchestration.watch:
        watch(Path(orchestration.watch), orchestration.poll_seconds, run)
        return
    when = f"cron {orchestration.cron}" if orchestration.cron else f"every {orchestration.interval} s"
    if get_current_settings().api.url:
        name = f"{cfg.campaign.name}-next-iteration"
        log.info("serving deployment %s (%s) on %s; Ctrl-C to stop", name, when, get_current_settings().api.url)
        next_iteration_flow.serve(name=name, cron=orchestration.cron, interval=orchestration.interval,
                                  parameters={"overrides": overrides})
        return
    log.info("no Prefect server (PREFECT_API_URL unset): running the schedule (%s) in this process; Ctrl-C "
             "to stop", when)
    schedule(ticks(orchestration.cron, orchestration.interval, time.time()), run, orchestration.max_runs)


def ticks(cron: str | None, interval: float | None, start: float) -> Iterator[float]:
    """The times (epoch seconds) of the scheduled runs: ``start`` and every ``interval`` seconds after it,
    or the cron expression's times after ``start`` in local time."""
    if cron:
        from prefect._vendor.croniter import croniter  # the parser Prefect's own scheduler uses

        times = croniter(cron, datetime.fromtimestamp(start))
        while True:
            yield times.get_next(float)
    n = 0
    while True:
        yield start + n * interval
        n += 1


def check_schedule(cron: str | None, interval: float | None) -> None:
    """A clear error for a schedule that cannot run, before anything starts."""
    if interval is not None and interval <= 0:
        raise ConfigError("orchestration.interval", f"must be > 0 seconds, got {interval}")
    if cron:
        from prefect._vendor.croniter import CroniterError, croniter

        try:
            croniter(cron, datetime.now())
        except (CroniterError, ValueError) as err:
            raise ConfigError("orchestration.cron", f"{cron!r} is not a cron expression ({err}); e.g. '0 3 * * 1' "
                                                    "is Mondays at 03:00") from err


def schedule(times: Iterable[float], run: Callable[[], object], max_runs: int | None = None,
             clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> int:
    """Call ``run`` at each of ``times``; returns how many runs there were. Slots that passed while a run
    was going are skipped. A run that stops on a user-facing error (labels not in yet) is logged and the
    schedule goes on; anything else ends it."""
    runs = 0
    for at in times:
        if max_runs is not None and runs >= max_runs:
            break
        now = clock()
        if runs and at < now:
            continue  # missed while the previous run was going
        sleep(max(0.0, at - now))
        runs += 1
        log.info("schedule: run %d%s", runs, f" of {max_runs}" if max_runs else "")
        try:
            run()
        except RLHFError as err:
            log.info("schedule: the run stopped: %s; waiting for the next slot", err)
    return runs


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
