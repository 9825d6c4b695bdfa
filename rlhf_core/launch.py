"""Training that outgrows one process: a step started on N processes with ``accelerate launch``.

``launch.num_processes=1`` (``launch=single``, the default) runs every step in the calling process, as
before. With more, a training step's runner (``sft_step``, ``rm_train_step``, ``ppo_step``, ``gatt_step``) is
not called here but written down as a *spec* (``spec.json``: the runner's import path and its arguments,
config dataclasses as dicts) and started on every rank as ``python -m rlhf.core.launched <spec.json>`` by::

    <this python> -m accelerate.commands.launch --config_file <accelerate yaml> --num_processes N ...
    (run through ``python -m rlhf.core.launched --launcher ...``, which first sets a parent-death signal)

Why that command line and not ``--cpu``: in accelerate 1.x ``--cpu`` picks its *simple* launcher, which
starts one process (or ``mpirun`` with a host file); the only launcher that starts N local processes is
the torchrun one (``distributed_type: MULTI_GPU`` in the shipped ``ddp.yaml``). On a machine without CUDA
the ranks get ``ACCELERATE_USE_CPU=true``, so accelerate makes them ``MULTI_CPU`` ranks talking over gloo.

``launch.isolate=true`` with one process: the same spec, started directly as one child process (no launcher,
no process group). The step computes exactly what it would in the caller, and the memory it held (its heap
included, which a long-lived process keeps) is the system's again when it ends (docs/design.md#activation-memory).

The parent's side (:func:`run_launched`): the launcher runs as its own process group; each rank writes
its output to ``rank-<r>.log`` beside the spec (``launched`` points its stdout and stderr there) and the
parent forwards every line into the ``rlhf`` log as ``[rank <r>] ...`` (torchrun's ``--tee`` would prefix
lines too, but the files also give the parent a failed rank's whole traceback). A rank that fails leaves
``rank-<r>.failed`` (its traceback); the step then fails with that traceback's tail, and if the other
ranks are not gone ``launch.timeout_seconds`` later, they are killed. Whatever ends the wait (a failure,
Ctrl-C, SIGTERM to the parent) ends with no rank left running: the launcher's group and every rank's
own group (torchrun starts each rank in a new session) are terminated, then killed.

Only the main rank writes the step's output dir and manifest (``rlhf.core.steps.common.run_step``); the
other ranks compute and exit. The parent then reads the manifest the main rank committed.
:meth:`LaunchConfig.for_step` applies a step's own overrides (``launch.steps.<step>``); :func:`rank`,
:func:`gather_objects` and :func:`sum_across` are the collectives PPO splits its work with (no-ops in one
process).

This module imports torch lazily and nothing of accelerate: it is imported by every step runner.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .errors import ConfigError, RLHFError

log = logging.getLogger("rlhf")

MODES = ("single", "ddp", "fsdp", "deepspeed")
BACKENDS = ("gloo", "nccl")
LAUNCHED_ENV = "RLHF_LAUNCHED"  # set in every rank: a runner called there runs in that process
FAIL_RANK_ENV = "RLHF_FAIL_RANK"  # fault injection: "<rank>" fails that rank at its start, "<rank>:<n>" after n steps
SPEC = "spec.json"
METRICS_STREAM = "metrics.jsonl"  # beside the spec: the main rank's metrics as it reports them, for the parent
POLL_SECONDS = 0.2
TAIL_LINES = 25  # lines of a failed rank's traceback quoted in the error
KILL_GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL when the ranks are stopped


TRAINING_STEPS = ("sft", "train_reward_models", "train_policy", "ppo", "gatt")  # the steps ``launch`` applies to


@dataclass
class StepLaunch:
    """One training step's departures from the ``launch`` group (null = as the group says), e.g. the RMs on
    one process while SFT runs on eight: ``launch.steps.train_reward_models.num_processes=1``."""

    name: str | None = None
    num_processes: int | None = None
    config_file: str | None = None


@dataclass
class StepLaunches:
    """``launch.steps.<step>``: one :class:`StepLaunch` per training step."""

    sft: StepLaunch = field(default_factory=StepLaunch)
    train_reward_models: StepLaunch = field(default_factory=StepLaunch)
    train_policy: StepLaunch = field(default_factory=StepLaunch)
    ppo: StepLaunch = field(default_factory=StepLaunch)
    gatt: StepLaunch = field(default_factory=StepLaunch)


@dataclass
class LaunchConfig:
    """The ``launch`` group: how many processes a training step runs on, and how they are started."""

    name: str = "single"  # single (in this process) | ddp | fsdp (sft, RMs, train_policy) | deepspeed (refused)
    num_processes: int = 1  # processes in all (on all machines); > 1 starts them with accelerate launch
    isolate: bool = False  # 1 process: the step in a child process of its own, whose memory is freed at its end
    config_file: str | None = None  # an accelerate config yaml; null = the shipped one for `name`
    num_machines: int = 1  # passed through to accelerate launch
    machine_rank: int = 0  # passed through
    main_process_ip: str | None = None  # passed through; needed with num_machines > 1
    main_process_port: int | None = None  # passed through; null = a free port on this machine
    timeout_seconds: float = 600.0  # how long ranks wait for each other, and after one fails for the rest to exit
    backend: str | None = None  # torch.distributed backend; null = gloo on CPU, nccl on GPU
    steps: StepLaunches = field(default_factory=StepLaunches)  # per-step overrides of name / num_processes / config

    def for_step(self, step: str) -> "LaunchConfig":
        """The launch of training step ``step``: the group with that step's overrides applied (and no
        per-step table left: a step's runner sees one plain config). A step given more than one process
        while the group is ``single`` runs data parallel (``ddp``)."""
        if step not in TRAINING_STEPS:
            raise ValueError(f"{step!r} is not a training step ({', '.join(TRAINING_STEPS)})")
        own: StepLaunch = getattr(self.steps, step)
        n = own.num_processes if own.num_processes is not None else self.num_processes
        name = own.name or ("ddp" if self.name == "single" and n > 1 else self.name)
        if n == 1 and own.num_processes is not None and own.name is None:
            name = "single"  # one process: in the calling process, whatever the group's mode
        return replace(self, name=name, num_processes=n, config_file=own.config_file or self.config_file,
                       steps=StepLaunches())


class LaunchError(RLHFError):
    """A launched step failed: which rank, and the tail of its traceback."""


# --------------------------------------------------------------------------------------------------
# which process am I


def _dist():
    """``torch.distributed`` when this process is one rank of an initialised group, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Processes that run this step together: 1 in-process."""
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main_process() -> bool:
    """True on the rank that writes a step's outputs (rank 0), and always in a single process."""
    dist = _dist()
    return dist is None or dist.get_rank() == 0


