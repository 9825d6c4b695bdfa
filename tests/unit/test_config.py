"""The Hydra config tree: every experiment composes, every experiment file opens with its command,
a bad override names the key, the resolved config round-trips (what `rlhf resume` relies on), and
campaign.seed sets every seed."""

from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import pytest

from rlhf.core.errors import ConfigError
from rlhf.flows.config import RootConfig, compose_config, config_from_dict, seeded, to_dict

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "experiment").glob("*.yaml"))


def test_the_three_experiments_exist():
    assert {"smoke", "demo", "llama2"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_says_how_to_run_it(name):
    cfg = compose_config([f"experiment={name}"])
    assert isinstance(cfg, RootConfig) and cfg.campaign.iterations >= 1
    text = (Path(__file__).parents[2] / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_" and text[1].startswith(f"# rlhf run experiment={name}")


def test_experiments_pick_their_model():
    assert compose_config(["experiment=smoke"]).model.name_or_path == "tiny"
    assert compose_config(["experiment=demo"]).model.name_or_path == "smollm2"
    llama2 = compose_config(["experiment=llama2"])
    assert llama2.sft.lr == 2e-5 and llama2.reward.train.lr == 1e-5 and llama2.reward.train.batch_size == 512
    # sized for eight GPUs: FSDP for the fine-tunes, PPO and GAtt data parallel with LoRA, sampling on vLLM
    assert (llama2.launch.name, llama2.launch.num_processes) == ("fsdp", 8) and llama2.sampling.backend == "vllm"
    assert {s: llama2.launch.for_step(s).name for s in ("sft", "train_reward_models", "train_policy", "ppo",
                                                         "gatt")} == {"sft": "fsdp", "train_reward_models": "fsdp",
                                                                      "train_policy": "fsdp", "ppo": "ddp",
                                                                      "gatt": "ddp"}
    assert llama2.ppo.lora.r == 16 and llama2.ppo.value_init == "shared" and llama2.gatt.train.lora.r == 16


def _leaves(tree: dict, prefix: str = "") -> dict:
    return {k: v for key, value in tree.items()
            for k, v in (_leaves(value, f"{prefix}{key}.").items() if isinstance(value, dict)
                         else [(f"{prefix}{key}", value)])}


def test_demo_fp32_is_the_demo_at_a_third_of_the_work():
    """Same model, DAG, evaluation and hyper-parameters; only the sizes below change, each to a half or less (the
    CPU-bound part of the work), and the campaign has a name of its own so the two never share outputs."""
    demo, fp32 = (_leaves(to_dict(compose_config([f"experiment={name}"]))) for name in ("demo", "demo_fp32"))
    changed = {key for key in demo if demo[key] != fp32[key]}
    assert fp32["campaign.name"] == "demo-fp32"
    sizes = {"sft.max_steps": (10, 4), "collect.n_prompts": (128, 48), "reward.helpful.n_synthetic": (64, 16),
             "reward.safety.n_synthetic": (48, 12), "rejection.probe_prompts": (8, 3), "rejection.n_prompts": (48, 16),
             "eval.n_prompts": (160, 64), "ppo.steps": (4, 2), "ppo.n_prompts": (64, 32), "ppo.eval_prompts": (16, 4),
             "gatt.n_dialogues": (32, 8), "gatt.eval_dialogues": (16, 8), "gatt.eval_zero_shot": (8, 4)}
    assert changed - {"campaign.name"} == set(sizes)
    assert {key: (demo[key], fp32[key]) for key in sizes} == sizes


@pytest.mark.parametrize("fast_bf16, preset", [(True, "demo"), (False, "demo_fp32")])
def test_make_demo_picks_the_preset_by_the_cpus_bf16(monkeypatch, fast_bf16, preset):
    import rlhf.core.models
    from rlhf.flows.config import demo_experiment

    monkeypatch.setattr(rlhf.core.models, "cpu_has_fast_bf16", lambda: fast_bf16)  # the CPU's flags, as read
    assert demo_experiment() == preset


def test_overrides_win_over_the_experiment():
    cfg = compose_config(["experiment=smoke", "campaign.iterations=3", "rejection.k=5"])
    assert cfg.campaign.iterations == 3 and cfg.rejection.k == 5 and cfg.model.name_or_path == "tiny"


@pytest.mark.parametrize("override, key, hint", [
    ("campaign.iterations=many", "campaign.iterations", "--cfg"),
    ("rejection.kk=3", "rejection.kk", "did you mean rejection.k?"),
    ("+rejection.kk=3", "rejection.kk", "did you mean rejection.k?"),  # `+` would add it, and it was dropped
    ("experimnt=smoke", "experimnt", "did you mean experiment=smoke?"),
    ("sampling.temp=0.9", "sampling.temp", "did you mean sampling.temperature?"),
    ("campain.name=x", "campain.name", "did you mean campaign.name?"),
    ("experiment=nope", "experiment", "Available options in 'experiment': demo, demo_fp32, llama2,"),
    ("experiment=smok", "experiment", "did you mean experiment=smoke?"),
    ("eval.references.x=y", "eval.references.x", "+eval.references.x=y"),
])
def test_a_bad_override_names_the_key_and_what_to_do(override, key, hint):
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert str(err.value).startswith(f"config '{key}': ") and hint in str(err.value)


def test_a_mapping_takes_new_entries_with_plus():
    assert compose_config(["+eval.references.x=y"]).eval.references == {"x": "y"}


def test_resolved_config_round_trips():
    cfg = compose_config(["experiment=smoke", "campaign.name=x"])
    assert config_from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("args, key", [
    (["run", "experiment=smoke", "campaign.ppo_at=[3]"], "campaign.ppo_at"),  # only 2 iterations
    (["run", "experiment=smoke", "ppo.batch_size=10"], "ppo.batch_size"),  # not a multiple of mini_batch_size
    (["run", "experiment=smoke", "campaign.gatt_from=5"], "campaign.gatt_from"),  # only 2 iterations
    (["run", "experiment=smoke", "gatt.examples=all"], "gatt.examples"),
    (["run", "experiment=smoke", "gatt.mix_into=rl"], "gatt.mix_into"),
    (["run", "experiment=smoke", "eval.judges=[gold,pairwise]"], "eval.pairwise.url"),  # no endpoint, no model
    (["run", "experiment=smoke", "reward.ablate=true", "campaign.ablate_at=[3]"], "campaign.ablate_at"),
    (["run", "experiment=smoke", "debug.fail_at=nope"], "debug.fail_at"),
    (["run", "experiment=smoke", "debug.fail_at=annotate:2"], "debug.fail_at"),
    (["resume", "campaign.name=never-ran"], "campaign.name"),
])
def test_campaign_commands_refuse_bad_config_before_starting(tmp_path, capsys, args, key):
    from rlhf.cli import main

    assert main([*args, f"campaign.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and key in err
    assert not (tmp_path / "smoke").exists()


def test_ppo_command_without_reward_models_says_what_to_give(tmp_path, capsys):
    from rlhf.cli import main

    assert main(["ppo", "model=tiny", f"campaign.root={tmp_path}"]) == 2
    assert "scorer.helpful" in capsys.readouterr().err and not (tmp_path / "default").exists()


def test_the_launch_group_defaults_to_one_process_and_ships_its_accelerate_configs():
    from rlhf.core.launch import LaunchConfig, accelerate_config

    assert compose_config([]).launch == LaunchConfig()
    ddp = compose_config(["launch=ddp", "launch.num_processes=2"]).launch
    assert ddp.name == "ddp" and ddp.num_processes == 2 and ddp.backend is None
    assert set(config_groups_options("launch")) == {"single", "ddp", "fsdp", "deepspeed"}
    for name in ("ddp", "fsdp", "deepspeed"):
        assert accelerate_config(LaunchConfig(name=name)).is_file()


def config_groups_options(group: str) -> list[str]:
    from rlhf.flows.config import config_groups

    return config_groups()[group]


@pytest.mark.parametrize("overrides, key", [
    (["launch=ddp", "sft.batch_size=8", "sft.micro_batch_size=8"], "sft.batch_size"),
    (["launch=ddp", "launch.num_processes=4", "reward.train.batch_size=16", "reward.train.micro_batch_size=8"],
     "reward.train.batch_size"),
    (["launch.num_processes=2"], "launch.num_processes"),  # launch=single runs in this process
    (["launch=fsdp"], "launch.name"),  # shipped as a config, not run yet
    (["launch=deepspeed"], "launch.name"),
    (["launch=ddp", "launch.backend=mpi"], "launch.backend"),
])
def test_a_launch_that_cannot_work_is_refused_at_composition(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert str(err.value).startswith(f"config '{key}': ")


def test_a_stored_config_without_a_launch_section_reads_as_one_process():
    values = to_dict(compose_config(["experiment=smoke"]))
    del values["launch"]
    assert config_from_dict(values).launch.num_processes == 1


def seed_keys(section, prefix: str = "") -> dict:
    """Every dataclass field named ``seed`` under ``section``, at any depth: ``{"reward.helpful.seed": 0, ...}``."""
    found = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if f.name == "seed":
            found[prefix + f.name] = value
        elif is_dataclass(value):
            found |= seed_keys(value, f"{prefix}{f.name}.")
    return found


def test_campaign_seed_sets_every_seed_of_the_config():
    cfg = compose_config(["experiment=smoke", "campaign.seed=7", "sft.seed=3"])
    seeds = seed_keys(cfg)
    assert {"data.seed", "sft.seed", "annotator.rater.seed", "reward.train.seed", "reward.helpful.seed",
            "reward.safety.seed", "prompts.seed", "sampling.seed", "train_policy.seed", "eval.seed", "ppo.seed",
            "gatt.seed", "gatt.train.seed", "campaign.seed"} <= set(seeds)
    assert set(seeds.values()) == {7}  # a section's own key (sft.seed=3) is overwritten
    assert cfg.model.tiny_seed == 0  # the base model is not a draw of the campaign
    values = to_dict(cfg)
    values["reward"]["safety"]["seed"] = 5
    assert set(seed_keys(config_from_dict(values)).values()) == {7}  # a stored config (rlhf resume, each flow)


def test_without_campaign_seed_each_section_keeps_its_own():
    cfg = compose_config(["experiment=smoke", "sft.seed=3"])
    seeds = seed_keys(cfg)
    assert seeds.pop("campaign.seed") is None and seeds.pop("sft.seed") == 3 and set(seeds.values()) == {0}
    assert seeded(cfg) is cfg


def test_campaign_seed_0_is_the_default_campaign():
    default, zero = compose_config(["experiment=smoke"]), compose_config(["experiment=smoke", "campaign.seed=0"])
    assert replace(zero, campaign=default.campaign) == default  # every step's config, so every cache key


def test_pool_from_chooses_which_iterations_candidates_the_pool_draws_on():
    from rlhf.flows.iteration import pool_history

    earlier = ["cands-1", "cands-2"]
    everything = compose_config(["campaign.iterations=3"])
    assert pool_history(everything, 3, earlier) == earlier  # default 1: every iteration pools all so far
    paper = compose_config(["experiment=llama2"])
    assert paper.rejection.pool_from == 3
    assert pool_history(paper, 2, earlier[:1]) == []  # V2: its own samples only
    assert pool_history(paper, 3, earlier) == earlier  # from V3: the best of all rounds
    with pytest.raises(ConfigError, match="rejection.pool_from"):
        compose_config(["rejection.pool_from=0"])


def test_ablate_at_chooses_the_iterations_that_run_the_margin_ablation(tmp_path):
    from rlhf.flows.iteration import check_slots, runs_ablation

    every = compose_config(["reward.ablate=true", "campaign.iterations=3"])
    assert [runs_ablation(every, n) for n in (1, 2, 3)] == [True, True, True]
    replicate = compose_config(["experiment=replicate"])
    assert [runs_ablation(replicate, n) for n in (1, 2, 3, 4)] == [True, False, False, False]
    off = compose_config(["campaign.ablate_at=[2]", "campaign.iterations=3"])
    assert not any(runs_ablation(off, n) for n in (1, 2, 3))  # reward.ablate=false wins
    outside = compose_config(["reward.ablate=true", "campaign.ablate_at=[5]", "campaign.iterations=3",
                              f"campaign.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"campaign.ablate_at.*\[5\] are outside 1..3"):
        check_slots(outside)


@pytest.mark.parametrize("override, message", [
    ("collect.variants=[policy]", "give exactly 2"),
    ("collect.variants=[policy,sft,base]", "give exactly 2"),
    ("collect.variants=[policy,' ']", "each entry names a model"),
    ("collect.temperatures=[0.7]", "give exactly 2"),
])
def test_collect_variants_are_checked_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        compose_config([override])
    assert err.value.key.startswith("collect.")


def test_collect_variants_name_models_of_the_campaign():
    from rlhf.flows.iteration import CampaignState, variant_model

    cfg = compose_config(["collect.variants=[policy,previous]"])
    sft = {"step": "sft", "path": "/c/iter-0/sft", "key": "k0"}
    v1 = {"step": "ppo", "path": "/c/iter-1/ppo", "key": "k1"}
    at_v1 = CampaignState(sft=sft, seed={}, policy=sft)
    at_v2 = CampaignState(sft=sft, seed={}, policy=v1, previous=sft)
    assert variant_model(cfg, at_v1, "previous") == {"path": cfg.model.name_or_path}  # before SFT: the base model
    assert variant_model(cfg, at_v2, "previous") == sft and variant_model(cfg, at_v2, "policy") == v1
    assert variant_model(cfg, at_v2, "sft") == sft and variant_model(cfg, at_v2, "base")["path"] == "smollm2"
    assert variant_model(cfg, at_v2, "/models/other") == {"path": "/models/other"}
