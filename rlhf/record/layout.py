"""A campaign on disk: where its steps write, its lock, its summary.

::

    <root>/<name>/                 the campaign directory (campaign.root, campaign.name)
      config.yaml                  the resolved config of the latest run (what `rlhf resume` reruns)
      summary.json                 results per iteration, for scripts (no MLflow needed)
      .lock                        held while a run is in progress
      iter-0/sft, iter-0/seed_pairs
      iter-<n>/collect_pairs, annotate, rm-helpful, rm-safety, rm-<name>-eval, search_temperature,
              rejection_sample, train_policy, [ppo], [gatt], evaluate
      report/                      the campaign report (rlhf.record.report)

Inside ``iter-<n>`` each step's directory and file names are its output contract
(``rlhf.core.steps.outputs``).
    <root>/mlflow.db, <root>/mlartifacts/   the default MLflow store (tracking.uri)
    <root>/.prefect/               the default PREFECT_HOME (Prefect's local database and results)
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import re
import shutil
import socket
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rlhf.core.artifacts import read_manifest, write_json, write_text
from rlhf.core.digests import default_cache_dir
from rlhf.core.errors import ConfigError, RLHFError
from rlhf.core.steps.outputs import EVALUATE

CONFIG_FILE, SUMMARY_FILE = "config.yaml", "summary.json"
ITERATION_PREFIX = "iter-"
ITERATION_DIR = re.compile(rf"{ITERATION_PREFIX}(\d+)")


class CampaignLocked(RLHFError):
    """Another run holds the campaign's lock."""


def local_root(root: str | Path) -> Path:
    """Where the files of campaigns under ``root`` (``campaign.root``) live on this machine: the folder
    itself, or for object storage (``s3://bucket/prefix``) its working copy,
    ``<RLHF_CACHE_DIR or ~/.cache/rlhf>/campaigns/s3/<bucket>/<prefix>``: the config, summary, report, Prefect
    home and default MLflow store, and each step's output before it is uploaded (``rlhf.storage``)."""
    root = str(root)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", root)
    if scheme is None or scheme[1] in ("file", "local"):
        return Path(urllib.parse.unquote(root.split("://", 1)[1]) if scheme else root).resolve()
    return working_copy(root)


def working_copy(url: str) -> Path:
    """Where anything under an object-storage URL lives on this machine:
    ``<RLHF_CACHE_DIR or ~/.cache/rlhf>/campaigns/<scheme>/<bucket>/<key...>``, the URL's path kept, so the
    working copy of a campaign and of any of its outputs agree."""
    scheme, _, rest = url.partition("://")
    parts = [re.sub(r"[^A-Za-z0-9._=-]+", "-", part) for part in rest.split("/") if part not in ("", ".", "..")]
    return default_cache_dir().joinpath("campaigns", scheme, *parts)


def campaign_dir(cfg) -> Path:
    """The campaign's folder on this machine (for a campaign on object storage, its working copy)."""
    return local_root(cfg.campaign.root) / cfg.campaign.name


def campaign_names(root: str | Path) -> list[str]:
    """The campaigns under ``root``: its directories that hold a ``config.yaml`` or a ``summary.json``."""
    root = Path(root)
    return sorted(path.name for path in root.iterdir() if path.is_dir() and (
        (path / CONFIG_FILE).is_file() or (path / SUMMARY_FILE).is_file())) if root.is_dir() else []


def no_such_campaign(root: str | Path, name: str) -> ConfigError:
    """The error for a campaign name with no campaign behind it, listing the campaigns there are."""
    root = Path(root).resolve()
    names = campaign_names(root)
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    there = (f"the campaigns there: {', '.join(names)}" + (f"; did you mean {' or '.join(near)}?" if near else "")
             if names else "it holds none" if root.is_dir() else "no such folder")
    return ConfigError("campaign.name", f"no campaign {name!r} under {root} ({there}): run the campaign first, "
                                        f"`rlhf run campaign.name={name} ...` (campaign.root says where campaigns "
                                        "live)")


