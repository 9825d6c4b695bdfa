"""Compose the Hydra config and turn it into the core's dataclasses.

The schema is built from ``rlhf_core``'s own config dataclasses, so a typo'd key or a wrong type fails at
composition with the key's name, and the core never sees OmegaConf objects (they defeat Prefect's input
caching and tie the core to Hydra). Compose once per process, in the CLI or the flow body.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import lru_cache
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rlhf.core.annotators import AnnotatorConfig
from rlhf.core.errors import ConfigError
from rlhf.core.evaluation import EvalConfig
from rlhf.core.gatt import GAttConfig
from rlhf.core.launch import LaunchConfig, check_launch
from rlhf.core.models import ModelConfig
from rlhf.core.ppo import PPOConfig
from rlhf.core.prompt_sets import PromptsConfig
from rlhf.core.rejection import RejectionConfig
from rlhf.core.reward.train import RewardSection
from rlhf.core.sampling import SamplingConfig
from rlhf.core.scorers import ScorerConfig
from rlhf.core.sft import SFTConfig
from rlhf.core.steps.sft import DataConfig
from rlhf.record.layout import CONFIG_FILE, no_such_campaign

CAMPAIGN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class CampaignConfig:
    name: str = "default"  # the campaign directory is <root>/<name>
    root: str = "./runs"  # relative paths are resolved against the current directory
    iteration: int = 1  # the RLHF-V<iteration> that single-step commands and `rlhf iterate` write into
    iterations: int = 2  # `rlhf run`: SFT, then RLHF-V1..V<iterations>
    # The optional steps (the paper: PPO once, on V4's model, V5 sampled from it; GAtt from V3).
    # PPO runs after train_policy in the iterations listed; null = the one before the last (so the last
    # rejection-sampling round samples from the PPO policy, as the paper's V5 did); [] = never.
    ppo_at: list[int] | None = None
    gatt_from: int | None = None  # Ghost Attention in this iteration and every later one (paper: from V3); null = never
    # With reward.ablate, the iterations that run the margin ablation (Table 28: three more RMs each); null = every one
    ablate_at: list[int] | None = None
    # Disk: after each iteration, delete the model weights of iterations older than the last `keep` ones,
    # except the SFT model and, with tracking.register_models, every registered model (each iteration's
    # policy and RMs). null = keep every model. Pruned steps stay cached; loading one is a clear error.
    keep: int | None = None
    # A campaign on object storage (root s3://...): how long its lock outlives a run that died without
    # releasing it (a live run renews it every third of this); docs/design.md#object-storage
    lock_lease_seconds: float = 120.0
    # One number for every random choice of the campaign (prompt sets, sampling, rater noise, shuffling, RM head
    # and LoRA init, bootstrap, GAtt draws, PPO batches, the synthetic seed pairs): it sets every section's
    # `seed` key (`seeded` below), so the same seed on the same machine gives the same summary.json. null = each
    # section keeps its own seed (all 0 by default: campaign.seed=0 is the default campaign, same cache keys).
    # The base model is not drawn from it: model.tiny_seed picks the tiny model, as model.name_or_path a checkpoint.
    seed: int | None = None

    def validate(self) -> None:
        """The name becomes a directory under ``root``: one plain path component, nothing that escapes."""
        if not CAMPAIGN_NAME.fullmatch(self.name or "") or ".." in self.name:
            raise ConfigError("campaign.name", f"{self.name!r} is not a campaign name: use letters, digits, '.', '_' "
                                               "and '-' (no path separators, no '..'), e.g. campaign.name=try1; "
                                               "campaign.root says where campaigns live")

    def ppo_iterations(self) -> list[int]:
        if self.ppo_at is not None:
            return sorted(self.ppo_at)
        return [self.iterations - 1] if self.iterations > 1 else []


@dataclass
class CollectConfig:
    """Pair collection: two answers per *new* prompt each iteration, for the annotator (§3.2.1)."""

    n_prompts: int = 64  # new prompts per iteration (a fresh slice of the generated train split)
    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.1])  # one per answer: pairs that differ
    # Share of adversarial (unsafe) requests among the new prompts: the safety preferences come from these
    # (Llama 2 collected its safety data on adversarial prompts, §3.2.1); null = prompts.unsafe_share
    unsafe_share: float | None = None
    # The model each answer is sampled from, one per answer (the paper: two model variants, §3.2.1): policy
    # (the iteration's starting policy), previous (the policy before it; the base model at V1), sft, base
    # (the un-fine-tuned model.name_or_path), or a model path / hub id. Pairs record which is which.
    variants: list[str] = field(default_factory=lambda: ["policy", "policy"])

    def validate(self) -> "CollectConfig":
        """Raise :class:`ConfigError` naming the first bad key; return self."""
        for key, values in (("collect.temperatures", self.temperatures), ("collect.variants", self.variants)):
            if len(values) != 2:
                raise ConfigError(key, f"one per answer of a pair: give exactly 2, got {len(values)} ({values})")
        if not all(isinstance(v, str) and v.strip() for v in self.variants):
            raise ConfigError("collect.variants", f"each entry names a model: one of {', '.join(NAMED_VARIANTS)}, "
                                                  f"or a model path or hub id; got {self.variants}")
        if self.unsafe_share is not None and not 0 <= self.unsafe_share <= 1:
            raise ConfigError("collect.unsafe_share", f"must be in [0, 1] or null, got {self.unsafe_share}")
        return self


NAMED_VARIANTS = ("policy", "previous", "sft", "base")


@dataclass
class PPOSection(PPOConfig):
    """The ``ppo`` group: the algorithm's settings (``rlhf.core.ppo.PPOConfig``) and the DAG's switch."""

    enabled: bool = True  # false: no iteration runs PPO, whatever campaign.ppo_at says


def _gatt_train() -> SFTConfig:
    return SFTConfig(epochs=1, batch_size=16, micro_batch_size=8, lr=1.0e-5, loss_mode="last", checkpoint_every=10)


@dataclass
class GAttSection(GAttConfig):
    """The ``gatt`` group: dialogue synthesis and evaluation (``rlhf.core.gatt.GAttConfig``) and the
    fine-tune on the dialogues (``gatt.train``, an SFT config; its loss is always on the last answer)."""

    train: SFTConfig = field(default_factory=_gatt_train)


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; null = sqlite:///<root>/mlflow.db (absolute path)
    # null = <root>/mlartifacts for the default store, the server's own store (mlflow-artifacts:) for an MLflow
    # server; ignored for an existing experiment
    artifact_root: str | None = None
    experiment: str | None = None  # MLflow experiment; null = the campaign name
    register_models: bool = True  # register each iteration's policy, RMs (and student) as model versions


@dataclass
class RayConfig:
    """``orchestration.ray``: where the shards run with ``orchestration.task_runner=ray`` and what each holds."""

    # "": a Ray runtime on this machine, started for the run and stopped after it; "auto": the running cluster
    # this machine belongs to (`ray start --head` / `ray start --address=...`); "ray://host:10001": a remote
    # cluster through Ray Client (its workers must reach the Prefect server and the campaign's outputs).
    address: str = ""
    num_cpus: float = 1.0  # CPUs each shard task holds (Ray schedules by them)
    num_gpus: float = 0.0  # GPUs each shard task holds; with sampling.backend=vllm, 1 = one engine per GPU
    local_cpus: int | None = None  # CPUs of the runtime started for address "" (null: all of this machine's)


@dataclass
class DaskConfig:
    """``orchestration.dask``: where the shards run with ``orchestration.task_runner=dask``."""

    address: str = ""  # "": a local cluster of worker processes for the run; "tcp://host:8786": a running scheduler
    n_workers: int = 2  # worker processes of the local cluster (one thread each: torch uses the cores)


@dataclass
class OrchestrationConfig:
    # The sampling steps (collect_pairs, annotate, search_temperature, rejection_sample, evaluate) as this many
    # shard tasks each, merged into the step's output; identical to 1 shard (docs/design.md#fan-out).
    shards: int = 1
    # Where shard tasks run: thread (this process, one shard at a time), ray (orchestration.ray), dask.
    task_runner: str = "thread"
    ray: RayConfig = field(default_factory=RayConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
    prefect_home: str | None = None  # PREFECT_HOME when not set in the environment; null = <root>/.prefect
    io_retries: int = 2  # retries of a step that failed on I/O (OSError); other failures are not retried
    retry_delay_seconds: float = 10.0
    cron: str | None = None  # `rlhf serve`: run the next iteration on this cron (e.g. "0 3 * * 1")
    interval: float | None = None  # `rlhf serve`: ... or every this many seconds
    watch: str | None = None  # `rlhf serve`: ... or when a new labels file lands in this directory
    poll_seconds: float = 30.0  # how often `watch` looks for new files
    max_runs: int | None = None  # `rlhf serve` without a Prefect server: stop after this many scheduled runs
    work_pool: str | None = None  # `rlhf deploy`: the Prefect work pool whose worker runs it; null = $PREFECT_WORK_POOL
    # `rlhf run` / `resume` of a campaign that finished with this config, code and inputs, every output still as
    # its manifest says (rlhf/record/finished.py): print its summary and return, without Prefect; false: run the
    # flow anyway (every step Cached)
    skip_finished: bool = True
    pause_for_labels: bool = False  # annotator=human: pause the flow run (resume it with the labels path in
    # the Prefect UI) instead of polling for annotator.labels_path; needs a Prefect server


@dataclass
class DebugConfig:
    fail_at: str | None = None  # fault injection: "<step>" raises at its start, "<step>:<n>" after n training steps


@dataclass
class IOConfig:
    input: str | None = None  # the input file of a single-step command (e.g. pairs for `rlhf annotate`)
    output: str | None = None  # where that command writes; each command documents its default
    port: int = 5000  # `rlhf ui`: the MLflow UI's port


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
    train_policy: SFTConfig = field(default_factory=SFTConfig)  # the policy's fine-tune on the pool
    collect: CollectConfig = field(default_factory=CollectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ppo: PPOSection = field(default_factory=PPOSection)
    gatt: GAttSection = field(default_factory=GAttSection)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    io: IOConfig = field(default_factory=IOConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)  # processes per training step; launch.steps.<step>


def seeded(cfg: RootConfig) -> RootConfig:
    """``cfg`` with every section's ``seed`` (each dataclass field of that name, at any depth: ``sft.seed``,
    ``reward.helpful.seed``, ``annotator.rater.seed``, ...) set to ``campaign.seed``; ``cfg`` itself when that
    is null. One integer for all: each component mixes it with its own tag (split, pair id, batch, turn)."""
    if cfg.campaign.seed is None:
        return cfg
    return _with_seed(cfg, cfg.campaign.seed)


def _with_seed(section, seed: int):
    changes = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if f.name == "seed":
            changes[f.name] = seed
        elif is_dataclass(value):
            changes[f.name] = _with_seed(value, seed)
    return replace(section, **changes)


def ppo_eval_prompts(cfg: RootConfig) -> PromptsConfig:
    """PPO's early-stopping prompts: held out from training, and disjoint from the win-rate prompts (the
    next ``ppo.eval_prompts`` of the evaluation set), so choosing when to stop does not select on them."""
    return PromptsConfig(path=cfg.eval.prompts_path, n=cfg.ppo.eval_prompts, offset=cfg.eval.n_prompts,
                         split=cfg.eval.split, seed=cfg.eval.seed)


# Counts and sizes that must be at least 1 (a 0 or a negative one fails deep inside a step, or silently
# does nothing) and those that may be 0. Checked on every composed or stored config.
AT_LEAST_ONE = ("rejection.k", "rejection.n_prompts", "rejection.probe_prompts", "rejection.pool_from",
                "collect.n_prompts",
                "sampling.max_new_tokens", "sampling.batch_prompts", "eval.n_prompts", "eval.n_bootstrap",
                "sft.epochs", "sft.batch_size", "sft.micro_batch_size", "sft.max_length",
                "train_policy.epochs", "train_policy.batch_size", "train_policy.micro_batch_size",
                "reward.train.epochs", "reward.train.batch_size", "reward.train.micro_batch_size",
                "reward.train.max_length", "reward.train.eval_batch_size", "ppo.steps", "ppo.batch_size",
                "ppo.n_prompts", "campaign.iterations", "campaign.iteration", "campaign.keep",
                "orchestration.shards", "orchestration.dask.n_workers", "orchestration.ray.local_cpus")
AT_LEAST_ZERO = ("prompts.n", "prompts.offset", "data.eval_size", "reward.helpful.n_synthetic",
                 "reward.safety.n_synthetic", "reward.n_eval_synthetic", "sft.max_steps", "sft.checkpoint_every",
                 "rejection.probe_k", "orchestration.io_retries", "orchestration.retry_delay_seconds",
                 "orchestration.ray.num_cpus", "orchestration.ray.num_gpus", "campaign.lock_lease_seconds")


def check_sizes(cfg: RootConfig) -> None:
    """A clear error for a count or size out of range, naming its key, before anything runs."""
    for keys, low in ((AT_LEAST_ONE, 1), (AT_LEAST_ZERO, 0)):
        for key in keys:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part, None)
            if value is not None and value < low:
                raise ConfigError(key, f"must be at least {low}, got {value}")


def check_lora(cfg: RootConfig) -> None:
    """Every training section's LoRA settings (``<section>.lora.*``), named in the error, before anything runs."""
    for key, section in (("sft", cfg.sft), ("train_policy", cfg.train_policy), ("gatt.train", cfg.gatt.train),
                         ("reward.train", cfg.reward.train), ("ppo", cfg.ppo)):
        section.lora.validate(key)


