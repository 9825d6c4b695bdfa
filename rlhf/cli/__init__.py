"""The ``rlhf`` command line. Every command takes Hydra-style ``key=value`` overrides.

Commands live by family: ``campaign`` (run, iterate, resume, report, serve, ui), ``steps`` (sft, annotate,
sample, rs, ppo), ``rm`` and ``gatt``. User mistakes (bad data, bad config keys) print one clear message
and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import textwrap
import threading

from rlhf.core.errors import RLHFError
from rlhf.core.training import forget_interrupts, on_interrupt, raise_if_interrupted

from . import campaign, gatt, rm, steps
from .common import compose

COMMANDS = {command.name: command for command in [*campaign.COMMANDS, *steps.COMMANDS, *rm.COMMANDS,
                                                  *gatt.COMMANDS]}


def _print_config(overrides: list[str]) -> int:
    from rlhf.flows.config import to_yaml

    print(to_yaml(compose(overrides)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Llama 2-style RLHF as workflow DAGs. Each command takes key=value config overrides.",
        epilog="commands:\n" + "\n".join(f"  {command.name:<10} {command.summary}\n  {'':<10} e.g. {command.example}"
                                         for command in COMMANDS.values()))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS.values():
        group, _, leaf = command.name.rpartition(" ")
        if group and group not in groups:
            members = "|".join(name.split(" ")[1] for name in COMMANDS if name.startswith(group + " "))
            groups[group] = sub.add_parser(group, help=f"{group} {members} (see rlhf {group} --help)").add_subparsers(
                dest="subcommand", metavar="SUBCOMMAND", required=True)
        leaf_parser = (groups[group] if group else sub).add_parser(
            leaf, help=command.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=command.summary, epilog=textwrap.dedent(f"""\
                example:
                  {command.example}
                overrides are Hydra-style: key=value (see the keys with --cfg)"""))
        leaf_parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
        leaf_parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        leaf_parser.set_defaults(run=command.run)
    return parser


def _campaign_shorthand(overrides: list[str]) -> list[str]:
    """A bare first word names the campaign: `rlhf resume demo` = `rlhf resume campaign.name=demo`. A word
    that names a config group or key instead (`rlhf run experiment`, a forgotten `=smoke`) is an error
    listing what it takes, never a campaign of that name."""
    if overrides and "=" not in overrides[0] and not overrides[0].startswith(("+", "~")):
        from rlhf.flows.config import bare_word_error

        if (err := bare_word_error(overrides[0], exact=True)) is not None:
            raise err
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
    # SIGTERM (a scheduler, `kill`) stops a run the way Ctrl-C does: flow and MLflow runs are ended, the
    # temporary Prefect server is stopped, the lock is released, nothing half-written is left in place. Both
    # are remembered, so one whose exception a finalizer swallowed still stops the run at the next step
    # (rlhf.core.training.on_interrupt), or, if none is left, still ends it with 130. A SIGINT ignored from the
    # start (a background job of a non-interactive shell, nohup) stays ignored, as Python leaves it.
    forget_interrupts()
    signal.signal(signal.SIGTERM, on_interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        overrides = _campaign_shorthand(args.overrides)
        if args.cfg:
            return _print_config(overrides)
        status = args.run(overrides)
        raise_if_interrupted()
        return status
    except RLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished steps are kept; rerun (or `rlhf resume <campaign>`) to continue",
              file=sys.stderr)
        return 130
    except Exception as err:
        if (problem := storage_problem(err)) is None:
            raise  # a bug: keep the traceback
        print(f"error: {problem}: make room (or point campaign.root at another disk), then rerun: finished steps "
              "are kept and a failed step resumes from its checkpoint", file=sys.stderr)
        return 2


# The storage failures a user fixes (a full or read-only disk, no permission), by errno and by the text
# libraries that do not raise OSError put in their messages (safetensors, arrow).
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
STORAGE_TEXTS = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def storage_problem(err: BaseException) -> str | None:
    """What a failed write ran into, with the path when known, if it is the disk's fault; else None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return f"{err.filename}: {STORAGE_ERRNOS[err.errno]}" if err.filename else STORAGE_ERRNOS[err.errno]
        if any(text in str(err) for text in STORAGE_TEXTS):
            return " ".join(str(err).split())[:300]
        err = err.__cause__ or err.__context__
    return None


def run() -> None:
    """The ``rlhf`` command as a process (the console script, ``python -m rlhf``): :func:`main`, then exit
    with its status; after an interrupt, surely (:func:`exit_even_if_stuck`). ``main`` itself stays safe to
    call in-process."""
    status = main()
    if status == 130:
        exit_even_if_stuck(status)
    sys.exit(status)


def exit_even_if_stuck(status: int, grace: float = 10.0) -> None:
    """After an interrupt, make sure the process ends. Interpreter shutdown joins every non-daemon thread,
    and a library can start one late in it: seen once in CI, an idle executor worker of Prefect's event
    loop (created after the executors were shut down) kept a Ctrl-C'd run alive forever. Everything that
    matters is done by now (runs ended, lock released, the Prefect server stopped), so a daemon timer ends
    the process with ``status`` if it is still here ``grace`` seconds later."""
    timer = threading.Timer(grace, _exit_now, args=(status,))
    timer.daemon = True
    timer.start()


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

