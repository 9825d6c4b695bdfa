"""``rlhf deploy``: the campaign's next iteration as a deployment on a Prefect server's work pool, run by
whatever worker polls that pool (``prefect worker start --pool <pool> --type process``: docker/local-stack.sh
and docker/compose.yaml start one).

Unlike ``rlhf serve``, nothing keeps running here: the server holds the deployment (and its schedule, if
``orchestration.cron`` or ``orchestration.interval`` is set), and each run is a flow run the worker starts in a
process of its own. Trigger one with ``prefect deployment run 'rlhf-next-iteration/<campaign>-next-iteration'``.

- The deployment is ``next_iteration_flow`` by its module path (``rlhf.flows.campaign.next_iteration_flow``),
  imported by the worker's flow-run process from the installed package: no code is uploaded or pulled, so the
  worker runs the code installed where it runs.
- Its one parameter is the overrides given here, with ``campaign.root`` made absolute: a flow run starts in a
  temporary working directory of the worker's, where ``./runs`` would be somewhere else each time. Other
  relative paths in the overrides (labels files, data) resolve there too: give them absolute.
- The work pool is ``orchestration.work_pool``, or ``PREFECT_WORK_POOL`` when that is null.

Registered with ``RunnerDeployment.apply()``: Prefect 3.8's ``flow.deploy()`` first lists the pool's workers with
``limit=None``, which the server's FastAPI (< 0.155, pinned) answers with HTTP 422; ``apply()`` only creates or
updates the deployment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rlhf.core.errors import ConfigError, RLHFError

WORK_POOL_VARIABLE = "PREFECT_WORK_POOL"


@dataclass(frozen=True)
class Deployed:
    name: str  # "<flow>/<deployment>", what `prefect deployment run` takes
    id: str
    pool: str
    api_url: str
    overrides: list[str]
    schedule: str  # "every 86400.0 s", "cron 0 3 * * 1", or "none"


def deployment_name(cfg) -> str:
    return f"{cfg.campaign.name}-next-iteration"


def work_pool(cfg) -> str:
    pool = (cfg.orchestration.work_pool or os.environ.get(WORK_POOL_VARIABLE, "")).strip()
    if not pool:
        raise RLHFError(f"no work pool to deploy to: set orchestration.work_pool (or {WORK_POOL_VARIABLE}) to the "
                        "Prefect work pool whose worker "
                        f"runs the iterations (e.g. `source runs/stack/stack.env` after `make stack`, which sets "
                        f"{WORK_POOL_VARIABLE}=rlhf)")
    return pool


def api_url() -> str:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RLHFError("a deployment lives on a Prefect server, and PREFECT_API_URL is not set: point it at one "
                        "(e.g. `make stack`, then `source runs/stack/stack.env`; or PREFECT_API_URL="
                        "http://<host>:4200/api). Without a server, `rlhf serve` runs a schedule in its own process")
    return url


def check_deployable(cfg) -> tuple[str, str]:
    """Config and environment mistakes, before anything reaches the server; returns (API URL, work pool)."""
    from .campaign import check_fault
    from .iteration import check_slots
    from .serve import check_schedule

    orchestration = cfg.orchestration
    if orchestration.watch:
        raise ConfigError("orchestration.watch", "a deployment runs on a schedule or when triggered, it does not "
                                                 "watch a folder: use `rlhf serve orchestration.watch=...` for that")
    if orchestration.cron and orchestration.interval:
        raise ConfigError("orchestration.interval", "give one schedule: orchestration.cron or orchestration.interval, "
                                                    "not both")
    check_schedule(orchestration.cron, orchestration.interval)
    check_slots(cfg)
    check_fault(cfg.debug.fail_at)
    return api_url(), work_pool(cfg)


def with_absolute_root(cfg, overrides: list[str]) -> list[str]:
    """``overrides`` with ``campaign.root`` set to the absolute path it means here (a URL stays as it is)."""
    root = str(cfg.campaign.root)
    if "://" not in root:
        root = str(Path(root).resolve())
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "campaign.root"]
    return [*kept, f"campaign.root={root}"]


def _check_server(url: str, pool: str) -> None:
    """The server answers and has the work pool; a clear error otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        if (problem := client.api_healthcheck()) is not None:
            raise RLHFError(f"the Prefect server at {url} (PREFECT_API_URL) does not answer ({problem}): start it "
                            "(`make stack`) or fix PREFECT_API_URL")
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            names = sorted(p.name for p in client.read_work_pools(limit=100))  # limit: None is a 422 here
            raise RLHFError(f"no work pool {pool!r} on the Prefect server {url}: create it (`prefect work-pool create "
                            f"{pool} --type process`) and start a worker on it (`prefect worker start --pool {pool} "
                            f"--type process`), or set {WORK_POOL_VARIABLE} to one it has"
                            + (f" ({', '.join(names)})" if names else "")) from None


def deploy(cfg, overrides: list[str]) -> Deployed:
    """Create (or update: same name) the campaign's next-iteration deployment on the work pool."""
    from prefect.deployments.runner import EntrypointType

    from .campaign import next_iteration_flow, run_tags

    url, pool = check_deployable(cfg)
    _check_server(url, pool)
    parameters = with_absolute_root(cfg, overrides)
    orchestration = cfg.orchestration
    deployment = next_iteration_flow.to_deployment(
        name=deployment_name(cfg), work_pool_name=pool, parameters={"overrides": parameters},
        cron=orchestration.cron, interval=orchestration.interval, entrypoint_type=EntrypointType.MODULE_PATH,
        tags=run_tags(cfg.campaign.name),
        description=f"The next iteration of campaign {cfg.campaign.name} (rlhf deploy)")
    deployment_id = deployment.apply()
    schedule = (f"cron {orchestration.cron}" if orchestration.cron
                else f"every {orchestration.interval} s" if orchestration.interval else "none")
    return Deployed(f"{next_iteration_flow.name}/{deployment_name(cfg)}", str(deployment_id), pool, url, parameters,
                    schedule)
