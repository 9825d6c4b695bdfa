"""Where an iteration's shard tasks run (docs/design.md#fan-out): ``orchestration.task_runner``.

- ``thread`` (default): in the run's own process, one shard at a time. Sharding then only makes the units
  of caching and of resume smaller; the machine's cores are torch's already.
- ``ray`` (prefect-ray): each shard is a Ray task holding ``orchestration.ray.num_cpus`` / ``num_gpus``, on a
  Ray runtime started for the run (``orchestration.ray.address`` empty) or on a cluster (``auto``,
  ``ray://head:10001``). Ray schedules by those resources, so on a GPU cluster ``num_gpus=1`` gives every
  shard a GPU of its own (with ``sampling.backend=vllm``: one engine per GPU).
- ``dask`` (prefect-dask): the same shards on a local cluster of worker processes or a running scheduler.

The shard tasks report to the same Prefect API as the run and read and write the campaign's outputs, so
the workers get the run's Prefect settings (:func:`worker_environment`). A cluster's workers cannot
reach the temporary Prefect server a run starts on 127.0.0.1: a cluster address needs ``PREFECT_API_URL``
set to a server they can reach. Addresses are checked before any step runs (:func:`check_reachable`).
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager, nullcontext
from typing import Iterator

from rlhf.core.errors import ConfigError

from .config import OrchestrationConfig

# What a shard's worker process needs from the run's environment: Prefect's settings (its API, home and
# results), credentials and endpoints of object storage and MLflow, model caches.
PASSED_ON = ("PREFECT_", "RLHF_", "AWS_", "MLFLOW_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_NUM_THREADS")


def worker_environment() -> dict[str, str]:
    """The run's environment variables a worker needs, with the Prefect API this run talks to (set in-process
    by ``rlhf.flows.environment.prefect_api``, so not in ``os.environ``)."""
    from prefect.settings import get_current_settings

    env = {name: value for name, value in os.environ.items() if name.startswith(PASSED_ON)}
    url = get_current_settings().api.url
    if url:
        env["PREFECT_API_URL"] = url
    return env


def _configured_server() -> bool:
    """Whether the user pointed the run at a Prefect server (not the temporary one a run starts)."""
    return bool(os.environ.get("PREFECT_API_URL"))


def check_reachable(orchestration: OrchestrationConfig) -> None:
    """The task runner's address answers, and its workers can reach the run's Prefect API: a clear error
    naming the key before any step runs (Ray Client waits 30 s and leaves the flow run RUNNING; a
    GPU-less cluster keeps a ``num_gpus`` task pending forever -- that one is checked when the runtime is up,
    :func:`check_resources`)."""
    runner = orchestration.task_runner
    if runner == "ray":
        _check_ray(orchestration.ray.address)
        if not orchestration.ray.address:
            _check_local_resources(orchestration.ray)
    elif runner == "dask" and orchestration.dask.address:
        host, port = orchestration.dask.address.split("://", 1)[1].rsplit(":", 1)
        _check_port("orchestration.dask.address", orchestration.dask.address, host, int(port))
    cluster = (runner == "ray" and orchestration.ray.address) or (runner == "dask" and orchestration.dask.address)
    if cluster and not _configured_server():
        key = f"orchestration.{runner}.address"
        raise ConfigError(key, f"the workers of {cluster} report their shards to Prefect, and cannot reach the "
                               "temporary server a run starts on this machine: set PREFECT_API_URL to a Prefect "
                               "server they can reach (docker/README.md), or leave the address empty for a "
                               "runtime on this machine")


def _check_ray(address: str) -> None:
    try:
        import prefect_ray  # noqa: F401
        import ray  # noqa: F401
    except ImportError as err:
        raise ConfigError("orchestration.task_runner", "ray needs prefect-ray: pip install '.[dist]'") from err
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except ConnectionError as err:
            raise ConfigError("orchestration.ray.address", f"'auto': {err}; start one with `ray start --head`, "
                                                           "or leave the address empty for a runtime started "
                                                           "for the run") from err
        if not found:
            raise ConfigError("orchestration.ray.address", "'auto': no Ray cluster runs on this machine; start one "
                                                           "with `ray start --head`, or leave the address empty")
    elif address:
        host, port = address.removeprefix("ray://").rsplit(":", 1)
        _check_port("orchestration.ray.address", address, host, int(port))


def _check_local_resources(ray_cfg) -> None:
    """A shard must fit the runtime started on this machine: Ray would keep a task asking for more pending."""
    import torch

    cpus = ray_cfg.local_cpus or os.cpu_count()
    if ray_cfg.num_cpus > cpus:
        raise ConfigError("orchestration.ray.num_cpus", f"each shard asks for {ray_cfg.num_cpus:g} CPUs; the Ray "
                                                        f"runtime on this machine has {cpus} "
                                                        "(orchestration.ray.local_cpus): lower it")
    if ray_cfg.num_gpus > torch.cuda.device_count():
        raise ConfigError("orchestration.ray.num_gpus", f"each shard asks for {ray_cfg.num_gpus:g} GPUs; this "
                                                        f"machine has {torch.cuda.device_count()}: set it to 0 here, "
                                                        "or run on a GPU cluster (orchestration.ray.address)")


def _check_port(key: str, address: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as err:
        raise ConfigError(key, f"nothing answers at {address} ({err}): start the cluster's head, or fix the "
                               "address") from err


def make_task_runner(orchestration: OrchestrationConfig):
    """The Prefect task runner the iteration flow submits its shard tasks to (with one shard there are
    none: no Ray runtime or Dask cluster is started for nothing)."""
    if orchestration.shards > 1 and orchestration.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        ray_cfg = orchestration.ray
        init = {"runtime_env": {"env_vars": worker_environment()}, "log_to_driver": True}
        if not ray_cfg.address:
            init |= {"num_cpus": ray_cfg.local_cpus or os.cpu_count(), "include_dashboard": False}
        return RayTaskRunner(address=ray_cfg.address or None, init_kwargs=init)
    if orchestration.shards > 1 and orchestration.task_runner == "dask":
        import logging

        from prefect_dask import DaskTaskRunner

        # distributed logs every worker's coming and going, and tracebacks of the comms it closes on the way
        # out, at INFO: not news for a campaign's console
        logging.getLogger("distributed").setLevel(logging.WARNING)

        dask_cfg = orchestration.dask
        if dask_cfg.address:
            return DaskTaskRunner(address=dask_cfg.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_cfg.n_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None,
                                              "env": worker_environment()})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1)


def check_resources(orchestration: OrchestrationConfig) -> None:
    """On Ray, the cluster has the CPUs and GPUs one shard asks for (a task asking for more waits forever)."""
    if orchestration.task_runner != "ray":
        return
    import ray

    have = ray.cluster_resources()
    for key, wanted, resource in (("num_cpus", orchestration.ray.num_cpus, "CPU"),
                                  ("num_gpus", orchestration.ray.num_gpus, "GPU")):
        if wanted > have.get(resource, 0):
            raise ConfigError(f"orchestration.ray.{key}", f"each shard asks for {wanted:g} {resource}(s); the Ray "
                                                          f"cluster has {have.get(resource, 0):g} in all: lower it "
                                                          "or add nodes")


@contextmanager
def shard_resources(orchestration: OrchestrationConfig) -> Iterator[None]:
    """Tasks submitted in this block hold one shard's resources on Ray (elsewhere: nothing changes)."""
    if orchestration.task_runner != "ray":
        with nullcontext():
            yield
        return
    from prefect_ray.context import remote_options

    with remote_options(num_cpus=orchestration.ray.num_cpus, num_gpus=orchestration.ray.num_gpus):
        yield
