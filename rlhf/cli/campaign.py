"""``rlhf run | iterate | resume | report | serve | deploy | chat-server | ui``: the commands about whole campaigns.

Every one that starts Prefect prepares its environment first (``rlhf.flows.environment.prepare``), then
imports the flows: Prefect reads its settings when it is imported.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rlhf.core.errors import ConfigError, RLHFError
from rlhf.record.layout import (
    CONFIG_FILE,
    SUMMARY_FILE,
    campaign_dir,
    last_finished_iteration,
    local_root,
    no_such_campaign,
    read_summary,
    remove_leftovers,
)
from rlhf.record.summary import end_of_run_report
from rlhf.storage import is_url

from .common import Command, compose, prefect_prepared, writing


def _campaign(cfg, upto: int | None) -> int:
    if _finished(cfg, upto) is not None:
        return 0
    with prefect_prepared(cfg):
        from rlhf.flows.campaign import check_fault, run_campaign
        from rlhf.flows.iteration import check_slots

        check_slots(cfg)  # config mistakes before any server starts
        check_fault(cfg.debug.fail_at)
    summary = run_campaign(cfg, upto)
    print(end_of_run_report(summary))
    return 0


def _finished(cfg, upto: int | None) -> dict | None:
    """The summary of a campaign with nothing left to do (rlhf/record/finished.py), printed; else None. Neither
    Prefect nor torch's training code runs: a finished campaign's rerun takes the time of composing its config."""
    from rlhf.record.finished import STAMP_FILE, why_not_finished

    home = campaign_dir(cfg)
    if not cfg.orchestration.skip_finished or is_url(cfg.campaign.root) or not (home / STAMP_FILE).is_file():
        return None
    from rlhf.flows.config import to_dict

    last = upto or cfg.campaign.iterations
    if (why := why_not_finished(home, to_dict(cfg), last)) is not None:
        logging.getLogger("rlhf").info("%s: running the flow: %s", cfg.campaign.name, why)
        return None
    summary = read_summary(home)
    print(f"{cfg.campaign.name}: finished up to RLHF-V{last} with this config, code and inputs, every output "
          "as its manifest says: nothing to run (orchestration.skip_finished=false runs the flow anyway)")
    print(end_of_run_report(summary))
    return summary


def cmd_run(overrides: list[str]) -> int:
    return _campaign(compose(overrides), None)


def cmd_iterate(overrides: list[str]) -> int:
    cfg = compose(overrides)
    explicit = any(o.split("=")[0].lstrip("+") == "campaign.iteration" for o in overrides)
    upto = cfg.campaign.iteration if explicit else last_finished_iteration(campaign_dir(cfg)) + 1
    return _campaign(cfg, upto)


def cmd_resume(overrides: list[str]) -> int:
    from rlhf.flows.config import stored_config  # no Prefect: it is imported after prepare() (in _campaign)

    given = compose(overrides)  # campaign.name / campaign.root say which campaign
    return _campaign(stored_config(given.campaign.root, given.campaign.name), None)


def cmd_report(overrides: list[str]) -> int:
    cfg = compose(overrides)
    home = campaign_dir(cfg)
    if not home.is_dir():  # said before anything is created
        raise no_such_campaign(cfg.campaign.root, cfg.campaign.name)
    with writing(cfg):
        if not (read_summary(home) or {}).get("iterations"):
            name = cfg.campaign.name
            rerun = f"rlhf resume {name}" if (home / CONFIG_FILE).is_file() else f"rlhf run campaign.name={name} ..."
            raise RLHFError(f"campaign {name!r} has no finished iteration to report on ({home / SUMMARY_FILE} is "
                            f"missing or lists none): run the campaign first, `{rerun}`")
        with prefect_prepared(cfg):
            from rlhf.flows.campaign import publish_report

        remove_leftovers(home)  # e.g. the temp folder of a report that was killed
        path = publish_report(home)
        if cfg.io.output:  # a copy elsewhere, e.g. docs/results/<name> to commit (`make replicate`)
            from rlhf.record.report import copy_report

            path = copy_report(path.parent, Path(cfg.io.output)) / path.name
    html = path.with_suffix(".html")
    print(f"report: {path}" + (f"\n        {html}" if html.is_file() else "") + f"\nplots:  {path.parent / 'plots'}")
    return 0


def cmd_serve(overrides: list[str]) -> int:
    cfg = compose(overrides)
    orchestration = cfg.orchestration
    if not (orchestration.cron or orchestration.interval or orchestration.watch):
        raise ConfigError("orchestration.cron", "say when to run the next iteration: orchestration.cron='0 3 * * 1', "
                                                "orchestration.interval=<seconds> or orchestration.watch=<directory>")
    with prefect_prepared(cfg):
        from rlhf.flows.serve import check_schedule, serve

        check_schedule(orchestration.cron, orchestration.interval)  # before a server starts
    serve(cfg, overrides)
    return 0


def cmd_deploy(overrides: list[str]) -> int:
    cfg = compose(overrides)
    with prefect_prepared(cfg):  # a failure here leaves no folder behind
        from rlhf.flows.deploy import deploy

        done = deploy(cfg, overrides)  # config mistakes, a missing server or pool: before anything is registered
    print(f"deployment {done.name} (id {done.id}) on work pool {done.pool} of {done.api_url}\n"
          f"  parameters: overrides={done.overrides}\n  schedule:   {done.schedule}\n"
          f"run it now:  prefect deployment run '{done.name}'\n"
          f"a worker must poll the pool: prefect worker start --pool {done.pool} --type process")
    return 0


def cmd_ui(overrides: list[str]) -> int:
    from rlhf.tracking import tracking_uri

    cfg = compose(overrides)
    root = local_root(cfg.campaign.root)
    uri = tracking_uri(cfg.tracking.uri, root)
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(cfg.io.port)]
    if not cfg.tracking.uri:
        argv += ["--default-artifact-root", (root / "mlartifacts").as_uri()]
    print(f"MLflow UI on http://127.0.0.1:{cfg.io.port} for {uri} (Ctrl-C to stop)")
    os.execv(sys.executable, argv)
    return 0


def cmd_chat_server(overrides: list[str]) -> int:
    from rlhf.cli.chat_server import KEY_ENV, ChatServer
    from rlhf.core.pairwise import LocalChat

    cfg = compose(overrides)
    chat = LocalChat.load(cfg.model)
    server = ChatServer(lambda conversations, n: chat(conversations, n), cfg.model.name_or_path, cfg.io.port,
                        api_key=os.environ.get(KEY_ENV) or None)
    print(f"{cfg.model.name_or_path} on {server.url} (OpenAI-compatible chat completions; "
          f"{'a key from ' + KEY_ENV if server.api_key else 'no key'}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0


COMMANDS = [
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
    Command("deploy", "Register the campaign's next iteration as a deployment on a Prefect server's work pool "
                      "(PREFECT_WORK_POOL), run by its worker; optionally on orchestration.cron / .interval.",
            "rlhf deploy experiment=demo campaign.name=demo tracking=server", cmd_deploy),
    Command("chat-server", "Serve model=... greedily behind an OpenAI-compatible chat completions API on "
                           "127.0.0.1:io.port (a pairwise judge for eval.pairwise.url).",
            "rlhf chat-server model.name_or_path=smollm2 io.port=8000", cmd_chat_server),
    Command("ui", "Open the MLflow UI on the campaigns' tracking store (io.port, default 5000).",
            "rlhf ui campaign.root=./runs", cmd_ui),
]