def check_launched_training(cfg: RootConfig) -> None:
    """The ``launch`` group, and each training step's launch (its per-step overrides applied) against that
    step's batch sizes: a clear error naming the key before anything runs."""
    from rlhf.core.steps.ppo import check_ppo_launch

    check_launch(cfg.launch)
    for step, batches in (("sft", {"sft": cfg.sft}), ("train_reward_models", {"reward.train": cfg.reward.train}),
                          ("train_policy", {"train_policy": cfg.train_policy}), ("ppo", {}),
                          ("gatt", {"gatt.train": cfg.gatt.train})):
        check_launch(cfg.launch, batches, step)
    check_ppo_launch(cfg.ppo, cfg.launch.for_step("ppo"))


TASK_RUNNERS = ("thread", "ray", "dask")


def check_task_runner(orchestration: OrchestrationConfig) -> None:
    """``orchestration.task_runner`` and the address it names, by form (whether it answers is checked when a
    run starts: ``rlhf.flows.fanout.check_reachable``)."""
    if orchestration.task_runner not in TASK_RUNNERS:
        raise ConfigError("orchestration.task_runner", f"unknown task runner {orchestration.task_runner!r}; one of "
                                                       f"{', '.join(TASK_RUNNERS)}")
    address = orchestration.ray.address
    if address not in ("", "auto") and not re.fullmatch(r"ray://[^:/\s]+:\d+", address):
        raise ConfigError("orchestration.ray.address", f"{address!r} is not a Ray address: leave it empty (a Ray "
                                                       "runtime on this machine), 'auto' (the cluster this machine "
                                                       "joined) or ray://<head>:10001 (Ray Client)")
    if orchestration.dask.address and not re.fullmatch(r"(tcp|tls)://[^:/\s]+:\d+", orchestration.dask.address):
        raise ConfigError("orchestration.dask.address", f"{orchestration.dask.address!r} is not a Dask scheduler "
                                                        "address: leave it empty (a local cluster) or give "
                                                        "tcp://<scheduler>:8786")


