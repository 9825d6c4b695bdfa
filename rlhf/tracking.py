"""MLflow tracking of a campaign, with explicit run ids (MLflow's active run is thread-local, and Prefect
runs tasks in worker threads).

Layout in the MLflow UI: one **experiment per campaign**; in it a ``campaign`` run, under it one run per
iteration (``RLHF-V1``, ...; iteration 0 is ``SFT``), and under each iteration one run per step. Metrics
that show progress across iterations (RM accuracy per level, chosen temperature, max-of-K reward, pool
score, win rates) are logged on the campaign run with ``step=iteration``, so the UI plots RLHF-V1..Vn.

Runs are found again by their tags, so a rerun or a resumed campaign logs into the same runs instead of
piling up new ones: a step already recorded for the same output (tag ``rlhf.key``) is not logged twice, a
step that failed and resumed finishes the run it started, a step rerun for a changed config gets a new run.

Writes go through :class:`Recorder`: one background thread that performs them in submission order, so a
step's bookkeeping (its run, params, metrics, history and artifacts: several SQLite transactions) and an
iteration's (progression metrics, model registry) run while the next step computes instead of adding to
the wall time. The campaign flow flushes it before attaching its report and when anything fails, so when
a campaign run returns every record is in MLflow, and a tracking error fails the run instead of vanishing
(the outputs stay; a rerun records what is missing, since recording checks what a finished run holds).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rlhf.core.artifacts import stable_hash

KIND, CAMPAIGN, ITERATION, STEP = "rlhf.kind", "rlhf.campaign", "rlhf.iteration", "rlhf.step"
KEY = "rlhf.key"  # on a step run: the outputs it records (their manifest keys, hashed)
PARENT = "mlflow.parentRunId"
# Small step outputs worth a look in the UI; models are registered by path, not copied.
ARTIFACT_SUFFIXES = (".json", ".jsonl", ".csv", ".md", ".yaml", ".png", ".html")
ARTIFACT_MAX_BYTES = 20 << 20
log = logging.getLogger("rlhf")


@dataclass(frozen=True)
class Tracking:
    """Where a step logs. ``parent`` is the run the step's own run nests under (the iteration's): its id,
    or the :class:`Recorder`'s future of it, so creating the iteration's run does not hold up the flow
    either (read ``parent_run_id`` on the tracking thread, where FIFO order has resolved it already)."""

    uri: str
    experiment_id: str
    campaign: str
    parent: str | Future
    iteration: int

    @property
    def parent_run_id(self) -> str:
        if isinstance(self.parent, str):
            return self.parent
        try:
            return self.parent.result()
        except Exception as err:
            raise TrackingError(f"the MLflow run of iteration {self.iteration} could not be created "
                                f"({type(err).__name__}: {err}); the step outputs are intact: fix the tracking "
                                "store and rerun the campaign to record them") from err


def tracking_uri(uri: str | None, campaign_root: Path) -> str:
    """The configured URI, or an absolute SQLite file under the campaign root (MLflow's own default is
    relative to the current directory)."""
    return uri or f"sqlite:///{(campaign_root / 'mlflow.db').resolve()}"


def find_experiment(uri: str, name: str) -> str | None:
    """The id of the experiment ``name``, or None if there is none (nothing is created)."""
    found = _client(uri).get_experiment_by_name(name)
    return found.experiment_id if found is not None else None


def experiment_id(uri: str, name: str, artifact_root: Path | None) -> str:
    """The id of the experiment ``name``, created (artifacts under ``artifact_root/name``) if missing."""
    found = find_experiment(uri, name)
    if found is not None:
        return found
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return _client(uri).create_experiment(name, artifact_location=location)


def find_or_create_run(uri: str, experiment: str, name: str, tags: dict[str, str]) -> str:
    """The run carrying exactly these tags (the newest), or a new one; set RUNNING either way."""
    client = _client(uri)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment], filter_string=query, max_results=1, order_by=["start_time DESC"])
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    return client.create_run(experiment, run_name=name, tags=tags).info.run_id


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def iteration_run(uri: str, experiment: str, campaign: str, campaign_run_id: str, iteration: int) -> str:
    name = "SFT" if iteration == 0 else f"RLHF-V{iteration}"
    return find_or_create_run(uri, experiment, name, {KIND: "iteration", CAMPAIGN: campaign, ITERATION: str(iteration),
                                                       PARENT: campaign_run_id})


class TrackingError(RuntimeError):
    """Writing to MLflow failed (the step outputs are fine; rerun the campaign to record them)."""


class Recorder:
    """Performs tracking writes on one background thread, in the order they were submitted.

    ``submit(fn, *args)`` returns at once, with a future of ``fn``'s result; ``flush()`` waits until
    everything submitted so far is done and raises :class:`TrackingError` for the first write that failed
    since the last flush."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._errors: list[tuple[str, BaseException]] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="rlhf-tracking", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._queue.put((fn, args, kwargs, done))
        return done

    def _work(self) -> None:
        while True:
            fn, args, kwargs, done = self._queue.get()
            try:
                done.set_result(fn(*args, **kwargs))
            except Exception as err:  # kept for flush(), which raises it in the flow's thread
                self._errors.append((fn.__name__, err))
                done.set_exception(err)
            finally:
                self._queue.task_done()

    def flush(self, raise_errors: bool = True) -> None:
        self._queue.join()
        errors, self._errors = self._errors, []
        for name, err in errors:
            log.warning("tracking: %s failed: %s: %s", name, type(err).__name__, err)
        if errors and raise_errors:
            name, err = errors[0]
            raise TrackingError(f"writing to MLflow failed in {name} ({type(err).__name__}: {err}); the step "
                                "outputs are intact: fix the tracking store and rerun the campaign to record "
                                "them") from err


