"""A finished campaign's stamp: what lets ``rlhf run`` on a campaign that has nothing left to do say so at once,
without starting Prefect or importing torch (docs/design.md#caching-and-resume).

A rerun through the flow finds every step Cached and is correct, but costs a Prefect server, the flow's
imports and a rebuilt report: ~14 s from the shell for the smoke campaign, whose steps take none of it. So
the campaign flow, once every iteration up to its last has finished, writes ``finished.json`` (temp file,
then rename) holding:

- ``key``: a hash of the resolved config, the iteration it ran up to, the platform's code (every Python
  file of the package, not only the core: the flows decide what a step is given), and the content digest
  of every input file the config names (the same paths a step's cache key digests);
- ``outputs``: every step output of the campaign folder (``iter-<n>/<step>/manifest.json``) with its key;
- the digests of ``summary.json`` and the report, and the MLflow store the runs were logged to.

:func:`finished_summary` checks all of it again -- the key, each output still what its manifest records
(``verify_output``: sizes, then remembered SHA-256s), summary and report unchanged, a local MLflow store
still there -- and returns the summary only when everything holds. Anything else (an edited data file, a
damaged output, a changed override, new code, a half-written stamp) returns None, and the CLI runs the
flow, which reruns what it must. The flow deletes the stamp before it changes anything, so a running,
failed or killed run never leaves one behind. ``orchestration.skip_finished=false`` always runs the flow.

Neither Prefect nor torch is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.core.artifacts import read_manifest, source_digest, stable_hash, verify_output, write_json
from rlhf.core.digests import file_digest, with_input_digests
from rlhf.record.layout import SUMMARY_FILE, read_summary

STAMP_FILE = "finished.json"
REPORT_FILE = "report/report.md"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rlhf/: with rlhf.core, .flows, .tasks mapped into it
SOURCE_DIRS = ("rlhf_core", "flows", "tasks", "rlhf")  # a source checkout; an installed wheel keeps them in rlhf/
# Config sections that say where and how a campaign runs, not what its steps compute: their paths (the
# campaign root, the Prefect home, an output folder) are not inputs, and they are hashed as values only.
NOT_INPUTS = frozenset({"campaign", "tracking", "orchestration", "debug", "io"})


def platform_code() -> str:
    """Hash of the platform's Python sources (core, flows, tasks, command line)."""
    root = PACKAGE_DIR.parent
    dirs = [root / name for name in SOURCE_DIRS if (root / name).is_dir()]
    return stable_hash([source_digest(d) for d in dirs] if len(dirs) > 1 else [source_digest(PACKAGE_DIR)])


def stamp_key(resolved: dict, upto: int) -> str:
    """The key a finished campaign's stamp must carry for a rerun of ``resolved`` up to ``upto`` to skip (the
    switch ``orchestration.skip_finished`` itself left out: a run through the flow stamps for both)."""
    inputs = {name: with_input_digests(section) for name, section in resolved.items() if name not in NOT_INPUTS}
    config = {**resolved, "orchestration": {k: v for k, v in (resolved.get("orchestration") or {}).items()
                                            if k != "skip_finished"}}
    return stable_hash({"config": config, "upto": upto, "code": platform_code(), "inputs": inputs})


def _outputs(home: Path) -> dict[str, str]:
    """Every step output of the campaign folder: its path relative to ``home`` -> its manifest's key."""
    manifests = {path.parent: read_manifest(path.parent) for path in sorted(home.glob("iter-*/*/manifest.json"))}
    return {out.relative_to(home).as_posix(): manifest["key"] for out, manifest in manifests.items() if manifest}


def _local_store(uri: str | None) -> Path | None:
    """The file or folder of a local MLflow store (``sqlite:///path``, ``file:path`` or a bare path); None
    for a server."""
    if not uri:
        return None
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//"))
    return None if "://" in uri else Path(uri)


def clear_stamp(home: Path) -> None:
    """Delete the stamp (before a run changes anything in the campaign)."""
    (Path(home) / STAMP_FILE).unlink(missing_ok=True)


def write_stamp(home: Path, resolved: dict, upto: int) -> Path:
    """Stamp the campaign in ``home`` finished up to ``upto`` with ``resolved`` (after its summary and report)."""
    home = Path(home)
    summary = read_summary(home) or {}
    stamp = {"key": stamp_key(resolved, upto), "upto": upto, "outputs": _outputs(home),
             "summary": file_digest(home / SUMMARY_FILE),
             "report": file_digest(home / REPORT_FILE) if (home / REPORT_FILE).is_file() else None,
             "tracking_uri": summary.get("tracking_uri")}
    write_json(home / STAMP_FILE, stamp)
    return home / STAMP_FILE


def why_not_finished(home: Path, resolved: dict, upto: int) -> str | None:
    """Why a rerun of ``resolved`` up to ``upto`` must go through the flow, or None when the campaign in
    ``home`` is finished with exactly that config, code, inputs and outputs."""
    home = Path(home)
    try:
        stamp = json.loads((home / STAMP_FILE).read_text())
    except FileNotFoundError:
        return "no finished run of it is recorded"
    except (OSError, ValueError) as err:
        return f"{home / STAMP_FILE} is unreadable ({err})"
    if not isinstance(stamp, dict) or stamp.get("key") != stamp_key(resolved, upto):
        return "its config, inputs, code or iterations differ from the finished run's"
    for name, key in (stamp.get("outputs") or {}).items():
        _, problem = verify_output(home / name, key)
        if problem:
            return f"{home / name}: {problem}"
    if not (home / SUMMARY_FILE).is_file() or file_digest(home / SUMMARY_FILE) != stamp.get("summary"):
        return f"{home / SUMMARY_FILE} changed since the run finished"
    if stamp.get("report") and (not (home / REPORT_FILE).is_file()
                                or file_digest(home / REPORT_FILE) != stamp["report"]):
        return f"{home / REPORT_FILE} changed since the run finished"
    store = _local_store(stamp.get("tracking_uri"))
    if store is not None and not store.exists():
        return f"its MLflow store {store} is gone"
    return None


def finished_summary(home: Path, resolved: dict, upto: int) -> dict | None:
    """The campaign's summary when a rerun has nothing to do (:func:`why_not_finished` is None), else None."""
    return read_summary(home) if why_not_finished(home, resolved, upto) is None else None