def wait_for_everyone() -> None:
    """A barrier across the ranks; nothing in a single process."""
    dist = _dist()
    if dist is not None:
        dist.barrier()


def rank() -> int:
    """This process's rank among those running the step: 0 in-process."""
    dist = _dist()
    return dist.get_rank() if dist else 0


def gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` in a single process."""
    dist = _dist()
    if dist is None:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def sum_across(tensors) -> None:
    """Replace each tensor by its sum over the ranks, in place (an all-reduce); nothing in a single process.
    Tensors the ranks filled in disjoint places (zeros elsewhere) come out whole and exact."""
    dist = _dist()
    if dist is None:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def inside_launch() -> bool:
    """True in a rank started by :func:`run_launched` (a runner called there does the work itself)."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def launches(launch: LaunchConfig | None) -> bool:
    """Whether a runner called with ``launch`` starts processes (more than one, or one isolated child), and
    is not already running in one."""
    return launch is not None and (launch.num_processes > 1 or launch.isolate) and not inside_launch()


def keyed_launch(launch: LaunchConfig | None) -> dict:
    """What the launch contributes to a step's cache key: nothing in one process (keys stay as they were),
    the mode and the number of processes otherwise (the same weights only within float tolerance).
    Ports, machines, timeouts and ``isolate`` change how a run is started, not what it computes."""
    if launch is None or launch.num_processes <= 1:
        return {}
    return {"launch": {"name": launch.name, "world_size": launch.num_processes}}


# --------------------------------------------------------------------------------------------------
# config checks


def check_launch(launch: LaunchConfig, batches: dict | None = None, step: str | None = None) -> None:
    """A :class:`ConfigError` for a launch config that cannot work, before anything starts. With ``step``,
    the launch of that training step (:meth:`LaunchConfig.for_step`) is checked and a key it overrides is
    named as ``launch.steps.<step>.<field>``. ``batches`` maps a training section's key (``sft``) to its
    ``TrainConfig``: every process needs at least one micro-batch of each optimizer batch (``train`` splits
    the micro-batches across the ranks)."""
    own = getattr(launch.steps, step) if step else StepLaunch()

    def key(name: str) -> str:
        return f"launch.steps.{step}.{name}" if getattr(own, name, None) is not None else f"launch.{name}"

    launch = launch.for_step(step) if step else launch
    if launch.name not in MODES:
        raise ConfigError(key("name"), f"unknown mode {launch.name!r}; one of {', '.join(MODES)}")
    if launch.num_processes < 1:
        raise ConfigError(key("num_processes"), f"must be at least 1, got {launch.num_processes}")
    if launch.name == "single" and launch.num_processes != 1:
        raise ConfigError(key("num_processes"), f"launch=single runs the step in this process (1, got "
                                                f"{launch.num_processes}); for more processes: launch=ddp "
                                                f"launch.num_processes={launch.num_processes}")
    if launch.name == "deepspeed" and launch.num_processes > 1:
        raise ConfigError(key("name"), "deepspeed: its accelerate config is shipped "
                                       "(rlhf_core/assets/accelerate/deepspeed.yaml) but the steps are not run "
                                       "under DeepSpeed (not verified, see the README); use launch=fsdp or ddp")
    if step in UNSHARDED_STEPS:
        check_unsharded(launch, step, key("name"))
    if launch.num_machines < 1 or not 0 <= launch.machine_rank < launch.num_machines:
        raise ConfigError("launch.machine_rank", f"{launch.machine_rank} is not a rank of {launch.num_machines} "
                                                 "machine(s) (0 .. num_machines - 1)")
    if launch.num_processes % launch.num_machines:
        raise ConfigError(key("num_processes"), f"{launch.num_processes} processes do not split evenly over "
                                                f"{launch.num_machines} machines")
    if launch.num_machines > 1 and not launch.main_process_ip:
        raise ConfigError("launch.main_process_ip", "with more than one machine, name the main machine's address")
    if not launch.timeout_seconds > 0:
        raise ConfigError("launch.timeout_seconds", f"must be more than 0, got {launch.timeout_seconds}")
    if launch.backend is not None and launch.backend not in BACKENDS:
        raise ConfigError("launch.backend", f"unknown backend {launch.backend!r}; one of {', '.join(BACKENDS)} or "
                                            "null (gloo on CPU, nccl on GPU)")
    if launch.config_file is not None and not Path(launch.config_file).is_file():
        raise ConfigError(key("config_file"), f"no such file: {launch.config_file} (null = the shipped config "
                                              f"for launch={launch.name})")
    for section, cfg in (batches or {}).items():
        per_process = getattr(cfg, "micro_batch_size", 1)
        micro_batches = cfg.batch_size // per_process
        if launch.num_processes > 1 and micro_batches < launch.num_processes:
            raise ConfigError(f"{section}.batch_size", (
                f"{cfg.batch_size} examples per optimizer step in micro-batches of {per_process} make "
                f"{micro_batches} micro-batch(es), fewer than {key('num_processes')}={launch.num_processes}: each "
                f"process needs one. Raise {section}.batch_size to at least {per_process * launch.num_processes}, "
                f"lower {section}.micro_batch_size, or use fewer processes"))


UNSHARDED_STEPS = ("ppo", "gatt")  # steps that sample from the model they train: data parallel only


def check_unsharded(launch: LaunchConfig | None, step: str, key: str = "launch.name") -> None:
    """PPO and GAtt sample from the policy between updates, on the main process, and PPO splits its own
    micro-batches: they run data parallel, not sharded. A clear error for ``launch=fsdp`` on them."""
    if launch is not None and launch.name == "fsdp" and launch.num_processes > 1:
        lora = "ppo.lora" if step == "ppo" else "gatt.train.lora"
        raise ConfigError(key, f"fsdp shards the weights of SFT, the RMs and the policy's fine-tune; {step} samples "
                               f"from the policy it trains and runs data parallel: launch.steps.{step}.name=ddp "
                               f"(with {lora}.r > 0 for a model too large to replicate)")


def accelerate_config(launch: LaunchConfig) -> Path:
    """The accelerate config yaml to launch with: the user's ``launch.config_file``, else the shipped one."""
    if launch.config_file:
        return Path(launch.config_file)
    from .assets import ASSETS_DIR

    return ASSETS_DIR / "accelerate" / f"{launch.name}.yaml"


def _backend(launch: LaunchConfig, cuda: bool) -> str:
    backend = launch.backend or ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise ConfigError("launch.backend", "nccl needs CUDA GPUs and this machine has none; use gloo (or null)")
    return backend


# --------------------------------------------------------------------------------------------------
# the spec: a runner and its arguments, as JSON


def encode_args(args: dict) -> dict:
    """Arguments as JSON: a config dataclass as ``{"__dataclass__": "module:Class", "fields": {...}}`` (its
    nested config dataclasses, e.g. ``sft.lora``, the same way), a path as its string."""
    import dataclasses

    def one(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            kind = type(value)
            return {"__dataclass__": f"{kind.__module__}:{kind.__qualname__}",
                    "fields": {f.name: one(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return {name: one(value) for name, value in args.items()}


def resolve(path: str):
    """``module:name`` -> the object; only the platform's own modules (a spec file names code to run)."""
    import importlib

    module, _, name = path.partition(":")
    if not module.startswith("rlhf."):
        raise LaunchError(f"the spec names {path!r}; only rlhf's own runners and configs are launched")
    return getattr(importlib.import_module(module), name)


def decode_args(args: dict) -> dict:
    def one(value):
        if isinstance(value, dict) and "__dataclass__" in value:
            return resolve(value["__dataclass__"])(**{k: one(v) for k, v in value["fields"].items()})
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    return {name: one(value) for name, value in args.items()}


def runner_path(function) -> str:
    return f"{function.__module__}:{function.__qualname__}"


# --------------------------------------------------------------------------------------------------
# the parent: start the ranks, forward their output, fail clearly, leave nothing running


def run_launched(name: str, runner: str, args: dict, launch: LaunchConfig, launch_dir: Path,
                 on_metrics: Callable[[dict, int], None] | None = None) -> None:
    """Run ``runner(**args)`` on ``launch.num_processes`` ranks; returns when all exited 0, else raises
    :class:`LaunchError` with the failed rank's traceback tail. ``launch_dir`` (the spec and the ranks'
    logs) is emptied first and kept after a failure, for reading. ``on_metrics(metrics, step)`` gets each
    optimizer step's metrics while the ranks train (a runner that reports metrics writes them to
    ``metrics.jsonl`` beside the spec, see :mod:`rlhf.core.launched`; this process follows that file)."""
    import torch

    check_launch(launch)
    cuda = torch.cuda.is_available()
    backend = _backend(launch, cuda)
    shutil.rmtree(launch_dir, ignore_errors=True)
    launch_dir.mkdir(parents=True)
    spec = launch_dir / SPEC
    from .artifacts import write_json

    write_json(spec, {"step": name, "runner": runner, "args": encode_args(args), "backend": backend,
                      "timeout_seconds": launch.timeout_seconds, "num_processes": launch.num_processes})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", LAUNCHED_ENV: "1"}
    if launch.num_processes == 1:
        # launch.isolate: the one rank started directly (no launcher, no process group); it sets its own
        # parent-death signal, and its session is the group stopped below
        command = [sys.executable, "-m", "rlhf.core.launched", str(spec)]
        log.info("%s: in a child process of its own (launch.isolate): %s", name, " ".join(command))
    else:
        # accelerate's launch command, run by `launched --launcher` so it first asks for SIGTERM when this
        # process dies (a preexec_fn would do the same, but is unsafe in a threaded parent such as Prefect's)
        command = [sys.executable, "-m", "rlhf.core.launched", "--launcher",
                   "--config_file", str(accelerate_config(launch)),
                   "--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
                   "--machine_rank", str(launch.machine_rank),
                   "--main_process_port", str(launch.main_process_port if launch.main_process_port is not None
                                              else 0)]
        if launch.main_process_ip:
            command += ["--main_process_ip", launch.main_process_ip]
        command += ["--module", "rlhf.core.launched", str(spec)]
        if not cuda:
            env["ACCELERATE_USE_CPU"] = "true"  # the ranks are MULTI_CPU (gloo), not single-process GPU-less runs
        log.info("%s: launching %d processes (%s, %s): %s", name, launch.num_processes, launch.name, backend,
                 " ".join(command))
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    launcher_lines: list[str] = []
    reader = threading.Thread(target=_forward_launcher, args=(process, launcher_lines), daemon=True)
    reader.start()
    logs = _RankLogs(launch_dir)
    metrics = _MetricsFollower(launch_dir / METRICS_STREAM, on_metrics)
    failed_at = None
    try:
        with _terminate_raises():
            while process.poll() is None:
                logs.forward()
                metrics.forward()
                if failed_at is None and _failures(launch_dir):
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > launch.timeout_seconds:
                    log.warning("%s: a rank failed and the others are still running after %.0f s "
                                "(launch.timeout_seconds): stopping them", name, launch.timeout_seconds)
                    break
                time.sleep(POLL_SECONDS)
        metrics.forward()  # the rows written after the last poll
    finally:
        _stop(process, launch_dir)
        reader.join(timeout=5)
        logs.forward(final=True)
        logs.close()
        metrics.close()
    if process.returncode == 0 and not _failures(launch_dir):
        log.info("%s: %s finished in %.0f s", name, f"{launch.num_processes} processes" if launch.num_processes > 1
                 else "its child process", time.monotonic() - started)
        return
    raise LaunchError(_failure_message(name, launch_dir, process.returncode, launcher_lines))


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel (Linux) to send ``sig`` to this process when the process that started it dies: so
    even a SIGKILLed parent leaves no training behind. Nothing elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM to the parent while it waits: unwinds like Ctrl-C, so the ranks are stopped on the way out."""


class _terminate_raises:
    """While the parent waits in the main thread, SIGTERM raises :class:`_Terminated` (the default action
    would end the parent at once and leave the launcher to its parent-death signal)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Terminated(f"signal {signum}")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _forward_launcher(process: subprocess.Popen, lines: list[str]) -> None:
    """The launcher's own output (accelerate's and torchrun's messages) into the log as ``[launch] ...``."""
    for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line:
            lines.append(line)
            del lines[:-200]
            log.info("[launch] %s", line)


class _Tail:
    """A file read as it grows, from its start: each call returns the whole lines added since the last (the
    rest waits for its line's end; ``final`` returns it too). ``carriage``: a carriage return ends a line too
    (a progress bar's)."""

    def __init__(self, path: Path, carriage: bool = False):
        self.path, self.carriage, self.handle, self.partial = path, carriage, None, b""

    def lines(self, final: bool = False) -> list[str]:
        if self.handle is None:
            if not self.path.is_file():
                return []
            self.handle = self.path.open("rb")
        data = self.partial + self.handle.read()
        *lines, self.partial = (data.replace(b"\r", b"\n") if self.carriage else data).split(b"\n")
        if final:
            lines.append(self.partial)
            self.partial = b""
        return [line.decode(errors="replace") for line in lines if line.strip()]

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _RankLogs:
    """Follows ``rank-<r>.log`` files as the ranks write them; each whole line goes to the log as
    ``[rank <r>] ...``."""

    def __init__(self, launch_dir: Path):
        self.dir, self.tails = launch_dir, {}

    def forward(self, final: bool = False) -> None:
        for path in sorted(self.dir.glob("rank-*.log")):
            rank = int(path.stem.removeprefix("rank-"))
            for line in self.tails.setdefault(rank, _Tail(path, carriage=True)).lines(final):
                log.info("[rank %d] %s", rank, line.rstrip())

    def close(self) -> None:
        for tail in self.tails.values():
            tail.close()


class _MetricsFollower:
    """Follows the main rank's ``metrics.jsonl`` and hands each whole new row to ``forward`` (nothing to do
    without one)."""

    def __init__(self, path: Path, forward: Callable[[dict, int], None] | None):
        self.tail, self.send = _Tail(path), forward

    def forward(self) -> None:
        if self.send is None:
            return
        for line in self.tail.lines():
            row = json.loads(line)
            step = row.pop("step")
            self.send(row, step)

    def close(self) -> None:
        self.tail.close()
        self.send = None


def _failures(launch_dir: Path) -> list[dict]:
    """The failure records the ranks left (``rank-<r>.failed``), first failure first."""
    found = []
    for path in launch_dir.glob("rank-*.failed"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written: read on the next poll
    return sorted(found, key=lambda record: record["time"])


def _rank_pids(launch_dir: Path) -> list[int]:
    pids = []
    for path in launch_dir.glob("rank-*.pid"):
        try:
            pids.append(int(path.read_text()))
        except (OSError, ValueError):
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _signal_groups(process: subprocess.Popen, ranks: list[int], sig: int) -> None:
    for group in [process.pid, *ranks]:  # the launcher's group, and each rank's (torchrun: a session per rank)
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop(process: subprocess.Popen, launch_dir: Path) -> None:
    """End the launcher and every rank: SIGTERM to their process groups, SIGKILL to whatever is left after
    :data:`KILL_GRACE_SECONDS`. Returns when none of them runs any more."""
    ranks = _rank_pids(launch_dir)
    if process.poll() is None or any(map(_alive, ranks)):
        _signal_groups(process, ranks, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline and (process.poll() is None or any(map(_alive, ranks))):
            time.sleep(0.1)
        _signal_groups(process, _rank_pids(launch_dir), signal.SIGKILL)
    process.wait()


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def _failure_message(name: str, launch_dir: Path, returncode: int | None, launcher_lines: list[str]) -> str:
    failures = _failures(launch_dir)
    if failures:
        first = failures[0]
        # the others: the same error (a bad input every rank reads), or one that follows from the first
        # (a peer gone in the middle of an all-reduce)
        after = "; ".join(f"rank {f['rank']} failed " + ("the same way" if f["error"] == first["error"] else
                                                        f"after it: {f['error'].splitlines()[0][:200]}")
                          for f in failures[1:])
        return (f"{name}: rank {first['rank']} of the launched processes failed: {first['error']}"
                f"{f' ({after})' if after else ''}; the other ranks were stopped. "
                f"The last lines of its traceback (whole logs: {launch_dir}/rank-*.log):\n{_tail(first['traceback'])}")
    tails = []
    for path in sorted(launch_dir.glob("rank-*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text or "Error" in text:
            tails.append(f"{path.stem}:\n{_tail(text)}")
    detail = "\n".join(tails) or "\n".join(launcher_lines[-TAIL_LINES:])
    return (f"{name}: the launched processes ended with exit code {returncode} and no rank reported an error "
            f"(killed, or failed before starting); logs in {launch_dir}. The last lines:\n{detail}")
