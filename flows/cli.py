"""The ``rlhf`` command line. Every command takes Hydra-style ``key=value`` overrides.

User mistakes (bad data, bad config keys) print one clear message and exit with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhf_core.errors import RLHFError

from .cli_gatt import SUBCOMMANDS as GATT_SUBCOMMANDS
from .cli_rm import SUBCOMMANDS as RM_SUBCOMMANDS


@dataclass
class Command:
    name: str
    summary: str
    example: str
    run: Callable[[list[str]], int]


def _campaign_dir(cfg) -> Path:
    from .layout import campaign_dir

    return campaign_dir(cfg)


def _iteration_dir(cfg) -> Path:
    return _campaign_dir(cfg) / f"iter-{cfg.campaign.iteration}"


def _prefect_env(cfg) -> None:
    """Before Prefect is imported: a project-local PREFECT_HOME (its database and cached results), unless
    the environment already points somewhere (e.g. PREFECT_API_URL of a server), and the platform's log
    lines in Prefect's logs."""
    import os

    home = cfg.orchestration.prefect_home or str(Path(cfg.campaign.root).resolve() / ".prefect")
    os.environ.setdefault("PREFECT_HOME", home)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its SQLite file needs the directory
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rlhf")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # rlhf lines outside a flow run
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from a local server
    # The first start in a fresh PREFECT_HOME creates its database: allow more than the default 20 s on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if os.environ.get("PREFECT_API_URL") == "":
        del os.environ["PREFECT_API_URL"]  # empty is not "unset" to Prefect (DESIGN.md, known traps)


def _campaign(cfg, upto: int | None) -> int:
    _prefect_env(cfg)
    from .campaign import check_fault, end_of_run_report, run_campaign
    from .iteration import check_slots

    check_slots(cfg)  # config mistakes before any server starts
    check_fault(cfg.debug.fail_at)

    summary = run_campaign(cfg, upto)
    print(end_of_run_report(summary))
    return 0


def cmd_run(overrides: list[str]) -> int:
    from .config import compose_config

    return _campaign(compose_config(overrides), None)


def cmd_iterate(overrides: list[str]) -> int:
    from .config import compose_config
    from .layout import last_finished_iteration

    cfg = compose_config(overrides)
    explicit = any(o.split("=")[0].lstrip("+") == "campaign.iteration" for o in overrides)
    upto = cfg.campaign.iteration if explicit else last_finished_iteration(_campaign_dir(cfg)) + 1
    return _campaign(cfg, upto)


def cmd_resume(overrides: list[str]) -> int:
    from .campaign import stored_config
    from .config import compose_config

    given = compose_config(overrides)  # campaign.name / campaign.root say which campaign
    cfg = stored_config(given.campaign.root, given.campaign.name)
    return _campaign(cfg, None)


def cmd_report(overrides: list[str]) -> int:
    from .config import compose_config
    from .report import publish_report

    path = publish_report(_campaign_dir(compose_config(overrides)))
    print(f"report: {path}\n        {path.with_suffix('.html')}\nplots:  {path.parent / 'plots'}")
    return 0


def cmd_serve(overrides: list[str]) -> int:
    from rlhf_core.errors import ConfigError

    from .config import compose_config

    cfg = compose_config(overrides)
    o = cfg.orchestration
    if not (o.cron or o.interval or o.watch):
        raise ConfigError("orchestration.cron", "say when to run the next iteration: orchestration.cron='0 3 * * 1', "
                                                "orchestration.interval=<seconds> or orchestration.watch=<directory>")
    _prefect_env(cfg)
    from .serve import check_schedule, serve

    check_schedule(o.cron, o.interval)  # before a server starts
    serve(cfg, overrides)
    return 0


def cmd_ui(overrides: list[str]) -> int:
    import os

    from tasks.tracking import tracking_uri

    from .config import compose_config

    cfg = compose_config(overrides)
    root = Path(cfg.campaign.root).resolve()
    uri = tracking_uri(cfg.tracking.uri, root)
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(cfg.io.port)]
    if not cfg.tracking.uri:
        argv += ["--default-artifact-root", (root / "mlartifacts").as_uri()]
    print(f"MLflow UI on http://127.0.0.1:{cfg.io.port} for {uri} (Ctrl-C to stop)")
    os.execv(sys.executable, argv)
    return 0


def cmd_sft(overrides: list[str]) -> int:
    from rlhf_core.steps.sft import sft_step

    from .config import compose_config

    cfg = compose_config(overrides)
    out_dir = _campaign_dir(cfg) / "iter-0" / "sft"
    manifest = sft_step(cfg.model, cfg.data, cfg.sft, out_dir)
    m = manifest["metrics"]
    print(f"\nSFT model: {out_dir}")
    print(f"  steps {m['steps']}, train loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}", end="")
    if m.get("eval_loss_before") is not None:
        print(f", held-out loss {m['eval_loss_before']:.3f} -> {m['eval_loss_after']:.3f}", end="")
    print(f", {m['tokens_per_s']:.0f} tokens/s")
    print(f"  per-step metrics: {out_dir / 'metrics.jsonl'}; manifest: {out_dir / 'manifest.json'}")
    return 0