def _register() -> None:
    ConfigStore.instance().store(name="base_config", node=RootConfig)


def compose_config(overrides: list[str] | None = None):
    """The composed config as a ``RootConfig`` dataclass, :func:`seeded`; bad overrides raise :class:`ConfigError`,
    naming the key and what to do (the keys or group options it was probably meant to be)."""
    overrides = list(overrides or [])
    for override in overrides:
        if "=" not in override and not override.startswith("~"):
            raise bare_word_error(override)
    _register()
    try:
        with initialize_config_module(config_module="rlhf.conf", version_base="1.3"):
            composed = compose(config_name="config", overrides=overrides)
        unknown = next(_unknown_keys(composed), None)  # `+key=value` adds a key the schema lacks, silently
        if unknown is not None:
            raise unknown_key_error(unknown[0], _value_of(unknown[0], overrides), unknown[1])
        cfg = seeded(OmegaConf.to_object(composed))
    except (HydraException, OmegaConfBaseException) as err:
        raise _config_error(err, overrides) from err
    cfg.campaign.validate()
    cfg.collect.validate()
    check_sizes(cfg)
    check_lora(cfg)
    check_launched_training(cfg)
    check_task_runner(cfg.orchestration)
    return cfg


def demo_experiment() -> str:
    """The preset ``make demo`` runs on this machine: ``demo`` where the CPU computes in bf16 natively
    (AVX512-BF16 or AMX), ``demo_fp32`` -- the same campaign at about a third of the work -- where
    ``model.precision=auto`` falls back to fp32 (AVX2 only), whose matmul peak is several times lower (README, the
    demo paragraph)."""
    from rlhf.core.models import resolve_precision

    return "demo" if resolve_precision("auto", "cpu") == "bf16" else "demo_fp32"


