"""What every command module shares: the command record, config composition, where a command writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhf.core.steps.outputs import Outputs
from rlhf.record.layout import iteration_dir


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