def cmd_annotate(overrides: list[str]) -> int:
    from rlhf_core.annotators import annotate_file
    from rlhf_core.errors import ConfigError

    from .config import compose_config

    cfg = compose_config(overrides)
    if not cfg.io.input:
        raise ConfigError("io.input", "give the pairs file to label, e.g. io.input=pairs.jsonl "
                                      "(columns pair_id, prompt, response_a, response_b, instructions, safety)")
    source = Path(cfg.io.input)
    output = Path(cfg.io.output or source.with_name(source.stem + ".labelled.parquet"))
    annotate_file(source, output, config=cfg.annotator)
    print(f"labelled pairs ({cfg.annotator.name} annotator): {output}")
    return 0


def cmd_sample(overrides: list[str]) -> int:
    from rlhf_core.steps.rejection import sample_step

    from .config import compose_config

    cfg = compose_config(overrides)
    out_dir = Path(cfg.io.output) if cfg.io.output else _iteration_dir(cfg) / "sample"
    manifest = sample_step(cfg.model, cfg.prompts, cfg.sampling, cfg.rejection.k, out_dir)
    m = manifest["metrics"]
    print(f"\n{m['n_samples']} samples ({m['n_prompts']} prompts x {m['k']}), {m['mean_tokens']:.0f} tokens on "
          f"average, {m['stopped_share']:.0%} ended at a stop token: {out_dir / 'samples.parquet'}")
    return 0


def cmd_rs(overrides: list[str]) -> int:
    from dataclasses import replace

    from rlhf_core.models import ModelConfig
    from rlhf_core.steps.rejection import rejection_sample_step, search_temperature_step
    from rlhf_core.steps.sft import DataConfig, sft_step

    from .config import compose_config

    cfg = compose_config(overrides)
    iteration, here = cfg.campaign.iteration, _iteration_dir(cfg)
    # 1. Temperature search on the probe prompts, 2. K samples per prompt at the chosen temperature and
    # the pool over all iterations so far, 3. fine-tune the policy (or a student) on the pool.
    search = search_temperature_step(cfg.model, cfg.prompts, cfg.sampling, cfg.rejection, cfg.scorer,
                                     here / "search_temperature")
    chosen = search["metrics"]["chosen"]
    previous = [p for i in range(1, iteration)
                if (p := _campaign_dir(cfg) / f"iter-{i}" / "rejection_sample" / "candidates.parquet").is_file()]
    rs = rejection_sample_step(cfg.model, cfg.prompts, replace(cfg.sampling, temperature=chosen), cfg.rejection,
                               cfg.scorer, iteration, previous, here / "rejection_sample")
    student = replace(cfg.model, name_or_path=cfg.rejection.student) if cfg.rejection.student else cfg.model
    policy = sft_step(student, DataConfig(path=str(here / "rejection_sample" / "pool_sft.jsonl")), cfg.sft,
                      here / "train_policy")
    m = rs["metrics"]
    print("\ntemperature search (mean max-of-K reward):")
    for t, v in search["metrics"]["curve"].items():
        print(f"  T={t}: {v:.3f}{'  <- chosen' if float(t) == chosen else ''}")
    print(f"pool: {m['pool_size']} prompts, mean score {m['pool_mean_score']:.3f}, by iteration "
          f"{m['pool_by_iteration']}; best-of-K gain over the median: {m['gain']}")
    print(f"new policy: {here / 'train_policy'} (train loss {policy['metrics']['train_loss_first']:.3f} -> "
          f"{policy['metrics']['train_loss_last']:.3f})")
    return 0


def cmd_ppo(overrides: list[str]) -> int:
    from dataclasses import replace

    from rlhf_core.steps.ppo import ppo_step

    from .config import compose_config
    from .iteration import ppo_eval_prompts

    cfg = compose_config(overrides)
    out_dir = Path(cfg.io.output) if cfg.io.output else _iteration_dir(cfg) / "ppo"
    manifest = ppo_step(cfg.model, cfg.scorer, replace(cfg.prompts, n=cfg.ppo.n_prompts), ppo_eval_prompts(cfg),
                        cfg.sampling, cfg.ppo, out_dir)
    m = manifest["metrics"]
    print(f"\nPPO policy: {out_dir}\n  {m['steps']} iterations{' (early-stopped)' if m['early_stopped'] else ''}, "
          f"held-out reward {m['reward_start']:.3f} -> {m['reward_end']:.3f} (best at iteration {m['best_step']}), "
          f"KL to the reference {m['kl_end']:.3f}\n  seconds per iteration: rollout "
          f"{m['seconds_per_step/rollout_s']:.1f}, scoring {m['seconds_per_step/score_s']:.1f}, update "
          f"{m['seconds_per_step/update_s']:.1f}")
    return 0


