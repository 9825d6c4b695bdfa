"""Launch overhead: SFT and RM training on 1 process and on 2 (one thread each), and peak memory per process.

``python -m benchmarks.launch_overhead`` runs the SFT step (``rlhf.core.steps.sft.sft_step``) and the RM
training step (``rlhf.core.steps.reward.rm_train_step``) as the platform calls them, in three layouts of
the same machine:

- **1p-1t**: one process, one thread (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``);
- **2p-1t**: ``launch=ddp`` with 2 processes (``accelerate launch``, DDP over gloo), one thread each. That
  is the launcher's default when ``OMP_NUM_THREADS`` is unset (accelerate then sets it to 1 for its
  ranks), so it is left unset here; every rank's environment and busiest threads are read from ``/proc``
  to check;
- **1p-2t**: one process, two threads: the other way to use two cores (``--layouts`` can drop it).

On a 2-core machine 2p-1t cannot be faster than 1p-1t by more than the second core, and is compared with
1p-2t on the same two cores: the point is the cost of the launcher and of the collective calls, not a
speed-up. Same model (the embedded SmolLM2-135M-Instruct; ``--model tiny`` for a quick check), same data,
same global batch (8 conversations or 4 pairs per optimizer step, in two micro-batches: one per rank on 2
processes, both accumulated on 1, so the batches and their padding are identical), the same steps (2
warm-up + 6 timed), ``--precision`` (default bf16 autocast where the CPU runs it fast, fp32 elsewhere).

Every run is a fresh process (the *driver*: this module with ``--child``) that calls the step runner;
this process only watches it. Every 50 ms it notes when the step's ``metrics.jsonl`` appears in the
step's work dir (the main rank writes it empty just before training starts) and when each optimizer
step's line is appended; every 0.25 s it reads ``/proc`` for the driver's process tree (driver, launcher,
ranks): peak RSS (the kernel's ``VmHWM``; its last reading is at most 0.25 s before a process exits),
threads, ``OMP_NUM_THREADS``, and every second the CPU time of each thread. From that:

- **tokens/s**: real (non-pad) tokens of the timed steps over their wall time; the warm-up steps (with
  the first step's allocations) are excluded. The tokens are counted here, from the batches the step
  trains on (the product's own tokenisation and ``plan_epoch``), not read from ``metrics.jsonl`` (whose
  ``tokens_per_s`` is compared: ``metrics_tokens_per_s_over_measured``).
- **cores**, **tokens per CPU-second**: CPU time (all threads) of the training processes (the ranks, or
  the driver) over the timed steps, read as each step's line appears: how much of the machine the layout
  got, and what each token cost, whatever other processes took.
- **start-up**: from the call of the runner to the start of training (for 2p-1t: the launcher, two more
  interpreters importing torch, the process group, model and data on each rank). **Outside the steps**:
  the runner's wall time minus its training steps' time (start-up, then saving the model and the
  manifest and the processes' exit). **Wall per step**: the runner's wall time / its steps.
- **MFU**: ``est_flops`` of ``benchmarks/sft_throughput.py`` (6 x non-embedding parameters per padded
  token + attention scores + 6 x hidden x vocabulary per LM-head position; the RM has no LM head) over the
  timed steps, against the machine's matmul peak in the run's dtype (:func:`matmul_peak`, on one thread,
  at the start and at the end; the higher is used): one core's peak for 1p-1t, twice that for 2p-1t and
  1p-2t. The 2-thread peak is measured too but only recorded: on an idle machine it is twice the
  1-thread one, on a loaded one its two threads wait for each other and it falls below it.

The layouts take turns, in reverse order every other repetition (A B C, C B A, ...), so drifting load
from other processes falls on all alike; ``--repeats`` repetitions (2), each reported, and their median.
Results go to ``benchmarks/results/launch_overhead.json``; a table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.sft_throughput import est_flops, machine_info, model_facts  # noqa: E402
from rlhf.core.assets import asset_path  # noqa: E402
from rlhf.core.data import load_conversations, tokenize_conversations  # noqa: E402
from rlhf.core.launch import LaunchConfig  # noqa: E402
from rlhf.core.models import ModelConfig, cpu_has_fast_bf16, load_model  # noqa: E402
from rlhf.core.reward.train import RewardConfig, RMDataConfig, encode_pairs  # noqa: E402
from rlhf.core.sft import SFTConfig, target_count  # noqa: E402
from rlhf.core.steps.common import launch_dir_for, work_dir_for  # noqa: E402
from rlhf.core.steps.outputs import METRICS  # noqa: E402
from rlhf.core.steps.reward import _split as split_rm_pairs  # noqa: E402
from rlhf.core.steps.reward import load_rm_pairs, rm_train_step  # noqa: E402
from rlhf.core.steps.sft import DataConfig, sft_step  # noqa: E402
from rlhf.core.training import plan_epoch, steps_per_epoch, total_steps_for  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "launch_overhead.json"
REPO = Path(__file__).resolve().parent.parent
LAYOUTS = {"1p-1t": (1, 1), "2p-1t": (2, 1), "1p-2t": (1, 2)}  # (processes, threads per process)
TASKS = ("sft", "rm")
POLL_SECONDS = 0.05  # metrics.jsonl
PROC_EVERY = 5  # polls between readings of the process tree (0.25 s)
THREADS_EVERY = 20  # polls between readings of every thread's CPU time (1 s)


@dataclass
class BenchConfig:
    model: str = "smollm2"  # smollm2 (embedded SmolLM2-135M-Instruct) | tiny (2 layers, 64 wide: a quick check)
    precisions: list[str] = field(default_factory=lambda: ["bf16" if cpu_has_fast_bf16() else "fp32"])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    # Examples per optimizer step, on 1 process as on 2, in two micro-batches: one per rank on 2 processes,
    # both accumulated on 1. An RM pair is two sequences of ~2.5x an SFT conversation's tokens.
    sft_batch_size: int = 8  # conversations
    rm_batch_size: int = 4  # pairs
    max_length: int = 256
    warmup_steps: int = 2  # optimizer steps run but not timed
    timed_steps: int = 6
    repeats: int = 2
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps


def sft_config(bench: BenchConfig) -> SFTConfig:
    """The SFT step's training config: the Llama 2 defaults of TrainConfig, the benchmark's sizes."""
    return SFTConfig(max_length=bench.max_length, batch_size=bench.sft_batch_size,
                     micro_batch_size=bench.sft_batch_size // 2, epochs=1, max_steps=bench.total_steps,
                     checkpoint_every=0, seed=bench.seed)


def rm_config(bench: BenchConfig) -> RewardConfig:
    """The RM step's training config: the paper's RM defaults, the benchmark's sizes, no test pairs."""
    return RewardConfig(max_length=bench.max_length, batch_size=bench.rm_batch_size,
                        micro_batch_size=bench.rm_batch_size // 2, epochs=1, max_steps=bench.total_steps,
                        n_test=0, checkpoint_every=0, seed=bench.seed)


