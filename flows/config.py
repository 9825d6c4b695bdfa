"""Compose the Hydra config and turn it into the core's dataclasses.

The schema is built from ``rlhf_core``'s own config dataclasses, so a typo'd key or a wrong type fails at
composition with the key's name, and the core never sees OmegaConf objects (they defeat Prefect's input
caching and tie the core to Hydra). Compose once per process, in the CLI or the flow body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf_core.annotators import AnnotatorConfig
from rlhf_core.errors import ConfigError
from rlhf_core.models import ModelConfig
from rlhf_core.reward.train import RewardSection
from rlhf_core.prompt_sets import PromptsConfig
from rlhf_core.rejection import RejectionConfig
from rlhf_core.sampling import SamplingConfig
from rlhf_core.scorers import ScorerConfig
from rlhf_core.sft import SFTConfig
from rlhf_core.steps.sft import DataConfig


@dataclass
class CampaignConfig:
    name: str = "default"  # the campaign directory is <root>/<name>
    root: str = "./runs"  # relative paths are resolved against the current directory
    iteration: int = 1  # the RLHF-V<iteration> that single-step commands write into (iter-<n>/)


@dataclass
class IOConfig:
    input: str | None = None  # the input file of a single-step command (e.g. pairs for `rlhf annotate`)
    output: str | None = None  # where that command writes; each command documents its default


@dataclass
class RootConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    reward: RewardSection = field(default_factory=RewardSection)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    io: IOConfig = field(default_factory=IOConfig)


def _register() -> None:
    ConfigStore.instance().store(name="base_config", node=RootConfig)


def compose_config(overrides: list[str] | None = None):
    """The composed config as a ``RootConfig`` dataclass; bad overrides raise :class:`ConfigError`."""
    _register()
    try:
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides or []))
        return OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0]
        raise ConfigError(" ".join(overrides or []) or "<defaults>",
                          f"{message}. See `rlhf <command> --cfg` for the keys and their values.") from err


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