COMMANDS = {c.name: c for c in [
    Command("run", "A whole campaign: SFT, then RLHF-V1..V<campaign.iterations> as Prefect flows, tracked in "
                   "MLflow; rerunning it skips what finished and resumes what failed.",
            "rlhf run experiment=smoke campaign.name=try1", cmd_run),
    Command("iterate", "The campaign's next iteration (or campaign.iteration=<n>), everything before it cached.",
            "rlhf iterate experiment=demo campaign.name=demo", cmd_iterate),
    Command("resume", "Rerun a campaign with the config it last ran with (without debug.fail_at).",
            "rlhf resume demo   (or: rlhf resume campaign.name=demo)", cmd_resume),
    Command("report", "Write the campaign's report (report.md, report.html, PNG plots) and attach it to MLflow.",
            "rlhf report demo   (or: rlhf report campaign.name=demo campaign.root=./runs)", cmd_report),
    Command("serve", "Serve the campaign's next-iteration flow on a schedule, or run it when a file lands.",
            "rlhf serve experiment=demo campaign.name=demo orchestration.interval=86400", cmd_serve),
    Command("ui", "Open the MLflow UI on the campaigns' tracking store (io.port, default 5000).",
            "rlhf ui campaign.root=./runs", cmd_ui),
    Command("sft", "Assistant-only supervised fine-tuning; writes <root>/<name>/iter-0/sft (a model dir).",
            "rlhf sft model=tiny data.path=chats.jsonl sft.epochs=1 campaign.name=try1", cmd_sft),
    Command("annotate", "Label a pairs file with the configured annotator (simulated | file | human).",
            "rlhf annotate io.input=pairs.jsonl io.output=labelled.parquet annotator.rater.noise=0.2",
            cmd_annotate),
    Command("sample", "Sample K answers per prompt (prompts.path, or generated prompts); writes samples.parquet.",
            "rlhf sample prompts.n=32 rejection.k=4 sampling.temperature=0.8 sampling.max_new_tokens=64",
            cmd_sample),
    Command("rs", "One rejection-sampling round: temperature search, best-of-K pool over all iterations, "
                  "fine-tune on the pool.",
            "rlhf rs model.name_or_path=runs/c/iter-0/sft scorer.helpful=runs/c/iter-1/rm-helpful "
            "campaign.name=c campaign.iteration=1", cmd_rs),
    Command("ppo", "PPO of a policy against reward models, KL-penalised to the starting policy; writes "
                   "<campaign>/iter-<n>/ppo (a model dir).",
            "rlhf ppo model.name_or_path=runs/c/iter-1/train_policy scorer.helpful=runs/c/iter-1/rm-helpful "
            "scorer.safety=runs/c/iter-1/rm-safety ppo.steps=20 campaign.name=c", cmd_ppo),
    # A two-word name ("rm train") is run as `rlhf rm train`: build_parser nests it under "rm".
    *(Command(f"rm {name}", summary, example, run) for name, summary, example, run in RM_SUBCOMMANDS),
    *(Command(f"gatt {name}", summary, example, run) for name, summary, example, run in GATT_SUBCOMMANDS),
]}


def _print_config(overrides: list[str]) -> int:
    from .config import compose_config, to_yaml

    print(to_yaml(compose_config(overrides)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Llama 2-style RLHF as workflow DAGs. Each command takes key=value config overrides.",
        epilog="commands:\n" + "\n".join(f"  {c.name:<10} {c.summary}\n  {'':<10} e.g. {c.example}"
                                         for c in COMMANDS.values()))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for c in COMMANDS.values():
        group, _, leaf = c.name.rpartition(" ")
        if group and group not in groups:
            members = "|".join(n.split(" ")[1] for n in COMMANDS if n.startswith(group + " "))
            groups[group] = sub.add_parser(group, help=f"{group} {members} (see rlhf {group} --help)").add_subparsers(
                dest="subcommand", metavar="SUBCOMMAND", required=True)
        p = (groups[group] if group else sub).add_parser(
            leaf, help=c.summary, formatter_class=argparse.RawDescriptionHelpFormatter, description=c.summary,
            epilog=textwrap.dedent(f"""\
                example:
                  {c.example}
                overrides are Hydra-style: key=value (see the keys with --cfg)"""))
        p.add_argument("overrides", nargs="*", help="config overrides, key=value")
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        p.set_defaults(run=c.run)
    return parser


def _campaign_shorthand(overrides: list[str]) -> list[str]:
    """A bare first word names the campaign: `rlhf resume demo` = `rlhf resume campaign.name=demo`."""
    if overrides and "=" not in overrides[0] and not overrides[0].startswith(("+", "~")):
        return [f"campaign.name={overrides[0]}", *overrides[1:]]
    return overrides


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("rlhf").setLevel(logging.INFO)
    for noisy in ("httpx", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        overrides = _campaign_shorthand(args.overrides)
        if args.cfg:
            return _print_config(overrides)
        return args.run(overrides)
    except RLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
