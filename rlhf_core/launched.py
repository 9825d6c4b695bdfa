"""One rank of a launched step: ``python -m rlhf.core.launched <spec.json>`` (started by ``accelerate launch``,
see :mod:`rlhf.core.launch`); with ``--launcher <arguments>``, accelerate's launch command itself.

In order, because each step needs the one before it:

1. Output to ``rank-<r>.log`` beside the spec (stdout and stderr, file descriptors included, so a native
   library's warnings and the dying interpreter's traceback land there too); the parent forwards it.
2. ``rank-<r>.pid``, and death with the launcher (Linux): the parent can always find and stop this rank.
3. The process group, with the spec's backend and ``launch.timeout_seconds`` as the collective timeout
   (a rank waiting for a dead peer gives up instead of hanging); none for one isolated process
   (``launch.isolate``, started directly by the parent rather than by accelerate's launcher).
4. The runner, with the spec's arguments; it sees ``RLHF_LAUNCHED=1`` and runs the step here. A runner
   that takes ``on_metrics`` reports each optimizer step's metrics to ``metrics.jsonl`` beside the spec,
   which the parent follows (its MLflow run gets them as the step trains).

A failure writes ``rank-<r>.failed`` (the error and its traceback) before exiting 1: the parent quotes it.

Fault injection for tests and demos: ``RLHF_FAIL_RANK=<r>`` fails rank r at its start, ``<r>:<n>`` after
n optimizer (or PPO) steps (the step's training config, or the runner's own ``fail_after_steps`` argument,
gets ``n`` on that rank only; it is not part of the cache key, so all ranks still agree on it).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

from .launch import FAIL_RANK_ENV, LAUNCHED_ENV, METRICS_STREAM, decode_args, resolve, set_parent_death_signal
from .training import InjectedFault


def _redirect_output(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _log_to_stderr() -> None:
    """The ``rlhf`` log as plain lines on stderr (now the rank's log file); the parent adds ``[rank r]``."""
    logger = logging.getLogger("rlhf")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _init_process_group(backend: str, timeout_seconds: float) -> None:
    from accelerate import PartialState

    # created before the step's Accelerator, which then shares this state (training.make_accelerator
    # resets it only in a single process)
    PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true", backend=backend,
                 timeout=timedelta(seconds=timeout_seconds))


def _fault(rank: int, args: dict) -> dict:
    """``RLHF_FAIL_RANK`` applied to this rank's arguments (or raised at once)."""
    spec = os.environ.get(FAIL_RANK_ENV, "")
    if not spec:
        return args
    target, _, after = spec.partition(":")
    if int(target) != rank:
        return args
    if not after:
        raise InjectedFault(f"injected fault on rank {rank} ({FAIL_RANK_ENV}={spec})")
    if "fail_after_steps" in args:  # a runner that takes it as an argument (PPO)
        return {**args, "fail_after_steps": int(after)}
    return {name: dataclasses.replace(value, fail_after_steps=int(after))
            if dataclasses.is_dataclass(value) and hasattr(value, "fail_after_steps") else value
            for name, value in args.items()}


class _MetricsStream:
    """A runner's ``on_metrics``: each optimizer step's metrics as one line of ``metrics.jsonl`` beside the
    spec, flushed at once, for the parent to forward while the step runs (only the main rank reports any)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, metrics: dict, step: int) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


def main(spec_path: str) -> int:
    spec_file = Path(spec_path)
    rank = int(os.environ.get("RANK", "0"))
    _redirect_output(spec_file.parent / f"rank-{rank}.log")
    (spec_file.parent / f"rank-{rank}.pid").write_text(str(os.getpid()))
    set_parent_death_signal(signal.SIGKILL)
    os.environ[LAUNCHED_ENV] = "1"
    _log_to_stderr()
    try:
        spec = json.loads(spec_file.read_text())
        if spec["num_processes"] > 1:  # one isolated process (launch.isolate) has no peers to wait for
            _init_process_group(spec["backend"], spec["timeout_seconds"])
        args = _fault(rank, decode_args(spec["args"]))
        runner = resolve(spec["runner"])
        if "on_metrics" in inspect.signature(runner).parameters:  # the parent follows them live
            args["on_metrics"] = _MetricsStream(spec_file.parent / METRICS_STREAM)
        runner(**args)
    except BaseException as err:
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        record = {"rank": rank, "error": f"{type(err).__name__}: {err}", "traceback": text, "time": time.time()}
        tmp = spec_file.parent / f".rank-{rank}.failed.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, spec_file.parent / f"rank-{rank}.failed")
        return 1
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def launcher(argv: list[str]) -> int:
    """``--launcher <accelerate launch arguments>``: accelerate's launch command in this process, which
    gets SIGTERM when the process that started it dies (the launcher then stops its ranks)."""
    set_parent_death_signal(signal.SIGTERM)
    from accelerate.commands.launch import main as accelerate_launch

    sys.argv = ["accelerate launch", *argv]
    accelerate_launch()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--launcher":
        sys.exit(launcher(sys.argv[2:]))
    code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: the rank's work is done and written. Torch's distributed threads
    # occasionally abort it ("terminate called without an active exception", seen in ~4 % of FSDP runs),
    # which would fail a finished step.
    os._exit(code)
