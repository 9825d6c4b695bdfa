"""MLflow tracking of a campaign, with explicit run ids (MLflow's active run is thread-local, and Prefect
runs tasks in worker threads).

Layout in the MLflow UI: one **experiment per campaign**; in it a ``campaign`` run, under it one run per
iteration (``RLHF-V1``, ...; iteration 0 is ``SFT``), and under each iteration one run per step. Metrics
that show progress across iterations (RM accuracy per level, chosen temperature, max-of-K reward, pool
score, win rates) are logged on the campaign run with ``step=iteration``, so the UI plots RLHF-V1..Vn.

Runs are found again by their tags, so a rerun or a resumed campaign logs into the same runs instead of
piling up new ones: a step that was cached is not logged twice, a step that failed and resumed finishes
the run it started.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

KIND, CAMPAIGN, ITERATION, STEP = "rlhf.kind", "rlhf.campaign", "rlhf.iteration", "rlhf.step"
PARENT = "mlflow.parentRunId"
# Small step outputs worth a look in the UI; models are registered by path, not copied.
ARTIFACT_SUFFIXES = (".json", ".jsonl", ".csv", ".md", ".yaml", ".png", ".html")
ARTIFACT_MAX_BYTES = 20 << 20


@dataclass(frozen=True)
class Tracking:
    """Where a step logs: plain strings, so it crosses threads, processes and Prefect's parameter store."""

    uri: str
    experiment_id: str
    campaign: str
    parent_run_id: str  # the run the step's own run nests under (the iteration's)
    iteration: int

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)


def tracking_uri(uri: str | None, campaign_root: Path) -> str:
    """The configured URI, or an absolute SQLite file under the campaign root (MLflow's own default is
    relative to the current directory)."""
    return uri or f"sqlite:///{(campaign_root / 'mlflow.db').resolve()}"


def experiment_id(uri: str, name: str, artifact_root: Path | None) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


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


def step_run(tracking: Tracking, step: str) -> str:
    return find_or_create_run(tracking.uri, tracking.experiment_id, step,
                              {KIND: "step", CAMPAIGN: tracking.campaign, ITERATION: str(tracking.iteration),
                               STEP: step, PARENT: tracking.parent_run_id})


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
    from mlflow.entities import Param

    client = _client(uri)
    have = client.get_run(run_id).data.params
    new = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
           for k, v in flatten(params).items() if k not in have]
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[i:i + 100])


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


def log_history(uri: str, run_id: str, history: Path, prefix: str = "train/") -> None:
    """A step's ``metrics.jsonl`` (one line per optimizer step) as metric histories."""
    if not history.is_file():
        return
    from mlflow.entities import Metric

    now, batch = int(time.time() * 1000), []
    for line in history.read_text().splitlines():
        row = json.loads(line)
        batch += [Metric(f"{prefix}{k}", float(v), now, int(row["step"])) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]
    client = _client(uri)
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_outputs(uri: str, run_id: str, out_dir: Path, files: Iterable[Path] | None = None) -> None:
    """The step's small files (manifest, tables, metrics) as artifacts under the step's name."""
    client = _client(uri)
    for file in files if files is not None else sorted(out_dir.iterdir()):
        if file.is_file() and file.suffix in ARTIFACT_SUFFIXES and file.stat().st_size <= ARTIFACT_MAX_BYTES:
            client.log_artifact(run_id, str(file), out_dir.name)


def log_dir(uri: str, run_id: str, directory: Path, artifact_path: str) -> None:
    """A whole directory (the campaign report with its plots) as artifacts under ``artifact_path``."""
    _client(uri).log_artifacts(run_id, str(directory), artifact_path)


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