RECORDER = Recorder()


@contextmanager
def flushed(on_failure: Callable[[BaseException], None] | None = None) -> Iterator[None]:
    """Flush the recorder when the block ends. If the block fails, its error wins over a tracking error,
    and ``on_failure(error)`` runs after the flush (to end the runs left open); its own failure is only
    logged."""
    try:
        yield
    except BaseException as error:
        RECORDER.flush(raise_errors=False)
        if on_failure is not None:
            try:
                on_failure(error)
            except Exception as err:  # the original error is what the user must see
                log.warning("tracking: could not end the open MLflow runs: %s: %s", type(err).__name__, err)
        raise
    RECORDER.flush()


def _step_tags(tracking: Tracking, step: str) -> dict[str, str]:
    return {KIND: "step", CAMPAIGN: tracking.campaign, ITERATION: str(tracking.iteration), STEP: step,
            PARENT: tracking.parent_run_id}


def _step_runs(tracking: Tracking, step: str) -> list:
    """This step's runs in this iteration, newest first."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in _step_tags(tracking, step).items())
    return _client(tracking.uri).search_runs([tracking.experiment_id], filter_string=query, max_results=20,
                                             order_by=["start_time DESC"])


def _open_attempt(tracking: Tracking, step: str, started: float, runs: list, tags: dict | None = None):
    """The run of an unfinished attempt at this step (a failure, an interruption), or a new one."""
    unfinished = next((r for r in runs if r.info.status != "FINISHED"), None)
    if unfinished is not None:
        return unfinished
    return _client(tracking.uri).create_run(tracking.experiment_id, start_time=int(started * 1000), run_name=step,
                                            tags=_step_tags(tracking, step) | (tags or {}))


def start_step(tracking: Tracking, step: str, started: float) -> None:
    """A RUNNING run for a step that is about to compute (shows in the UI while it does)."""
    run = _open_attempt(tracking, step, started, _step_runs(tracking, step))
    if run.info.status != "RUNNING":
        _client(tracking.uri).update_run(run.info.run_id, status="RUNNING")


def fail_step(tracking: Tracking, step: str, started: float, ended: float) -> None:
    run = _open_attempt(tracking, step, started, _step_runs(tracking, step))
    _client(tracking.uri).set_terminated(run.info.run_id, "FAILED", end_time=int(ended * 1000))


def record_step(tracking: Tracking, step: str, params: dict, outputs: dict[str, dict], started: float,
                ended: float) -> None:
    """A finished step's run: params (the config it ran with), final metrics, the training history of
    each output's ``metrics.jsonl`` and its small files as artifacts; ``outputs`` maps a name to a step
    reference (``{"path", "key", "metrics"}``), metrics prefixed ``<name>/`` when there are several.
    Skipped when a finished run already records these very outputs (a cached rerun). A handful of
    store calls: one search, one run created (or an unfinished attempt's reused), the params, metrics and
    history in as few batches as MLflow allows, the artifacts, the end."""
    from mlflow.entities import Metric, RunTag

    key = stable_hash(sorted(ref["key"] for ref in outputs.values()))[:16]
    runs = _step_runs(tracking, step)
    if any(r.info.status == "FINISHED" and r.data.tags.get(KEY) == key for r in runs):
        return
    client = _client(tracking.uri)
    run = _open_attempt(tracking, step, started, runs, {KEY: key})
    params_ = _new_params(params, run.data.params)
    now, metrics = int(time.time() * 1000), []
    for name, ref in outputs.items():
        prefix = f"{name}/" if len(outputs) > 1 else ""
        metrics += [Metric(f"{prefix}{k}", v, now, 0) for k, v in numeric(ref["metrics"]).items()]
        metrics += _history(Path(ref["path"]) / "metrics.jsonl", f"{prefix}train/", now)
    tags = [RunTag(KEY, key)] if run.data.tags.get(KEY) != key else []
    # MLflow's limits per batch: 1000 metrics, 100 params, 100 tags, 1000 entries in all
    while params_ or metrics or tags:
        batch_params, params_ = params_[:100], params_[100:]
        room = 1000 - len(batch_params) - len(tags)
        batch_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run.info.run_id, metrics=batch_metrics, params=batch_params, tags=tags)
        tags = []
    for ref in outputs.values():
        log_outputs(tracking.uri, run.info.run_id, Path(ref["path"]))
    client.set_terminated(run.info.run_id, "FINISHED", end_time=int(ended * 1000))


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def numeric(tree: dict, sep: str = "/") -> dict[str, float]:
    """The finite numbers of a nested dict as ``a/b`` keys (booleans and NaN left out)."""
    return {k.replace(".", sep): float(v) for k, v in flatten(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_params(uri: str, run_id: str, params: dict) -> None:
    """Flattened params; MLflow params are write-once, so a rerun only adds missing keys."""
    client = _client(uri)
    new = _new_params(params, client.get_run(run_id).data.params)
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[i:i + 100])


def _new_params(params: dict, have: dict) -> list:
    """``params`` flattened into MLflow params (non-strings as JSON), leaving out the keys a run already has."""
    from mlflow.entities import Param

    return [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(params).items() if k not in have]


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in metrics.items()]
    client = _client(uri)
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_metrics_once(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """``log_metrics``, skipped when this run already holds exactly these values at ``step`` (a rerun of a
    cached iteration would otherwise add a duplicate point to every progression chart). A tag per step
    remembers what was logged."""
    import hashlib

    tag = f"rlhf.logged.step{step}"
    digest = hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()[:16]
    client = _client(uri)
    if client.get_run(run_id).data.tags.get(tag) == digest:
        return
    log_metrics(uri, run_id, metrics, step)
    client.set_tag(run_id, tag, digest)


def _history(history: Path, prefix: str, now: int) -> list:
    """A step's ``metrics.jsonl`` (one line per optimizer step) as MLflow metrics with their steps."""
    if not history.is_file():
        return []
    from mlflow.entities import Metric

    batch = []
    for line in history.read_text().splitlines():
        row = json.loads(line)
        batch += [Metric(f"{prefix}{k}", float(v), now, int(row["step"])) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]
    return batch


def log_outputs(uri: str, run_id: str, out_dir: Path, files: Iterable[Path] | None = None) -> None:
    """The step's small files (manifest, tables, metrics) as artifacts under the step's name."""
    client = _client(uri)
    for file in files if files is not None else sorted(out_dir.iterdir()):
        if file.is_file() and file.suffix in ARTIFACT_SUFFIXES and file.stat().st_size <= ARTIFACT_MAX_BYTES:
            client.log_artifact(run_id, str(file), out_dir.name)


def log_dir(uri: str, run_id: str, directory: Path, artifact_path: str) -> None:
    """A whole directory (the campaign report with its plots) as artifacts under ``artifact_path``."""
    _client(uri).log_artifacts(run_id, str(directory), artifact_path)


def end_unfinished_runs(uri: str, experiment: str, campaign: str, status: str) -> int:
    """End every RUNNING run of ``campaign`` (campaign, iteration and step runs) with ``status``
    (FAILED or KILLED): what a run that failed, was interrupted or was killed left open. Called with the
    campaign's lock held, so no other run of it is live. Returns how many were ended."""
    client = _client(uri)
    open_runs = client.search_runs([experiment], filter_string=f"tags.`{CAMPAIGN}` = '{campaign}' and "
                                   "attributes.status = 'RUNNING'", max_results=1000)
    for run in open_runs:
        client.set_terminated(run.info.run_id, status)
    return len(open_runs)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status)


def register(uri: str, name: str, source: Path, run_id: str, iteration: int) -> str:
    """Register ``source`` (a model directory, by absolute path) as a version of ``name``, aliased
    ``RLHF-V<n>`` and ``current``, and tagged ``latest=true`` (the tag moves off older versions).
    Idempotent: the same source registered again returns its existing version."""
    client = _client(uri)
    label = "SFT" if iteration == 0 else f"RLHF-V{iteration}"
    source_uri = source.resolve().as_uri()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, tags={"rlhf.kind": "model"})
    versions = client.search_model_versions(f"name = '{name}'")
    existing = next((v for v in versions if v.source == source_uri), None)
    version = existing or client.create_model_version(name, source_uri, run_id=run_id,
                                                      tags={"rlhf.iteration": str(iteration), "rlhf.label": label})
    for other in versions:
        if other.version != version.version and other.tags.get("latest") == "true":
            client.delete_model_version_tag(name, other.version, "latest")
    client.set_model_version_tag(name, version.version, "latest", "true")
    client.set_registered_model_alias(name, label, version.version)
    client.set_registered_model_alias(name, "current", version.version)
    return str(version.version)
