"""MLflow tracking of a campaign, with explicit run ids (MLflow's active run is thread-local, and Prefect
runs tasks in worker threads).

Layout in the MLflow UI: one **experiment per campaign**; in it a ``campaign`` run, under it one run per
iteration (``RLHF-V1``, ...; iteration 0 is ``SFT``), and under each iteration one run per step. Metrics
that show progress across iterations (RM accuracy per level, chosen temperature, max-of-K reward, pool
score, win rates) are logged on the campaign run with ``step=iteration``, so the UI plots RLHF-V1..Vn.

Runs are found again by their tags, so a rerun or a resumed campaign logs into the same runs instead of
piling up new ones: a step already recorded for the same output (tag ``rlhf.key``) is not logged twice, a
step that failed and resumed finishes the run it started, a step rerun for a changed config gets a new run.

The store may be the default SQLite file under ``campaign.root`` or an MLflow server (``tracking.uri=http://...``).
On a server, experiments are created without a client-side artifact location (so artifacts go through the
server to its store: ``mlflow-artifacts:``, S3, ...), and a model is registered from a copy logged as
artifacts of its iteration's run (a server refuses client-local paths as model-version sources). Locally,
models are registered by path (no copies), and the SQLite store is relocatable: moved or copied with its
campaign root, its paths are rewritten the next time it is opened (:func:`relocate`).

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
import re
import sqlite3
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rlhf import storage
from rlhf.core.artifacts import stable_hash
from rlhf.core.errors import RLHFError

KIND, CAMPAIGN, ITERATION, STEP = "rlhf.kind", "rlhf.campaign", "rlhf.iteration", "rlhf.step"
KEY = "rlhf.key"  # on a step run: the outputs it records (their manifest keys, hashed)
PARENT = "mlflow.parentRunId"
CONFIG = "rlhf.config"  # on an iteration run: a hash of the effective config it ran with (its params)
ROOT = "rlhf.root"  # on an experiment of the default SQLite store: the campaign root it was created under
# MLflow 3's UI opens an experiment without this tag on its GenAI "Traces" page; ours are training runs.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
HTTP = ("http://", "https://")  # a tracking server we can link to and ask for /health
REMOTE = (*HTTP, "databricks")
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
    relative to the current directory), relocated first if the root was moved or copied."""
    if uri:
        return uri
    root = Path(campaign_root).resolve()
    if (root / "mlflow.db").is_file():
        relocate(root / "mlflow.db", root)
    return f"sqlite:///{root / 'mlflow.db'}"


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE)


# Where the default SQLite store keeps absolute paths: artifact locations and model-version sources.
PATH_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
                ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


def relocate(db: Path, root: Path) -> int:
    """Rewrite the absolute paths in the default SQLite store ``db`` after its campaign root moved: every
    path under the root it was created in (the experiments' ``rlhf.root`` tag) now points under ``root``,
    so a copied campaign root opens with its artifacts and registered models. Returns the rows changed."""
    changed = 0
    with sqlite3.connect(db) as con:
        try:
            olds = {v for (v,) in con.execute("select value from experiment_tags where key = ?", (ROOT,))}
        except sqlite3.OperationalError:  # not (yet) an MLflow store
            return 0
        tables = {name for (name,) in con.execute("select name from sqlite_master where type = 'table'")}
        for old in olds - {str(root)}:
            for before, after in ((Path(old).as_uri() + "/", root.as_uri() + "/"), (old + "/", f"{root}/")):
                for table, column in PATH_COLUMNS:
                    if table in tables:
                        changed += con.execute(
                            f"update {table} set {column} = ? || substr({column}, ?) where substr({column}, 1, ?) = ?",
                            (after, len(before) + 1, len(before), before)).rowcount
            con.execute("update experiment_tags set value = ? where key = ? and value = ?", (str(root), ROOT, old))
    if changed:
        log.info("MLflow: the store %s was moved from %s; %d stored path(s) now point under %s", db,
                 ", ".join(sorted(olds - {str(root)})), changed, root)
    return changed