SEE_CFG = "`rlhf <command> --cfg` prints every key and its value"


def _config_error(err: Exception, overrides: list[str]) -> ConfigError:
    """What Hydra's or OmegaConf's error means, as a :class:`ConfigError` naming the key."""
    cause = err.__cause__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(err, MissingConfigException) and err.options is not None and "/" in (err.missing_cfg_file or ""):
        group, _, option = err.missing_cfg_file.rpartition("/")
        return ConfigError(group, f"no option {option!r} in config group {group!r} (no conf/{group}/{option}.yaml). "
                                  f"Available options in {group!r}: {', '.join(err.options)}"
                                  + _did_you_mean([f"{group}={o}" for o in _closest(option, err.options)]))
    unknown = re.match(r"Could not override '([^']+)'", str(err))  # Hydra names the override's whole key
    if unknown and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return unknown_key_error(unknown.group(1), _value_of(unknown.group(1), overrides),
                                 str(cause).strip().splitlines()[0])
    message = str(err).strip().splitlines()[0]
    if cause is not None and str(cause).strip():  # Hydra's first line hides why ("Error merging override")
        message += f": {str(cause).strip().splitlines()[0]}"
    key = getattr(cause, "full_key", None) or " ".join(overrides) or "<defaults>"
    return ConfigError(key, f"{message} ({SEE_CFG})")