def iteration_dir(cfg, iteration: int) -> Path:
    """``<campaign>/iter-<n>``: every step of iteration n writes its output directory in it."""
    return campaign_dir(cfg) / f"{ITERATION_PREFIX}{iteration}"


def finished(out_dir: str | Path) -> bool:
    """A step output exists: its manifest (written last, inside the atomic rename) is there and readable.
    Whether its files are still what the manifest says is :func:`rlhf.core.artifacts.verify_output`'s
    question."""
    return read_manifest(out_dir) is not None


@contextmanager
def campaign_lock(directory: Path) -> Iterator[None]:
    """Hold ``<campaign>/.lock`` for the duration. A second run on the same campaign fails at once with
    who holds it. The OS releases the lock when the holder dies, so a crash never leaves it stuck. A
    campaign directory created here that holds nothing but empty folders when the block ends (the command
    failed before writing) is removed, with the lock and the parent folders created for it."""
    created = [path for path in (directory, *directory.parents) if not path.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CampaignLocked(f"campaign {directory.name} ({directory}) is being run by {holder}; wait for it to "
                             "finish (or stop it), then rerun: finished steps will be cached") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    try:
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        if created and _only_empty_folders(directory, path):
            path.unlink()
            remove_empty_dirs(created)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _only_empty_folders(directory: Path, lock: Path) -> bool:
    """Nothing in ``directory`` but the lock file and (nested) empty folders."""
    return all(p == lock or (p.is_dir() and not p.is_symlink()) for p in directory.rglob("*"))


def remove_empty_dirs(paths) -> None:
    """Remove those of ``paths`` that are empty folders (or hold only empty folders), deepest first;
    anything with a file in it stays."""
    for top in sorted(paths, key=lambda p: len(Path(p).parts), reverse=True):
        top = Path(top)
        if not top.is_dir() or top.is_symlink():
            continue
        for folder in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()),
                             key=lambda p: len(p.parts), reverse=True):
            _rmdir(folder)
        _rmdir(top)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()  # only when empty
    except OSError:
        pass


# What an interrupted writer leaves: atomic_dir's temp and old dirs, atomic_file's temp files, a
# checkpoint's temp dir and a damaged checkpoint set aside. A live writer of this campaign would hold
# its lock, so with the lock held every one of them is dead.
LEFTOVERS = (".*.tmp-*", ".*.old-*", ".*.tmp", "*/.*.tmp-*", "*/.*.old-*", "*/.*.tmp",
             "*/.*.work/**/.tmp-step-*", "*/.*.work/**/.damaged-step-*")


def remove_leftovers(directory: Path) -> int:
    """Remove the temporary folders and files of dead runs in a campaign directory (call it with the
    campaign's lock held); returns how many were removed. Checkpoints (``.<step>.work``) stay: a rerun
    resumes from them."""
    removed = 0
    for pattern in LEFTOVERS:
        for path in directory.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_config(directory: Path, text: str) -> None:
    """The resolved config of the run in progress (``config.yaml``, what ``rlhf resume`` reruns)."""
    write_text(directory / CONFIG_FILE, text)


def write_summary(directory: Path, summary: dict) -> None:
    write_json(directory / SUMMARY_FILE, summary, sort_keys=False)


def read_summary(directory: Path) -> dict | None:
    """The campaign's ``summary.json``; None when there is none; an unreadable one is a clear error."""
    path = Path(directory) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise RLHFError(f"{path} is unreadable ({type(err).__name__}: {err}): rerun the campaign (every finished "
                        "step is cached) to write it again") from err


def last_finished_iteration(directory: Path) -> int:
    """The highest n whose evaluation finished (0: only SFT or nothing)."""
    done = [int(match.group(1)) for path in directory.glob(f"{ITERATION_PREFIX}*")
            if (match := ITERATION_DIR.fullmatch(path.name)) and finished(EVALUATE.dir(path))]
    return max(done, default=0)