def run_link(uri: str, experiment: str, run_id: str) -> str:
    """Where a run opens in the MLflow UI: on the server itself, or (a local store) in `rlhf ui`'s default."""
    base = uri.rstrip("/") if uri.startswith(HTTP) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def check_store(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, with what to change, when the tracking server or database cannot be reached (before any
    step runs; MLflow's client would otherwise retry for minutes at the first write)."""
    if uri.startswith(("postgresql", "mysql", "mssql")):
        _check_database(uri, timeout)
        return
    if not uri.startswith(HTTP):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(f"the MLflow server at tracking.uri={uri} does not answer ({err}): start it, or fix "
                            "tracking.uri (null = a SQLite store under campaign.root)") from err


def _check_database(uri: str, timeout: float) -> None:
    """A database tracking store (``tracking.uri=postgresql+psycopg2://...``) answers and lets us in."""
    import sqlalchemy

    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", uri)  # no password in the message
    try:
        connect_args = {"connect_timeout": int(max(1, timeout))} if uri.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as err:  # a refused connection, a wrong password, a missing database or driver
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"the MLflow database at tracking.uri={shown} cannot be reached ({first}): start it, fix "
                            "tracking.uri, or point it at an MLflow server (http://...)") from err


def find_experiment(uri: str, name: str) -> str | None:
    """The id of the experiment ``name``, or None if there is none (nothing is created)."""
    found = _client(uri).get_experiment_by_name(name)
    return found.experiment_id if found is not None else None


def experiment_id(uri: str, name: str, artifact_root: Path | str | None) -> str:
    """The id of the experiment ``name``, created if missing: on a server with the server's artifact store
    (unless ``artifact_root`` names one, e.g. an ``s3://`` URL), locally under ``artifact_root/name``."""
    client = _client(uri)
    found = find_experiment(uri, name)
    if found is None:
        tags = dict(EXPERIMENT_TAGS)
        if is_remote(uri):
            location = str(artifact_root).rstrip("/") + f"/{name}" if artifact_root else None
        else:
            location = (Path(artifact_root) / name).resolve().as_uri() if artifact_root else None
        if uri.startswith("sqlite:///") and uri.endswith("/mlflow.db"):
            tags[ROOT] = str(Path(uri.removeprefix("sqlite:///")).parent)
        return client.create_experiment(name, artifact_location=location, tags=tags)
    tags = client.get_experiment(found).tags
    for key, value in EXPERIMENT_TAGS.items():
        if key not in tags:  # an experiment made before the tag was set
            client.set_experiment_tag(found, key, value)
    return found


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


def iteration_run(uri: str, experiment: str, campaign: str, campaign_run_id: str, iteration: int,
                  params: dict | None = None) -> str:
    """The iteration's run, with its effective config as params (so comparing RLHF-V1 with RLHF-V2 in the
    UI shows what differed). Params are write-once in MLflow, so a changed config gets a new run (tagged
    with the config's hash); a rerun or a resume of the same config logs into the same run."""
    name = "SFT" if iteration == 0 else f"RLHF-V{iteration}"
    tags = {KIND: "iteration", CAMPAIGN: campaign, ITERATION: str(iteration), PARENT: campaign_run_id}
    if params is not None:
        tags[CONFIG] = stable_hash(params)[:16]
    run_id = find_or_create_run(uri, experiment, name, tags)
    if params:
        log_params(uri, run_id, params)
    return run_id


class TrackingError(RLHFError, RuntimeError):
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
        _after_failure(on_failure, error)
        raise
    try:
        RECORDER.flush()
    except TrackingError as error:  # a write failed at the very end: the runs it left open are ended too
        _after_failure(on_failure, error)
        raise


def _after_failure(on_failure: Callable[[BaseException], None] | None, error: BaseException) -> None:
    if on_failure is None:
        return
    try:
        on_failure(error)
    except Exception as err:  # the original error is what the user must see
        log.warning("tracking: could not end the open MLflow runs: %s: %s", type(err).__name__, err)


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
    outputs = {name: storage.fetch_ref(ref) for name, ref in outputs.items()}  # on object storage: the local copy
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


def log_file(uri: str, run_id: str, file: Path, artifact_path: str | None = None) -> None:
    _client(uri).log_artifact(run_id, str(file), artifact_path)


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


def register(uri: str, name: str, model: dict, run_id: str, iteration: int) -> str:
    """Register the model of a step reference ``model`` (``{"path", "key", ...}``) as a version of ``name``,
    aliased ``RLHF-V<n>`` and ``current``, and tagged ``latest=true`` (the tag moves off older versions).
    Locally the source is the model directory itself (its URL for a campaign on object storage); on a
    server, a copy logged as artifacts of the run ``run_id`` (``runs:/<run>/models/<name>``), which any
    teammate's client can load through the server. Idempotent: a model already registered (same output
    key, or same source) returns its version."""
    client = _client(uri)
    label = "SFT" if iteration == 0 else f"RLHF-V{iteration}"
    remote = storage.is_url(model["path"])
    path = Path(storage.fetch_ref(model)["path"]).resolve()  # a remote model: this machine's cached copy
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, tags={KIND: "model"})
    versions = client.search_model_versions(f"name = '{name}'")
    local_source = model["path"] if remote else path.as_uri()
    existing = next((v for v in versions if v.tags.get(KEY) == model["key"] or v.source == local_source), None)
    if existing is not None:
        version = existing
    else:
        if is_remote(uri):
            artifact_path = f"models/{name}"
            for file in sorted(path.iterdir()):  # the model's files; not its checkpoints or work folders
                if file.is_file():
                    client.log_artifact(run_id, str(file), artifact_path)
            source = f"runs:/{run_id}/{artifact_path}"
        else:
            source = local_source
        version = client.create_model_version(name, source, run_id=run_id, tags={
            "rlhf.iteration": str(iteration), "rlhf.label": label, KEY: model["key"]})
    for other in versions:
        if other.version != version.version and other.tags.get("latest") == "true":
            client.delete_model_version_tag(name, other.version, "latest")
    client.set_model_version_tag(name, version.version, "latest", "true")
    client.set_registered_model_alias(name, label, version.version)
    client.set_registered_model_alias(name, "current", version.version)
    return str(version.version)
