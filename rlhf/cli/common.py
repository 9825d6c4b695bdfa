"""What every command module shares: the command record, config composition, where a command writes."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rlhf.core.steps.outputs import Outputs
from rlhf.record.layout import campaign_dir, campaign_lock, iteration_dir, local_root, remove_empty_dirs


@dataclass
class Command:
    name: str  # a two-word name ("rm train") is run as `rlhf rm train`
    summary: str
    example: str
    run: Callable[[list[str]], int]


def compose(overrides: list[str]):
    """The composed config (``rlhf.flows.config.RootConfig``) of a command's overrides."""
    from rlhf.flows.config import compose_config

    return compose_config(overrides)


def here(cfg) -> Path:
    """The iteration directory a single-step command writes into (``campaign.iteration``)."""
    return iteration_dir(cfg, cfg.campaign.iteration)


def output_dir(cfg, contract: Outputs) -> Path:
    """Where a single-step command writes: ``io.output`` when given, else the step's directory in the
    iteration directory."""
    return Path(cfg.io.output) if cfg.io.output else contract.dir(here(cfg))


@contextmanager
def writing(cfg, *outputs: Path) -> Iterator[None]:
    """Hold the campaign's lock while a command writes into the campaign directory (by default every
    single-step command does; with ``io.output`` elsewhere, only paths inside it count), so it never
    replaces a step's output under a running campaign. A held lock is a clear error naming its holder."""
    home = campaign_dir(cfg)
    inside = not outputs or any(Path(path).resolve().is_relative_to(home) for path in outputs)
    with campaign_lock(home) if inside else nullcontext():
        yield


@contextmanager
def prefect_prepared(cfg) -> Iterator[None]:
    """Prepare Prefect's environment (``rlhf.flows.environment.prepare``: PREFECT_HOME, by default
    ``<campaign.root>/.prefect``, and its logging) for a block that imports Prefect and checks the config
    before anything runs. When the block fails, the folders made for it that are still empty (the
    Prefect home, a new campaign.root) are removed: a config mistake leaves nothing behind."""
    from rlhf.flows.environment import prepare

    root = local_root(cfg.campaign.root)
    homes = [Path(p).resolve() for p in (os.environ.get("PREFECT_HOME"), cfg.orchestration.prefect_home) if p]
    new = {path for start in (*homes, root / ".prefect") for path in (start, *start.parents) if not path.exists()}
    try:
        prepare(cfg)
        yield
    except BaseException:
        remove_empty_dirs(new)
        raise