def _value_of(key: str, overrides: list[str]) -> str | None:
    return next((value for o in overrides for k, _, value in [o.partition("=")] if k.lstrip("+~") == key), None)


def _closest(word: str, candidates, n: int = 3) -> list[str]:
    """The candidates nearest to ``word`` (difflib's ratio at least 0.6, and close to the best one; a
    candidate that ``word`` begins, like ``sampling.temperature`` for ``sampling.temp``, counts as near)."""
    scored = sorted(((max(difflib.SequenceMatcher(None, word, c).ratio(), 0.95 if c.startswith(word) else 0), c)
                     for c in candidates), reverse=True)
    best = scored[0][0] if scored else 0.0
    return [c for score, c in scored[:n] if score >= max(0.6, best - 0.1)]


def _did_you_mean(suggestions: list[str]) -> str:
    return f"; did you mean {' or '.join(suggestions)}?" if suggestions else ""


def unknown_key_error(key: str, value: str | None = None, why: str | None = None) -> ConfigError:
    """A key that is not in the config, with the keys (or config groups) it was probably meant to be;
    ``why`` is OmegaConf's own line ("Key 'kk' not in 'RejectionConfig'")."""
    groups = config_groups()
    mapping = next((k for k in _config_index()[1] if key.startswith(k + ".")), None)
    if mapping is not None:  # a new entry of a mapping (eval.references): Hydra wants the `+`
        return ConfigError(key, f"{mapping} is a mapping: add an entry with +{key}={value or '<value>'}")
    if "." in key:
        suggestions = _closest(key, config_keys())
    else:  # a top-level word: a config group (experiment=smoke) or a section (campaign.<key>)
        sections = sorted({k.split(".")[0] for k in config_keys()} - set(groups))
        suggestions = [f"{c}={value if value is not None else '<option>'}" if c in groups else f"{c}.<key>"
                       for c in _closest(key, [*groups, *sections])]
    return ConfigError(key, f"no such key{f' ({why})' if why else ''}{_did_you_mean(suggestions)} ({SEE_CFG})")


