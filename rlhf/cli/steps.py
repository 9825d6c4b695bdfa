"""``rlhf sft | annotate | sample | rs | ppo``: single steps of the recipe, run directly (no Prefect).

Each writes where its step's output contract says (``rlhf.core.steps.outputs``), in the iteration
directory ``<campaign.root>/<campaign.name>/iter-<campaign.iteration>``, or to ``io.output``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rlhf.core.errors import ConfigError
from rlhf.core.steps.outputs import PPO, REJECTION_SAMPLE, SAMPLE, SEARCH_TEMPERATURE, SFT, TRAIN_POLICY
from rlhf.record.layout import iteration_dir

from .common import Command, compose, here, output_dir, writing


def cmd_sft(overrides: list[str]) -> int:
    from rlhf.core.steps.sft import sft_step

    cfg = compose(overrides)
    out_dir = SFT.dir(iteration_dir(cfg, 0))
    with writing(cfg):
        metrics = sft_step(cfg.model, cfg.data, cfg.sft, out_dir, launch=cfg.launch.for_step("sft"))["metrics"]
    print(f"\nSFT model: {out_dir}")
    print(f"  steps {metrics['steps']}, train loss {metrics['train_loss_first']:.3f} -> "
          f"{metrics['train_loss_last']:.3f}", end="")
    if metrics.get("eval_loss_before") is not None:
        print(f", held-out loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss_after']:.3f}", end="")
    print(f", {metrics['tokens_per_s']:.0f} tokens/s")
    print(f"  per-step metrics: {out_dir / SFT['metrics']}; manifest: {out_dir / 'manifest.json'}")
    return 0


def cmd_annotate(overrides: list[str]) -> int:
    from rlhf.core.annotators import annotate_file

    cfg = compose(overrides)
    if not cfg.io.input:
        raise ConfigError("io.input", "give the pairs file to label, e.g. io.input=pairs.jsonl "
                                      "(columns pair_id, prompt, response_a, response_b, instructions, safety)")
    source = Path(cfg.io.input)
    output = Path(cfg.io.output or source.with_name(source.stem + ".labelled.parquet"))
    with writing(cfg, output):
        annotate_file(source, output, config=cfg.annotator)
    print(f"labelled pairs ({cfg.annotator.name} annotator): {output}")
    return 0


def cmd_sample(overrides: list[str]) -> int:
    from rlhf.core.steps.rejection import sample_step

    cfg = compose(overrides)
    out_dir = output_dir(cfg, SAMPLE)
    with writing(cfg, out_dir):
        metrics = sample_step(cfg.model, cfg.prompts, cfg.sampling, cfg.rejection.k, out_dir)["metrics"]
    print(f"\n{metrics['n_samples']} samples ({metrics['n_prompts']} prompts x {metrics['k']}), "
          f"{metrics['mean_tokens']:.0f} tokens on average, {metrics['stopped_share']:.0%} ended at a stop token: "
          f"{out_dir / SAMPLE['samples']}")
    return 0


def cmd_rs(overrides: list[str]) -> int:
    from rlhf.core.steps.rejection import rejection_sample_step, search_temperature_step
    from rlhf.core.steps.sft import DataConfig, sft_step

    cfg = compose(overrides)
    iteration, out = cfg.campaign.iteration, here(cfg)
    # 1. Temperature search on the probe prompts, 2. K samples per prompt at the chosen temperature and
    # the pool over all iterations so far, 3. fine-tune the policy (or a student) on the pool.
    with writing(cfg):
        search = search_temperature_step(cfg.model, cfg.prompts, cfg.sampling, cfg.rejection, cfg.scorer,
                                         SEARCH_TEMPERATURE.dir(out))
        chosen = search["metrics"]["chosen"]
        previous = [path for n in range(1, iteration) if (
            path := REJECTION_SAMPLE.dir(iteration_dir(cfg, n)) / REJECTION_SAMPLE["candidates"]).is_file()]
        rs = rejection_sample_step(cfg.model, cfg.prompts, replace(cfg.sampling, temperature=chosen), cfg.rejection,
                                   cfg.scorer, iteration, previous, REJECTION_SAMPLE.dir(out))
        student = replace(cfg.model, name_or_path=cfg.rejection.student) if cfg.rejection.student else cfg.model
        pool_sft = REJECTION_SAMPLE.dir(out) / REJECTION_SAMPLE["pool_sft"]
        policy = sft_step(student, DataConfig(path=str(pool_sft)), cfg.train_policy, TRAIN_POLICY.dir(out),
                          launch=cfg.launch.for_step("train_policy"), config_key="train_policy")
    metrics = rs["metrics"]
    print("\ntemperature search (mean max-of-K reward):")
    for temperature, value in search["metrics"]["curve"].items():
        print(f"  T={temperature}: {value:.3f}{'  <- chosen' if float(temperature) == chosen else ''}")
    print(f"pool: {metrics['pool_size']} prompts, mean score {metrics['pool_mean_score']:.3f}, by iteration "
          f"{metrics['pool_by_iteration']}; best-of-K gain over the median: {metrics['gain']}")
    print(f"new policy: {TRAIN_POLICY.dir(out)} (train loss {policy['metrics']['train_loss_first']:.3f} -> "
          f"{policy['metrics']['train_loss_last']:.3f})")
    return 0


def cmd_ppo(overrides: list[str]) -> int:
    from rlhf.core.steps.ppo import ppo_step
    from rlhf.flows.config import ppo_eval_prompts

    cfg = compose(overrides)
    out_dir = output_dir(cfg, PPO)
    with writing(cfg, out_dir):
        metrics = ppo_step(cfg.model, cfg.scorer, replace(cfg.prompts, n=cfg.ppo.n_prompts), ppo_eval_prompts(cfg),
                           cfg.sampling, cfg.ppo, out_dir, launch=cfg.launch.for_step("ppo"))["metrics"]
    print(f"\nPPO policy: {out_dir}\n  {metrics['steps']} iterations"
          f"{' (early-stopped)' if metrics['early_stopped'] else ''}, held-out reward {metrics['reward_start']:.3f} "
          f"-> {metrics['reward_end']:.3f} (best at iteration {metrics['best_step']}), KL to the reference "
          f"{metrics['kl_end']:.3f}\n  seconds per iteration: rollout {metrics['seconds_per_step/rollout_s']:.1f}, "
          f"scoring {metrics['seconds_per_step/score_s']:.1f}, update {metrics['seconds_per_step/update_s']:.1f}")
    return 0


COMMANDS = [
    Command("sft", "Assistant-only supervised fine-tuning; writes <root>/<name>/iter-0/sft (a model dir).",
            "rlhf sft model=tiny data.path=chats.jsonl sft.epochs=1 campaign.name=try1", cmd_sft),
    Command("annotate", "Label a pairs file with the configured annotator (simulated | file | human).",
            "rlhf annotate io.input=pairs.jsonl io.output=labelled.parquet annotator.rater.noise=0.2",
            cmd_annotate),
    Command("sample", "Sample K answers per prompt (prompts.path, or generated prompts); writes samples.parquet.",
            "rlhf sample prompts.n=32 rejection.k=4 sampling.temperature=0.8 sampling.max_new_tokens=64",
            cmd_sample),
    Command("rs", "One rejection-sampling round: temperature search, best-of-K pool over all iterations, "
                  "fine-tune on the pool (the train_policy section, as in a campaign).",
            "rlhf rs model.name_or_path=runs/c/iter-0/sft scorer.helpful=runs/c/iter-1/rm-helpful "
            "campaign.name=c campaign.iteration=1", cmd_rs),
    Command("ppo", "PPO of a policy against reward models, KL-penalised to the starting policy; writes "
                   "<campaign>/iter-<n>/ppo (a model dir).",
            "rlhf ppo model.name_or_path=runs/c/iter-1/train_policy scorer.helpful=runs/c/iter-1/rm-helpful "
            "scorer.safety=runs/c/iter-1/rm-safety ppo.steps=20 campaign.name=c", cmd_ppo),
]