def sft_conversations(bench: BenchConfig) -> int:
    return bench.sft_batch_size * bench.total_steps  # one epoch: every conversation once


def rm_data(bench: BenchConfig) -> RMDataConfig:
    """Simulated-rater pairs, one epoch's worth."""
    return RMDataConfig(n_synthetic=bench.rm_batch_size * bench.total_steps, seed=bench.seed)


# --------------------------------------------------------------------------------------------------
# the machine's matmul peak


def matmul_peak(precision: str, threads: int, sizes: tuple[int, ...] = (1024, 2048), trials: int = 5) -> float:
    """GFLOP/s of this machine's matmul: the best of ``trials`` x 3 square ``n x n`` products for each ``n``
    in ``sizes``, in ``precision``'s dtype (bf16: what autocast runs the model's matmuls in), on ``threads``
    threads of this process. The ceiling an MFU is measured against; a shared machine's load lowers it."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        for n in sizes:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            a @ b  # first call: the library picks and prepares its kernel
            for _ in range(trials):
                started = time.perf_counter()
                for _ in range(3):
                    a @ b
                best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - started) / 1e9)
    finally:
        torch.set_num_threads(before)
    return best


def measure_peaks(precisions: list[str]) -> dict[str, dict[str, float]]:
    """``{precision: {"1": GFLOP/s, "2": GFLOP/s}}`` for 1 and 2 threads."""
    peaks = {p: {str(t): matmul_peak(p, t) for t in (1, 2)} for p in precisions}
    print("matmul peak GFLOP/s:", json.dumps({p: {t: round(v, 1) for t, v in d.items()} for p, d in peaks.items()}))
    return peaks


def peak_for(peaks: dict, raw: dict) -> float:
    """The peak a run's MFU is measured against: one core's (1-thread) peak in its precision, times the
    cores its layout uses."""
    return peaks[raw["precision"]]["1"] * raw["processes"] * raw["threads_per_process"]


# --------------------------------------------------------------------------------------------------
# the batches each step trains on, counted here


def _sft_batches(bench: BenchConfig, tokenizer, data: Path):
    """``(stats of a micro-batch, example lengths, config)`` of the SFT step, tokenised as its runner does."""
    cfg = sft_config(bench)
    examples, _ = tokenize_conversations(tokenizer, load_conversations(data), cfg.max_length, cfg.loss_mode,
                                         cfg.overlong)

    def stats(indices: list[int]) -> dict:
        lengths = [len(examples[i][0]) for i in indices]
        return {"rows": len(indices), "width": max(lengths), "real_tokens": sum(lengths),
                "head_positions": sum(target_count(examples[i]) for i in indices)}  # LM head on targets only

    return stats, [len(e[0]) for e in examples], cfg


def _rm_batches(bench: BenchConfig, tokenizer):
    """The same for the RM step's pairs, encoded as its runner does: a pair is two rows (chosen, rejected)
    and there is no LM head."""
    cfg = rm_config(bench)
    pairs, _ = load_rm_pairs(rm_data(bench))
    train_pairs, _ = split_rm_pairs(pairs, cfg)
    examples, _ = encode_pairs(tokenizer, train_pairs, cfg.max_length, cfg.margin)

    def stats(indices: list[int]) -> dict:
        rows = [examples[i][0] for i in indices] + [examples[i][1] for i in indices]
        return {"rows": len(rows), "width": max(len(r) for r in rows), "real_tokens": sum(len(r) for r in rows),
                "head_positions": 0, "pairs": len(indices)}

    return stats, [max(len(e[0]), len(e[1])) for e in examples], cfg


def step_batches(task: str, bench: BenchConfig, tokenizer, data: Path) -> list[list[dict]]:
    """Per optimizer step, its micro-batches (``rows``, ``width``, ``real_tokens``, ``padded_tokens``,
    ``head_positions``), as ``train()`` forms them: the same on 1 and on 2 processes (a rank takes
    every second micro-batch)."""
    stats, lengths, cfg = _sft_batches(bench, tokenizer, data) if task == "sft" else _rm_batches(bench, tokenizer)
    per_epoch, total = steps_per_epoch(len(lengths), cfg), total_steps_for(len(lengths), cfg)
    steps = []
    for step in range(total):
        micro = plan_epoch(lengths, cfg, step // per_epoch)[step % per_epoch]
        steps.append([{**(s := stats(m)), "padded_tokens": s["rows"] * s["width"]} for m in micro])
    return steps


# --------------------------------------------------------------------------------------------------
# one run: the driver (a child process) and what this process sees of it


def child(spec_path: Path) -> None:
    """The driver: call the step runner once as the platform does; record when it was called and returned."""
    spec = json.loads(spec_path.read_text())
    bench = BenchConfig(**spec["bench"])
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s")
    logging.getLogger("rlhf").setLevel(logging.INFO)
    processes, threads = LAYOUTS[spec["layout"]]
    if processes == 1:
        torch.set_num_threads(threads)  # OMP_NUM_THREADS is set too: the same from the first op on
    model_cfg = ModelConfig(name_or_path=bench.model, precision=spec["precision"])
    launch = LaunchConfig(name="ddp", num_processes=processes) if processes > 1 else LaunchConfig()
    called = time.monotonic()
    if spec["task"] == "sft":
        manifest = sft_step(model_cfg, DataConfig(path=spec["data"], eval_size=0), sft_config(bench), spec["out_dir"],
                            launch=launch)
    else:
        manifest = rm_train_step(model_cfg, rm_data(bench), rm_config(bench), spec["out_dir"], name="bench",
                                 launch=launch)
    returned = time.monotonic()
    Path(spec["result"]).write_text(json.dumps({
        "called": called, "returned": returned, "driver_torch_threads": torch.get_num_threads(),
        "world_size": manifest["world_size"], "manifest_wall_seconds": manifest["metrics"]["wall_seconds"]}))


class Watch:
    """What this process sees of one run while it lasts (polled; time.monotonic is system-wide on Linux,
    so its readings compare with the driver's): when the step's ``metrics.jsonl`` appears (``ready``) and
    when each of its lines does (``line_times``), and the driver's process tree in ``/proc``."""

    def __init__(self, driver_pid: int, out_dir: Path):
        self.driver, self.launch_dir = driver_pid, launch_dir_for(out_dir)
        self.metrics = work_dir_for(out_dir) / METRICS
        self.ready: float | None = None
        self.line_times: list[float] = []
        self.ready_cpu: float | None = None  # CPU seconds of the training processes at those moments
        self.line_cpu: list[float] = []
        self.procs: dict[int, dict] = {}
        self.ranks: dict[int, int] = {}  # pid -> rank, from the rank-<r>.pid files of the launch dir
        self._size, self._polls = -1, 0

    def poll(self) -> None:
        now = time.monotonic()
        self._metrics(now)
        if self._polls % PROC_EVERY == 0:
            self._tree(threads=self._polls % THREADS_EVERY == 0)
        self._polls += 1

    def _metrics(self, now: float) -> None:
        try:
            size = self.metrics.stat().st_size
            if size != self._size:
                lines = self.metrics.read_text().count("\n")  # whole lines only
                self._size = size
            else:
                lines = len(self.line_times)
        except FileNotFoundError:  # not yet, or removed with the work dir after the step
            return
        if self.ready is None:
            self.ready, self.ready_cpu = now, self._training_cpu()
        if lines > len(self.line_times):
            cpu = self._training_cpu()
            self.line_cpu += [cpu] * (lines - len(self.line_times))
            self.line_times += [now] * (lines - len(self.line_times))

    def _training_cpu(self) -> float:
        """CPU seconds (user + system, all threads) so far of the processes that train: the ranks (known
        from their pid files seconds before training starts), else the driver."""
        ticks, total = os.sysconf("SC_CLK_TCK"), 0.0
        for pid in self.ranks or [self.driver]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def _tree(self, threads: bool) -> None:
        parents = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, todo = [], [self.driver]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += [child for child, parent in parents.items() if parent == pid]
        for path in self.launch_dir.glob("rank-*.pid") if self.launch_dir.is_dir() else []:
            try:
                self.ranks[int(path.read_text())] = int(path.stem.removeprefix("rank-"))
            except (OSError, ValueError):
                continue
        for pid in tree:
            self._sample(pid, threads)

    def _sample(self, pid: int, threads: bool) -> None:
        base = Path(f"/proc/{pid}")
        try:
            status = dict(line.split(":", 1) for line in (base / "status").read_text().splitlines() if ":" in line)
            command = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = dict(item.split("=", 1) for item in (base / "environ").read_bytes().decode(errors="replace")
                           .split("\0") if "=" in item)
            now = time.monotonic()
            record = self.procs.setdefault(pid, {"pid": pid, "peak_rss_kib": 0, "max_threads": 0, "thread_cpu": {},
                                                 "first_seen": now})
            record.update(command=command[:300], omp_num_threads=environ.get("OMP_NUM_THREADS"), last_seen=now)
            record["peak_rss_kib"] = max(record["peak_rss_kib"], int(status["VmHWM"].split()[0]))
            record["max_threads"] = max(record["max_threads"], int(status["Threads"]))
            if threads:
                record["thread_cpu"] = _thread_cpu(base)
        except (OSError, KeyError, ValueError, IndexError):  # exited, or a kernel thread without VmHWM
            return

    def processes(self) -> list[dict]:
        """Every process of the run with its role (driver, launcher, rank r), peak RSS and threads."""
        out = []
        for pid, record in self.procs.items():
            role = ("driver" if pid == self.driver else f"rank {self.ranks[pid]}" if pid in self.ranks
                    else "launcher" if "--launcher" in record.get("command", "") else "other")
            cpu = record["thread_cpu"]
            total = sum(cpu.values()) or 1.0
            out.append({"role": role, "pid": pid, "peak_rss_mib": round(record["peak_rss_kib"] / 1024, 1),
                        "max_threads": record["max_threads"], "omp_num_threads": record.get("omp_num_threads"),
                        "threads_over_10pct_of_cpu": sum(1 for v in cpu.values() if v >= 0.1 * total),
                        "busiest_threads_cpu_s": dict(sorted(cpu.items(), key=lambda kv: -kv[1])[:4]),
                        "first_seen": record["first_seen"], "last_seen": record.get("last_seen"),
                        "command": record.get("command", "")})
        return sorted(out, key=lambda p: p["role"])


def _thread_cpu(base: Path) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of a process, keyed ``<tid>:<name>``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in (base / "task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on: utime is the 14th
        out[f"{task.name}:{stat[stat.index('(') + 1:stat.rindex(')')]}"] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _stop(driver: subprocess.Popen) -> None:
    """End the driver's session (the launcher follows it: it gets SIGTERM when its parent dies, and stops
    its ranks)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(driver.pid, sig)
        except ProcessLookupError:
            return
        try:
            driver.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_once(task: str, layout: str, precision: str, repeat: int, bench: BenchConfig, root: Path,
             data: Path) -> dict:
    """Start a driver for one step in ``layout``, watch it to the end; the raw timings and processes."""
    processes, threads = LAYOUTS[layout]
    run_dir = root / f"{task}-{precision}-{layout}-r{repeat}"
    run_dir.mkdir()
    spec = {"task": task, "layout": layout, "precision": precision, "bench": asdict(bench), "data": str(data),
            "out_dir": str(run_dir / "out"), "result": str(run_dir / "result.json")}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if processes == 1:
        env["OMP_NUM_THREADS"] = str(threads)  # 2p-1t: unset, the launcher's default decides (checked below)
    log_path = run_dir / "driver.log"
    print(f"[{task} {precision} {layout} #{repeat + 1}] starting", flush=True)
    spawned = time.monotonic()
    with log_path.open("wb") as log_file:
        command = [sys.executable, "-m", "benchmarks.launch_overhead", "--child", str(run_dir / "spec.json")]
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        watch = Watch(driver.pid, run_dir / "out")
        try:
            while driver.poll() is None:
                watch.poll()
                time.sleep(POLL_SECONDS)
        except BaseException:
            _stop(driver)
            raise
    if driver.returncode:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{task} {layout}: the driver exited with {driver.returncode}; the end of its log:\n{tail}")
    result = json.loads((run_dir / "result.json").read_text())
    history = [json.loads(line) for line in (run_dir / "out" / METRICS).read_text().splitlines()]
    shutil.rmtree(run_dir)  # the trained model: ~0.5 GB per run for SmolLM2
    return {"task": task, "layout": layout, "precision": precision, "repeat": repeat, "processes": processes,
            "threads_per_process": threads, "spawned": spawned, **result,
            "ready": watch.ready, "line_times": watch.line_times, "ready_cpu": watch.ready_cpu,
            "line_cpu": watch.line_cpu,
            "product_tokens_per_s": [h["tokens_per_s"] for h in history],
            "process_list": watch.processes()}


# --------------------------------------------------------------------------------------------------
# figures


def figures(raw: dict, batches: list[list[dict]], facts: dict, peak_gflops: float, bench: BenchConfig) -> dict:
    """One run's figures from its raw timings and the batches it trained on."""
    raw = dict(raw)
    ends, ready, cpu = raw.pop("line_times"), raw.pop("ready"), [raw.pop("ready_cpu"), *raw.pop("line_cpu")]
    if ready is None or len(ends) != len(batches):
        raise RuntimeError(f"{raw['task']} {raw['layout']}: saw {len(ends)} step lines, expected {len(batches)}")
    step_seconds = [end - start for start, end in zip([ready, *ends[:-1]], ends)]
    tokens = [sum(mb["real_tokens"] for mb in step) for step in batches]
    timed = slice(bench.warmup_steps, None)
    timed_s = max(sum(step_seconds[timed]), POLL_SECONDS)  # at least one poll: a tiny model's steps are shorter
    timed_cpu = max(cpu[-1] - cpu[bench.warmup_steps], 1e-9)  # CPU time is counted in 10 ms ticks
    flops = sum(est_flops(mb, facts) for step in batches[timed] for mb in step)
    wall, train_s = raw["returned"] - raw["called"], ends[-1] - ready
    product = [p / (t / s) for p, t, s in  # (two lines seen in one poll: a tiny model's step, skipped)
               zip(raw.pop("product_tokens_per_s")[timed], tokens[timed], step_seconds[timed]) if s > 0]
    processes = [{**{k: v for k, v in p.items() if k not in ("first_seen", "last_seen")},
                  # when this process saw it first and last, counted from the runner's call
                  "seen_s": [round(p["first_seen"] - raw["called"], 2), round(p["last_seen"] - raw["called"], 2)]}
                 for p in raw["process_list"]]
    out = {
        **{k: raw[k] for k in ("task", "layout", "precision", "repeat", "processes", "threads_per_process")},
        "tokens_per_s": sum(tokens[timed]) / timed_s,
        "tokens_per_cpu_s": sum(tokens[timed]) / timed_cpu,
        "cpu_cores_used": timed_cpu / timed_s,
        "est_gflop_per_s": flops / timed_s / 1e9,
        "mfu": flops / timed_s / 1e9 / peak_gflops,
        "peak_gflop_per_s_used": round(peak_gflops, 1),
        "median_step_s": statistics.median(step_seconds[timed]),
        "startup_s": ready - raw["called"],
        "outside_steps_s": wall - train_s,
        "after_last_step_s": raw["returned"] - ends[-1],
        "warmup_steps_s": sum(step_seconds[:bench.warmup_steps]),
        "timed_steps_s": timed_s,
        "step_wall_s": wall,
        "wall_per_step_s": wall / len(batches),
        "end_to_end_tokens_per_s": sum(tokens) / wall,
        "driver_start_s": raw["called"] - raw["spawned"],
        "step_seconds": [round(s, 3) for s in step_seconds],
        "metrics_tokens_per_s_over_measured": round(statistics.median(product), 3) if product else None,
        "world_size": raw["world_size"], "manifest_wall_seconds": raw["manifest_wall_seconds"],
        "driver_torch_threads": raw["driver_torch_threads"],
        "processes": processes,
    }
    out["last_step_end_s"] = ends[-1] - raw["called"]  # the timeline of the run, from the runner's call
    ranks = [p["seen_s"] for p in processes if p["role"].startswith("rank")]
    launcher = [p["seen_s"] for p in processes if p["role"] == "launcher"]
    if ranks and launcher:
        out.update(ranks_first_seen_s=min(r[0] for r in ranks), ranks_last_seen_s=max(r[1] for r in ranks),
                   launcher_last_seen_s=launcher[0][1])
    if raw["task"] == "rm":
        out["pairs_per_s"] = sum(mb["pairs"] for step in batches[timed] for mb in step) / timed_s
    trainers = [p for p in out["processes"] if p["role"].startswith("rank")] or \
               [p for p in out["processes"] if p["role"] == "driver"]
    out["trainer_peak_rss_mib"] = [p["peak_rss_mib"] for p in trainers]
    out["trainer_omp_num_threads"] = [p["omp_num_threads"] for p in trainers]
    out["trainer_busy_threads"] = [p["threads_over_10pct_of_cpu"] for p in trainers]
    out["other_processes_peak_rss_mib"] = {p["role"]: p["peak_rss_mib"] for p in out["processes"] if p not in trainers}
    return out


MEDIAN_KEYS = ("tokens_per_s", "tokens_per_cpu_s", "cpu_cores_used", "est_gflop_per_s", "mfu", "median_step_s",
               "startup_s", "outside_steps_s", "after_last_step_s", "warmup_steps_s", "wall_per_step_s",
               "end_to_end_tokens_per_s", "driver_start_s", "pairs_per_s", "metrics_tokens_per_s_over_measured",
               "last_step_end_s", "ranks_first_seen_s", "ranks_last_seen_s", "launcher_last_seen_s", "step_wall_s")


def summarise(runs: list[dict]) -> dict:
    """Per task, precision and layout: the median over repetitions, and each repetition's tokens/s and
    time outside the steps."""
    summary: dict = {}
    for run in runs:
        group = summary.setdefault(run["task"], {}).setdefault(run["precision"], {}).setdefault(run["layout"], [])
        group.append(run)
    for task in summary.values():
        for layouts in task.values():
            for layout, group in layouts.items():
                layouts[layout] = {
                    **{k: statistics.median(r[k] for r in group) for k in MEDIAN_KEYS
                       if all(r.get(k) is not None for r in group)},
                    "tokens_per_s_each": [round(r["tokens_per_s"], 1) for r in group],
                    "outside_steps_s_each": [round(r["outside_steps_s"], 1) for r in group],
                    "trainer_peak_rss_mib": [max(r["trainer_peak_rss_mib"][i] for r in group)
                                             for i in range(len(group[0]["trainer_peak_rss_mib"]))],
                    "other_processes_peak_rss_mib": {k: max(r["other_processes_peak_rss_mib"].get(k, 0) for r in group)
                                                     for k in group[0]["other_processes_peak_rss_mib"]},
                    "trainer_omp_num_threads": group[0]["trainer_omp_num_threads"],
                    "trainer_busy_threads": [r["trainer_busy_threads"] for r in group],
                }
    return summary


def print_summary(report: dict) -> None:
    m, c = report["machine"], report["config"]
    print()
    print(f"Launch overhead: {c['model']} on {m['cpu_model']} ({m['usable_cores']} cores), torch {m['torch']}, "
          f"accelerate {m['accelerate']}; load average {m['load_average_start'][0]:.2f} -> "
          f"{m['load_average_end'][0]:.2f}")
    print(f"batch {c['sft_batch_size']} conversations / {c['rm_batch_size']} pairs (two micro-batches), max length "
          f"{c['max_length']}, {c['warmup_steps']} warm-up + {c['timed_steps']} timed steps, median of "
          f"{c['repeats']}; commit {report['commit']}; matmul peak "
          + ", ".join(f"{p}: {v['1']:.0f} GFLOP/s per core ({v['2']:.0f} measured on 2 threads)"
                      for p, v in report["matmul_peak_gflop_per_s"].items()))
    header = (f"{'':7}{'tokens/s':>9}{'(each)':>12}{'tok/CPU-s':>10}{'cores':>6}{'MFU':>7}{'step':>8}{'start-up':>9}"
              f"{'outside':>9}{'wall/step':>10}  peak RSS MiB (others)")
    for task, precisions in report["summary"].items():
        for precision, layouts in precisions.items():
            print(f"\n{task.upper()}, {precision}")
            print(header)
            for layout, r in layouts.items():
                each = "/".join(f"{v:.0f}" for v in r["tokens_per_s_each"])
                rss = " + ".join(f"{v:.0f}" for v in r["trainer_peak_rss_mib"])
                others = ", ".join(f"{k} {v:.0f}" for k, v in r["other_processes_peak_rss_mib"].items())
                print(f"{layout:7}{r['tokens_per_s']:9.1f}{each:>12}{r['tokens_per_cpu_s']:10.1f}"
                      f"{r['cpu_cores_used']:6.2f}{r['mfu']:7.1%}{r['median_step_s']:7.2f}s{r['startup_s']:8.1f}s"
                      f"{r['outside_steps_s']:8.1f}s{r['wall_per_step_s']:9.2f}s  {rss}"
                      + (f" ({others})" if others else ""))
    print(f"\nwrote {report['output']} ({report['duration_s']:.0f} s)")


def _commit() -> str | None:
    """The repository's HEAD, with ``+edits`` when tracked files differ from it (what the runs ran)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        edited = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+edits" if edited else "")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default=BenchConfig.model)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=BenchConfig().precisions,
                        help="one or both (default: bf16 autocast where the CPU runs it fast, else fp32)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--warmup-steps", type=int, default=BenchConfig.warmup_steps)
    parser.add_argument("--timed-steps", type=int, default=BenchConfig.timed_steps)
    parser.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the driver of one run (internal)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    bench = BenchConfig(model=args.model, precisions=args.precision, tasks=args.tasks, layouts=args.layouts,
                        warmup_steps=args.warmup_steps, timed_steps=args.timed_steps, repeats=args.repeats)
    began, load_start, commit_start = time.perf_counter(), os.getloadavg(), _commit()

    # 1. The ceiling: matmul peaks of this machine, 1 and 2 threads, before anything else runs (and
    # again at the end: the higher is used, the one less disturbed by other processes).
    peaks_start = measure_peaks(bench.precisions)

    # 2. The model's facts and the batches every step will train on (this also builds SmolLM2's
    # safetensors cache on a first run, so no run pays for it).
    model, tokenizer = load_model(ModelConfig(name_or_path=bench.model))
    facts = {**model_facts(model), "name": bench.model}
    del model
    root = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    try:
        data = root / "sft.jsonl"
        lines = asset_path("sft_demo.jsonl").read_text().splitlines(keepends=True)
        data.write_text("".join(lines[:sft_conversations(bench)]))
        batches = {task: step_batches(task, bench, tokenizer, data) for task in bench.tasks}

        # 3. The runs: layouts alternate, their order reversed every other repetition.
        raws, watcher_cpu = [], time.process_time()
        for repeat in range(bench.repeats):
            order = bench.layouts if repeat % 2 == 0 else bench.layouts[::-1]
            for task in bench.tasks:
                for precision in bench.precisions:
                    for layout in order:
                        raws.append(run_once(task, layout, precision, repeat, bench, root, data))
                        run = figures(raws[-1], batches[task], facts, peak_for(peaks_start, raws[-1]), bench)
                        print(f"  {run['tokens_per_s']:.1f} tokens/s ({run['cpu_cores_used']:.2f} cores busy), "
                              f"start-up {run['startup_s']:.1f} s, outside the steps {run['outside_steps_s']:.1f} s, "
                              f"peak RSS {run['trainer_peak_rss_mib']} MiB", flush=True)
        watcher_cpu = time.process_time() - watcher_cpu
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peaks_end = measure_peaks(bench.precisions)
    peaks = {p: {t: max(peaks_start[p][t], peaks_end[p][t]) for t in peaks_start[p]} for p in peaks_start}
    runs = [figures(raw, batches[raw["task"]], facts, peak_for(peaks, raw), bench) for raw in raws]

    machine = machine_info()
    machine.update(load_average_start=[round(x, 2) for x in load_start],
                   load_average_end=[round(x, 2) for x in os.getloadavg()])
    report = {
        "benchmark": "launch_overhead",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks.launch_overhead " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "commit": commit_start,
        "commit_at_end": _commit(),  # other than "commit": the code changed while the runs ran
        "matmul_peak_gflop_per_s": {p: {t: round(v, 1) for t, v in d.items()} for p, d in peaks.items()},
        "matmul_peak_at_start_and_end": {p: {t: [round(peaks_start[p][t], 1), round(peaks_end[p][t], 1)]
                                             for t in peaks_start[p]} for p in peaks_start},
        "config": {**asdict(bench), "total_steps": bench.total_steps,
                   "data": {"sft": f"first {sft_conversations(bench)} conversations of sft_demo.jsonl",
                            "rm": f"{rm_data(bench).n_synthetic} simulated-rater pairs (make_demo_pairs, seed "
                                  f"{bench.seed}), margin small, no test pairs"},
                   "layouts": {k: {"processes": p, "threads_per_process": t} for k, (p, t) in LAYOUTS.items()
                               if k in bench.layouts}},
        "model": facts,
        "batches": {task: {"real_tokens_per_step": [sum(mb["real_tokens"] for mb in s) for s in steps],
                           "padded_tokens_per_step": [sum(mb["padded_tokens"] for mb in s) for s in steps]}
                    for task, steps in batches.items()},
        "summary": summarise(runs),
        "runs": runs,
        "notes": [
            "tokens_per_s: real tokens of the timed steps / their wall time, from the times this process saw "
            "each step's line appear in metrics.jsonl (polled every 50 ms).",
            "startup_s: from the runner's call to metrics.jsonl's creation (just before training); "
            "outside_steps_s: the runner's wall time minus the time of all its training steps.",
            "mfu: est_flops (benchmarks/sft_throughput.py) over the timed steps / the measured 1-thread matmul "
            "peak in the run's dtype x the cores the layout uses (1 for 1p-1t, 2 for 2p-1t and 1p-2t).",
            "Peak RSS: VmHWM from /proc, read every 0.25 s (the last reading can miss the final 0.25 s of a "
            "process).",
            "metrics_tokens_per_s_over_measured: the step's own tokens_per_s (metrics.jsonl) over the one "
            "measured here, median over the timed steps: ~1 (it was ~2 on 2 processes before train() stopped "
            "multiplying the token count it had already summed over the ranks by the number of ranks).",
        ],
        "watcher_cpu_s": round(watcher_cpu, 1),  # this process's CPU time while the runs ran
        "duration_s": round(time.perf_counter() - began, 1),
        "output": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    return report


if __name__ == "__main__":
    main()