def bare_word_error(word: str, exact: bool = False) -> ConfigError | None:
    """The error for an override without ``=``: a config group's name (``rlhf run experiment`` for
    ``experiment=smoke``) lists the group's options, a key's name asks for its value, anything else gets
    the nearest keys and groups. With ``exact``, only a group's or a key's own name is an error (None
    otherwise): a bare first word is a campaign's name (``rlhf resume demo``) unless it names config."""
    groups = config_groups()
    # the first word: say how to name a campaign like a config group
    campaign = f". A campaign called {word!r}: campaign.name={word}" if exact else ""
    if word in groups:
        return ConfigError(word, f"a config group needs an option: did you mean {word}=<option>? Available options "
                                 f"in {word!r}: {', '.join(groups[word])}{campaign}")
    if "." in word and word in config_keys():
        return ConfigError(word, f"a config key needs a value: did you mean {word}=<value>? ({SEE_CFG}){campaign}")
    if exact:
        return None
    suggestions = [f"{c}=<option>" for c in _closest(word, groups)] + [f"{c}=<value>" for c in
                                                                        _closest(word, config_keys())]
    return ConfigError(word, f"not a key=value override{_did_you_mean(suggestions[:3])} ({SEE_CFG})")


@lru_cache(maxsize=1)
def config_groups() -> dict[str, list[str]]:
    """The config groups (``conf/<group>/``) and their options, e.g. ``{"experiment": ["demo", "llama2",
    "smoke"], ...}`` (Hydra's own ``hydra`` group left out)."""
    _register()
    with initialize_config_module(config_module="rlhf.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {group: list(loader.get_group_options(group)) for group in loader.list_groups("")
                if group != "hydra"}


def config_keys() -> tuple[str, ...]:
    """The dotted paths of every value of the composed (default) config, e.g. ``rejection.k``."""
    return _config_index()[0]


@lru_cache(maxsize=1)
def _config_index() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The composed (default) config's value paths, and the paths of its mappings (``eval.references``:
    free keys, added with ``+``)."""
    _register()
    with initialize_config_module(config_module="rlhf.conf", version_base="1.3"):
        composed = compose(config_name="config")
    keys, mappings = [], []

    def walk(node: DictConfig, prefix: str) -> None:
        if not is_dataclass(OmegaConf.get_type(node)):
            mappings.append(prefix.rstrip("."))
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() and len(child):
                walk(child, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")
                if isinstance(child, DictConfig) and not is_dataclass(OmegaConf.get_type(child)):
                    mappings.append(f"{prefix}{key}")

    walk(composed, "")
    return tuple(keys), tuple(m for m in mappings if m)


def _unknown_keys(node: DictConfig, prefix: str = ""):
    """(dotted path, why) of each key in a composed config that its schema does not have (``+key=value``
    adds them without complaint, and ``OmegaConf.to_object`` then drops them without a word)."""
    kind = OmegaConf.get_type(node)
    known = {f.name for f in fields(kind)} if is_dataclass(kind) else None
    for key in node.keys():
        if known is not None and key not in known:
            yield f"{prefix}{key}", f"Key {key!r} not in {kind.__name__!r}"
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            yield from _unknown_keys(child, f"{prefix}{key}.")


def stored_config(root: str, name: str) -> RootConfig:
    """The resolved config a campaign last ran with (``<root>/<name>/config.yaml``), without its fault
    switch: what ``rlhf resume`` reruns. Imports no Prefect, so the CLI reads it before preparing
    Prefect's environment (``rlhf.flows.environment.prepare``)."""
    path = Path(root).resolve() / name / CONFIG_FILE
    if not path.is_file():
        raise no_such_campaign(root, name)
    import yaml

    cfg = config_from_dict(yaml.safe_load(path.read_text()))
    return replace(cfg, debug=replace(cfg.debug, fail_at=None))


def config_from_dict(values: dict) -> RootConfig:
    """A resolved config (``to_dict`` output, e.g. from summary.json) back as a ``RootConfig``, :func:`seeded`.

    Every flow of a campaign converts the same dict (50 ms through OmegaConf each time), so the result is
    memoised on the dict's JSON and handed out as a copy."""
    cfg = seeded(copy.deepcopy(_config_from_json(json.dumps(values, sort_keys=True))))
    cfg.campaign.validate()
    cfg.collect.validate()
    check_sizes(cfg)
    check_lora(cfg)
    check_launched_training(cfg)
    check_task_runner(cfg.orchestration)
    return cfg


@lru_cache(maxsize=8)
def _config_from_json(text: str) -> RootConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig), json.loads(text)))
    except OmegaConfBaseException as err:
        raise ConfigError("config", str(err).strip().splitlines()[0]) from err


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
