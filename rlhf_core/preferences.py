"""Preference pairs: load, validate and split the reward models' data (Llama 2 §3.2.1, §3.2.2).

One pair is one DataFrame row (column = key):

- ``prompt``    list of chat messages ``{"role", "content"}`` (roles system/user/assistant),
                ending with the user turn both answers reply to
- ``chosen``, ``rejected``  the two assistant answers (non-empty strings)
- ``level``     how much better ``chosen`` is: one of :data:`LEVELS`; missing/null = unknown,
                stored as NaN (test with ``df.level.isna()``)
- ``source``    where the pair came from (default ``"file"``; ``"hh-rlhf"`` for HH transcripts)
- ``iteration`` the batch / RLHF iteration that produced it (int >= 0, default 0)
- ``safety``    True if the prompt is an unsafe request, False if not, None if untagged

Extra fields are kept as extra columns. Files are JSONL (one object per line), gzip-compressed JSONL
(``.jsonl.gz``, as Anthropic ships HH-RLHF) or Parquet. Besides this schema, three public formats are
detected from the first recognisable record and converted to it:

- Anthropic HH-RLHF: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``. The prompt
  is the text chosen and rejected share, up to the last ``"\\n\\nAssistant:"`` marker they share; each
  answer is everything after it (so an answer that itself contains that text is kept whole).
- TRL standard: ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` (the prompt is one user turn).
- TRL conversational: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``, or without
  ``prompt`` ("implicit prompt": chosen and rejected are whole conversations sharing a prefix). The
  prompt is the messages they share; what follows must be one assistant message in each.

A bad record is an error (``on_bad_record="error"``: every problem listed, nothing loaded) or, with
``on_bad_record="skip"``, dropped, logged and counted in the :class:`LoadReport` (``file:line: reason``).

Example::

    pairs, report = load_pairs("labels.jsonl")                     # or "hh-train.jsonl.gz", "pairs.parquet"
    pairs, report = load_pairs("hh-train.jsonl.gz", on_bad_record="skip")   # report.skipped: what was dropped
    train, test = split_pairs(pairs, n_test=1000, seed=0)   # the paper: 1,000 test pairs per batch
"""

from __future__ import annotations

import logging
import numbers
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from rlhf.core.artifacts import iter_jsonl
from rlhf.core.errors import ConfigError, DataError, DataErrors

LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
"""The four annotation levels, strongest first (§3.2.1; "negligibly better" includes "unsure")."""

ROLES = ("system", "user", "assistant")
"""The roles of a chat message, in pairs' prompts and in conversation files (``rlhf.core.data``). Here
rather than in ``rlhf.core.chat`` because this module stays free of torch: the campaign record imports
it (for :data:`LEVELS`)."""

COLUMNS = ("prompt", "chosen", "rejected", "level", "source", "iteration", "safety")

ON_BAD_RECORD = ("error", "skip")
"""What a loader does with a bad record: ``error`` lists every problem and loads nothing; ``skip`` drops
each bad record, logs it (``file:line: reason``) and counts it."""

RECORD_FORMATS = (".jsonl", ".jsonl.gz", ".parquet")
"""The file formats records are read from (by suffix)."""

FORMATS = ("pairs", "hh", "trl-standard", "trl-conversational", "trl-implicit")
"""The record formats :func:`load_pairs` converts (``LoadReport.format``)."""

log = logging.getLogger(__name__)

# One HH turn marker; a transcript may start with "Human:" without the blank line before it.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_ANSWER = "\n\nAssistant:"
_HH_HUMAN = "\n\nHuman:"
_HH_START = re.compile(r"^\s*Human:")
_SAME_CONVERSATION = "chosen and rejected must share the conversation and differ only in the final answer"

# report(field, message, hint=None) records one problem of the record being checked
Report = Callable[..., None]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pairs` read and dropped, so that no pair disappears silently."""

    path: str
    format: str                # one of FORMATS: "pairs" (this schema), "hh" (Anthropic HH-RLHF), "trl-..."
    n_read: int                # records read, bad ones included (blank JSONL lines are not records)
    n_dropped_identical: int   # pairs whose chosen and rejected were the same text
    dropped_lines: list[int]   # 1-based JSONL line / Parquet row of each dropped pair
    n_skipped_bad: int = 0     # bad records dropped (on_bad_record="skip")
    skipped_lines: list[int] = field(default_factory=list)  # their 1-based lines / rows
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of each, as logged

    @property
    def n_kept(self) -> int:
        return self.n_read - self.n_dropped_identical - self.n_skipped_bad

    def summary(self) -> str:
        """One line: format, records read and kept, what was dropped and why."""
        return (f"{self.path}: {self.format} format, {self.n_kept}/{self.n_read} pairs kept; "
                f"{self.n_skipped_bad} bad record(s) skipped, {self.n_dropped_identical} dropped as "
                "identical (chosen = rejected)")


class BadRecords(DataErrors):
    """The :class:`DataErrors` of a file with bad records, saying how to skip them instead."""

    def __init__(self, errors: list[DataError], option: str = "on_bad_record"):
        super().__init__(errors)
        self.args = (f"{self.args[0]}\n  (to drop the bad records instead, each logged and counted: {option}=skip)",)


def check_on_bad_record(value: Any, key: str = "on_bad_record") -> str:
    """``value`` if it is one of :data:`ON_BAD_RECORD`, else :class:`ConfigError` naming ``key``."""
    if value not in ON_BAD_RECORD:
        raise ConfigError(key, f"unknown value {value!r}; use error (a bad record fails the load, every problem "
                               "listed) or skip (drop each bad record, log it and count it)")
    return value


def load_pairs(path: str | Path, on_bad_record: str = "error",
               option: str = "on_bad_record") -> tuple[pd.DataFrame, LoadReport]:
    """Read preference pairs from ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` and validate every record.

    Returns ``(pairs, report)``: ``pairs`` has the columns :data:`COLUMNS` (then any extra fields)
    and a fresh RangeIndex; ``report`` says how many records were read and which lines were dropped
    because chosen and rejected are identical (compared without surrounding whitespace) -- such a
    pair carries no preference. Drops are also logged as a warning.

    A bad record (not JSON, not an object, a missing or invalid field): with ``on_bad_record="error"``
    raises :class:`DataErrors` listing every problem (file, 1-based line or row, field, what to do),
    nothing is returned from a partly invalid file (the message ends with how to skip bad records:
    ``<option>=skip``, ``option`` naming the setting); with ``"skip"`` each bad record is dropped, logged
    as a warning (``file:line: reason``) and listed in ``report.skipped`` -- unless every record is bad,
    which raises as ``"error"`` does. An unreadable file (missing, unsupported suffix, corrupt) always
    raises.
    """
    check_on_bad_record(on_bad_record)
    path = Path(path)
    try:
        records = read_records(path, what="preference pairs")
    except DataError as err:
        raise DataErrors([err]) from None
    fmt = _detect_format(records)
    parse = _PARSERS[fmt]

    errors: list[DataError] = []
    bad: list[tuple[int, list[DataError]]] = []
    pairs: list[dict] = []
    dropped: list[int] = []
    for line, record in records:
        if isinstance(record, DataError):
            problems = [record]
        else:
            pair, problems = _check_record(path, line, record, parse)
        if problems:
            errors.extend(problems)
            bad.append((line, problems))
        elif pair["chosen"].strip() == pair["rejected"].strip():
            dropped.append(line)
        else:
            pairs.append(pair)
    if errors and len(bad) == len(records):
        raise DataErrors(errors)  # nothing would be left: skipping is no way out
    if errors and on_bad_record == "error":
        raise BadRecords(errors, option)

    skipped = [skipped_reason(path, line, problems) for line, problems in bad]
    for text in skipped:
        log.warning("skipped bad record (on_bad_record=skip): %s", text)
    if skipped:
        log.warning("%s: skipped %d bad record(s) of %d", path, len(skipped), len(records))
    if dropped:
        shown = ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else "")
        log.warning("%s: dropped %d pair(s) whose chosen and rejected are identical (lines %s)",
                    path, len(dropped), shown)
    report = LoadReport(str(path), fmt, len(records), len(dropped), dropped, len(bad), [line for line, _ in bad],
                        skipped)
    return _to_frame(pairs), report


def split_pairs(df: pd.DataFrame, n_test: int | float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out test pairs from each ``iteration`` batch (the paper keeps 1,000 per batch, §3.2.2).

    ``n_test`` is a count per batch (int >= 0) or a fraction of each batch (float in (0, 1)),
    rounded to the nearest pair. Without an ``iteration`` column the whole frame is one batch.
    Returns ``(train, test)`` with the original index labels, in the original row order.

    A batch's test pairs depend only on ``seed``, its iteration number and its own rows, so adding
    later batches never moves an earlier pair between train and test: held-out pairs stay
    held out when the RMs are retrained on all data so far.
    Raises ValueError if ``n_test`` is neither (see :func:`check_n_test`) or a count is larger than its batch.
    """
    check_n_test(n_test)
    if "iteration" in df.columns:
        batches = df.groupby("iteration", sort=True, dropna=False).indices
    else:
        batches = {0: np.arange(len(df))}
    is_test = np.zeros(len(df), dtype=bool)
    for iteration, positions in batches.items():
        k = _test_count(n_test, len(positions), iteration)
        rng = np.random.default_rng([seed, int(iteration)])
        is_test[positions[rng.permutation(len(positions))[:k]]] = True
    return df[~is_test], df[is_test]


AXES = ("helpfulness", "safety")
"""The two annotation axes (§3.2.1): which answer is more helpful, and which is safer."""

TWO_AXIS_COLUMNS = ("chosen_safe", "rejected_safe", "safety_prefers", "safety_level")
"""The safety axis of a labelled pair (``rlhf.core.annotators``): each answer's safety label, which of the two
the safety preference picks (``"chosen"``, ``"rejected"`` or missing) and its level."""


def has_two_axes(df: pd.DataFrame) -> bool:
    """True for labelled pairs that carry the safety axis beside the helpfulness preference."""
    return all(column in df.columns for column in TWO_AXIS_COLUMNS)


SIDE_COLUMNS = (("chosen", "rejected"), ("chosen_safe", "rejected_safe"), ("gold_chosen", "gold_rejected"),
                ("safety_gold_chosen", "safety_gold_rejected"))
"""Columns that belong to one side of a labelled pair: they swap when the chosen side does."""
SAFETY_VIEW = {"level": "safety_level", "gold_chosen": "safety_gold_chosen", "gold_rejected": "safety_gold_rejected",
               "p_agree": "safety_p_agree"}
"""The axis-dependent columns of a labelled pair and their safety-axis counterparts (the gold ones and
``p_agree`` only the simulated rater writes: ``rlhf.core.annotators``)."""


def safer_first(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of two-axis labelled pairs where each pair with a safety preference is seen on the safety axis:
    the safer answer as ``chosen`` (the columns of :data:`SIDE_COLUMNS` swapped along), and ``level``, the
    gold scores and ``p_agree`` those of the safety axis (:data:`SAFETY_VIEW`); pairs without one are
    unchanged."""
    out = df.copy()
    has, swap = out["safety_prefers"].isin(["chosen", "rejected"]), out["safety_prefers"].eq("rejected")
    for a, b in SIDE_COLUMNS:
        if a in out.columns:
            # a copy: when every row swaps, to_numpy() can be a view of the block being written, and the second
            # column would then read the first one's new values (both answers the same)
            out.loc[swap, [a, b]] = out.loc[swap, [b, a]].to_numpy(copy=True)
    for column, safety_column in SAFETY_VIEW.items():
        if safety_column in out.columns:
            out.loc[has, column] = out.loc[has, safety_column]
    return out


def axis_pairs(df: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, int]:
    """The pairs of one annotation ``axis`` of two-axis labelled pairs, and how many were dropped.

    ``helpfulness``: every pair as labelled (``chosen``, ``rejected``, ``level``). ``safety``: the pairs with
    a safety preference, ``chosen`` the safer answer and ``level`` its safety level; as in Llama 2 (§3.2.1), a
    pair whose safer answer was labelled unsafe while the other was labelled safe is dropped (a rater
    contradicting themself) and counted. Row labels are kept, so both axes' rows of one pair share it.
    """
    if axis not in AXES:
        raise ConfigError("reward.*.axis", f"unknown axis {axis!r}; one of {', '.join(AXES)}")
    if axis == "helpfulness":
        return df, 0
    pairs = safer_first(df[df["safety_prefers"].isin(["chosen", "rejected"])])
    contradicts = ~pairs["chosen_safe"].astype(bool) & pairs["rejected_safe"].astype(bool)
    return pairs[~contradicts], int(contradicts.sum())


VARIANT_COLUMNS = ("chosen_variant", "rejected_variant")
"""Where each answer of a labelled pair came from (:func:`variant_label`: the model variant it was sampled from
and its temperature); missing for pairs that did not come from ``collect_pairs``."""


def variant_label(variant: str, temperature: float) -> str:
    """Where one answer of a pair came from: its model variant (``collect.variants``) and temperature, e.g.
    ``policy T0.7``. A model given by path or hub id is named by its last part (the collect step's manifest
    has the whole path); the label is a valid MLflow metric name part (letters, digits, ``_.-`` and space)."""
    name = re.sub(r"[^\w.\-]", "_", str(variant).rstrip("/").rsplit("/", 1)[-1]) or "model"
    return f"{name} T{temperature:g}"


def preference_by_variant(df: pd.DataFrame) -> dict[str, dict]:
    """Per answer source of labelled pairs (:data:`VARIANT_COLUMNS`): in how many pairs it answered (``n``) and
    the share of them where its answer was preferred (``preferred``); on the safety axis, where labelled, the
    same over the pairs with a safety preference (``n_safety``, ``safer``). A pair whose two answers share a
    source counts for it once, preferred half the time. ``{}`` when the pairs do not record their sources."""
    if not all(c in df.columns for c in VARIANT_COLUMNS) or df[list(VARIANT_COLUMNS)].isna().all(axis=None):
        return {}
    safer = df["safety_prefers"] if "safety_prefers" in df.columns else pd.Series(None, index=df.index)
    out: dict[str, dict] = {}
    for chosen, rejected, prefers in zip(df["chosen_variant"], df["rejected_variant"], safer):
        for variant, won, safer_won in ((chosen, 1.0, prefers == "chosen"), (rejected, 0.0, prefers == "rejected")):
            entry = out.setdefault(str(variant), {"n": 0.0, "won": 0.0, "n_safety": 0.0, "safer": 0.0})
            weight = 0.5 if chosen == rejected else 1.0
            entry["n"] += weight
            entry["won"] += weight * won
            if prefers in ("chosen", "rejected"):
                entry["n_safety"] += weight
                entry["safer"] += weight * safer_won
    return {variant: {"n": int(e["n"]), "preferred": e["won"] / e["n"],
                      "n_safety": int(e["n_safety"]), "safer": e["safer"] / e["n_safety"] if e["n_safety"] else None}
            for variant, e in sorted(out.items())}


def check_n_test(n_test: Any) -> None:
    """ValueError unless ``n_test`` is a count (an int >= 0) or a fraction (a float in (0, 1))."""
    if isinstance(n_test, bool) or not isinstance(n_test, numbers.Real):
        raise ValueError(f"expected a count (an int >= 0) or a fraction of the pairs (a float in (0, 1)), "
                         f"got {n_test!r}")
    if isinstance(n_test, numbers.Integral):
        if n_test < 0:
            raise ValueError(f"a count must be >= 0, got {n_test}")
    elif not 0.0 < n_test < 1.0:
        raise ValueError(f"a float is a fraction of the pairs and must be in (0, 1), got {n_test}; give a count "
                         "as an int (0 = no test pairs)")


# ---- reading ----------------------------------------------------------------------------------

def record_format(path: str | Path, accepted: tuple[str, ...] = RECORD_FORMATS, what: str = "records") -> str:
    """The suffix of ``path`` among ``accepted`` (``.jsonl.gz`` is one suffix); :class:`DataError`
    naming the file and the accepted formats for any other."""
    name = Path(path).name.lower()
    for suffix in sorted(accepted, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    suffixes = Path(name).suffixes
    shown = "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else "".join(suffixes[-1:]) or "(none)"
    raise DataError(path, f"unsupported file type '{shown}'", hint=f"give {what} as {_one_of(accepted)}")


def read_records(path: str | Path, accepted: tuple[str, ...] = RECORD_FORMATS,
                 what: str = "records") -> list[tuple[int, Any]]:
    """``(line, record)`` for every record of a JSONL (``.jsonl``/``.json``, optionally gzip-compressed as
    ``.jsonl.gz``) or Parquet file: 1-based line numbers (blank lines are skipped but counted, so a number
    is the line an editor shows) or Parquet rows. A line that is not UTF-8 or not JSON yields its
    :class:`DataError` in place of a record, so problems can be listed in file order.

    Raises :class:`DataError` for the file itself: a suffix not in ``accepted`` (the error names them and
    ``what`` the file should hold), a missing file, or one that cannot be read (corrupt gzip or Parquet).
    Parquet cells come back as plain lists, dicts and None, as JSON would give them.
    """
    path = Path(path)
    suffix = record_format(path, accepted, what)
    if not path.is_file():
        raise DataError(path, "file not found", hint="check the path")
    if suffix == ".parquet":
        return _read_parquet(path)
    records: list[tuple[int, Any]] = []
    try:  # a bad line comes back as its DataError, in its place
        for number, value in iter_jsonl(path, on_error=lambda error: records.append((error.line, error))):
            records.append((number, value))
        return records
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        kind = "gzip-compressed JSONL" if suffix.endswith(".gz") else "the file"
        raise DataError(path, f"cannot read {kind} ({err})",
                        hint="check that the file is complete (and compressed with gzip for .gz)") from None


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    # pyarrow's to_pylist gives plain lists/dicts/None, as JSON would (pandas would give numpy
    # arrays and NaN); pyarrow.parquet is only imported when a Parquet file is read.
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt or non-Parquet file
        raise DataError(path, f"cannot read Parquet ({e})",
                        hint="check that the file is a valid Parquet file") from None
    return list(enumerate(rows, start=1))


def skipped_reason(path: str | Path, line: int, problems: list[DataError]) -> str:
    """``file:line: reason`` of a skipped record, its problems joined with '; '."""
    reasons = [p.message if p.field is None else f"field '{p.field}': {p.message}" for p in problems]
    return f"{path}:{line}: " + "; ".join(reasons)


def _one_of(suffixes: tuple[str, ...]) -> str:
    return suffixes[0] if len(suffixes) == 1 else ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}"


def _detect_format(records: list[tuple[int, Any]]) -> str:
    """The format of the first record whose shape is recognisable (see :func:`_record_format`);
    "pairs" if none is (its errors are the clearest)."""
    for _, record in records:
        fmt = _record_format(record)
        if fmt is not None:
            return fmt
    return "pairs"


def _record_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    prompt, chosen = record.get("prompt"), record.get("chosen")
    if "prompt" not in record:
        if isinstance(chosen, str) and _HH_START.match(chosen):
            return "hh"
        return "trl-implicit" if isinstance(chosen, list) else None
    if isinstance(prompt, str):
        return "trl-standard"
    if isinstance(prompt, list):
        if isinstance(chosen, list):
            return "trl-conversational"
        if isinstance(chosen, str):
            return "pairs"
    return None


def _check_record(path: Path, line: int, record: Any,
                  parse: Callable[[dict, Report], dict]) -> tuple[dict | None, list[DataError]]:
    """``(pair, [])`` for a valid record, ``(None, problems)`` otherwise."""
    problems: list[DataError] = []
    report = _reporter(path, line, problems)
    if not isinstance(record, dict):
        report(None, f"expected a JSON object, got {_type_name(record)}",
               "each line must be one object with prompt, chosen and rejected")
        return None, problems
    pair = parse(record, report)
    return (None if problems else pair), problems


# ---- validation: this platform's schema ---------------------------------------------------------

def _pair_from_record(record: dict, report: Report) -> dict:
    """Check one record of the pair schema; problems go to ``report``, the pair is returned."""
    _check_required(record, report, "add it, or remove this line")
    if "prompt" in record:
        _check_prompt(record["prompt"], report)
    for name in ("chosen", "rejected"):
        if name in record:
            _check_answer(record[name], name, report)
    return {**record, **_optional_fields(record, report, default_source="file")}


def _check_required(record: dict, report: Report, hint: str, names=("prompt", "chosen", "rejected")) -> None:
    for name in names:
        if name not in record:
            report(name, "missing required field", hint)


def _check_messages(messages: Any, name: str, report: Report) -> bool:
    """Report every problem of a list of ``{"role", "content"}`` messages in field ``name``; True if none."""
    found: list[str] = []

    def note(field: str | None, message: str, hint: str | None = None) -> None:
        found.append(message)
        report(field, message, hint)

    _report_messages(messages, name, note)
    return not found


def _report_messages(messages: Any, name: str, report: Report) -> None:
    if not isinstance(messages, list):
        report(name, f"expected a list of messages, got {_type_name(messages)}",
               'write it as [{"role": "user", "content": "..."}]')
        return
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            report(where, f"expected a message object, got {_type_name(message)}",
                   'write it as {"role": "user", "content": "..."}')
            continue
        for key in ("role", "content"):
            if key not in message:
                report(f"{where}.{key}", "missing required field", "every message needs role and content")
            elif not isinstance(message[key], str):
                report(f"{where}.{key}", f"expected a string, got {_type_name(message[key])}")
        role = message.get("role")
        if isinstance(role, str) and role not in ROLES:
            report(f"{where}.role", f"unknown role '{role}'", f"expected one of {', '.join(ROLES)}")


def _check_prompt(prompt: Any, report: Report, name: str = "prompt") -> None:
    _report_messages(prompt, name, report)
    if not isinstance(prompt, list):
        return
    # a last message that is not an object was reported above
    if not prompt or (isinstance(prompt[-1], dict) and prompt[-1].get("role") != "user"):
        report(name, "must end with a user turn (the one both answers reply to)",
               "put the final assistant answers in chosen/rejected, not in the prompt")


def _check_answer(answer: Any, name: str, report: Report) -> None:
    if not isinstance(answer, str):
        report(name, f"expected a string, got {_type_name(answer)}")
    elif not answer.strip():
        report(name, "empty answer", "an empty answer carries no preference; fill it or remove this line")


def _optional_fields(record: dict, report: Report, default_source: str) -> dict:
    """level, source, iteration, safety with defaults; a null value counts as missing."""
    level, source = record.get("level"), record.get("source")
    iteration, safety = record.get("iteration"), record.get("safety")
    if level is not None and level not in LEVELS:
        shown = f"'{level}'" if isinstance(level, str) else _type_name(level)
        report("level", f"unknown level {shown}", f"expected one of {', '.join(LEVELS)}, or null for unknown")
    if source is not None and not isinstance(source, str):
        report("source", f"expected a string, got {_type_name(source)}")
    # Parquet written from pandas stores an int column with nulls as float: accept 3.0 as 3.
    if isinstance(iteration, float) and iteration.is_integer():
        iteration = int(iteration)
    if iteration is not None and (isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0):
        report("iteration", f"expected an integer >= 0, got {iteration!r}")
    if safety is not None and not isinstance(safety, bool):
        report("safety", f"expected true, false or null, got {_type_name(safety)}")
    return {"level": level, "source": default_source if source is None else source,
            "iteration": 0 if iteration is None else iteration, "safety": safety}


# ---- validation: TRL's preference formats -------------------------------------------------------

def _pair_from_trl_standard(record: dict, report: Report) -> dict:
    """``{"prompt": str, "chosen": str, "rejected": str}``: the prompt becomes one user turn."""
    _check_required(record, report, "a TRL standard record needs prompt, chosen and rejected strings")
    pair = {**record, **_optional_fields(record, report, default_source="file")}
    prompt = record.get("prompt")
    if "prompt" in record:
        if not isinstance(prompt, str):
            report("prompt", f"expected a string, got {_type_name(prompt)}",
                   "in a TRL standard file every prompt is a string")
        elif not prompt.strip():
            report("prompt", "empty prompt", "fill it or remove this line")
    for name in ("chosen", "rejected"):
        if name in record:
            _check_answer(record[name], name, report)
    if isinstance(prompt, str):
        pair["prompt"] = [{"role": "user", "content": prompt}]
    return pair


def _pair_from_trl_conversation(record: dict, report: Report) -> dict:
    """TRL conversational, explicit (``prompt`` + ``chosen`` + ``rejected`` message lists) or implicit
    (``chosen`` and ``rejected`` whole conversations): the prompt is the messages the two conversations
    share; what follows must be exactly one assistant message in each."""
    explicit = "prompt" in record
    names = ("prompt", "chosen", "rejected") if explicit else ("chosen", "rejected")
    _check_required(record, report, "a TRL conversational record needs chosen and rejected message lists"
                    + (" and a prompt list" if explicit else ""), names)
    pair = {**record, **_optional_fields(record, report, default_source="file")}
    valid = [name in record and _check_messages(record[name], name, report) for name in names]
    for name in ("chosen", "rejected"):
        if record.get(name) == []:
            report(name, "no messages", "put the assistant answer being compared here")
            valid.append(False)
    if not all(valid):
        return pair
    prompt = list(record["prompt"]) if explicit else []
    conversations = {name: prompt + list(record[name]) for name in ("chosen", "rejected")}
    chosen, rejected = conversations["chosen"], conversations["rejected"]
    shared = 0  # messages both share, leaving at least one of each as its answer
    while (shared < min(len(chosen), len(rejected)) - 1
           and _message_key(chosen[shared]) == _message_key(rejected[shared])):
        shared += 1
    offset = len(prompt)  # messages of chosen/rejected are numbered from the prompt's end
    tails = {name: conversation[shared:] for name, conversation in conversations.items()}
    long = [name for name, tail in tails.items() if len(tail) != 1]
    if long:
        report("rejected" if len(long) == 2 else long[0],
               f"chosen and rejected differ before their final message (from message [{shared - offset}] on, "
               f"{len(tails['chosen'])} message(s) in chosen and {len(tails['rejected'])} in rejected)",
               "chosen and rejected must share every message but the final assistant answer")
        return pair
    answers = {}
    for name, conversation in conversations.items():
        tail = tails[name]
        index = len(conversation) - 1 - offset
        if tail[0]["role"] != "assistant":
            report(f"{name}[{index}].role", f"the final message must be the assistant's answer, got "
                   f"'{tail[0]['role']}'", "end chosen and rejected with the assistant message being compared")
            continue
        _check_answer(tail[0]["content"], f"{name}[{index}].content", report)
        answers[name] = tail[0]["content"]
    if len(answers) < 2:
        return pair
    messages = [{"role": m["role"], "content": m["content"]} for m in chosen[:shared]]
    _check_prompt(messages, report, "prompt" if explicit else "chosen")
    return {**pair, "prompt": messages, **answers}


def _message_key(message: dict) -> tuple:
    return message["role"], message["content"]


# ---- validation: Anthropic HH-RLHF transcripts --------------------------------------------------

def _pair_from_hh(record: dict, report: Report) -> dict:
    """Split two HH transcripts into the shared prompt and the two final Assistant answers.

    The prompt is the text both share up to the last ``"\\n\\nAssistant:"`` marker they share; each answer
    is what follows it, whole, even if it contains the marker's text itself.
    """
    texts = {}
    for name in ("chosen", "rejected"):
        if name not in record:
            report(name, "missing required field", "an HH record needs both chosen and rejected transcripts")
        elif not isinstance(record[name], str):
            report(name, f"expected a transcript string, got {_type_name(record[name])}")
        else:
            texts[name] = record[name]
    pair = {**record, **_optional_fields(record, report, default_source="hh-rlhf")}
    if len(texts) < 2:
        return pair
    missing = [name for name, text in texts.items() if _HH_ANSWER not in text]
    for name in missing:
        report(name, "no '\\n\\nAssistant:' turn in the transcript",
               "an HH transcript must end with the Assistant answer being compared")
    if missing:
        return pair
    shared = os.path.commonprefix([texts["chosen"], texts["rejected"]])
    cut = shared.rfind(_HH_ANSWER)
    if cut < 0:
        report("rejected", "the conversation before the last Assistant turn differs from chosen's", _SAME_CONVERSATION)
        return pair
    answers = {name: text[cut + len(_HH_ANSWER):].strip() for name, text in texts.items()}
    if all(_HH_HUMAN in answer for answer in answers.values()):
        # Both go on with later Human turns: they part at an earlier Assistant turn, not at the final one.
        report("rejected", "the conversation before the last Assistant turn differs from chosen's (they part at "
               "an earlier Assistant turn)", _SAME_CONVERSATION)
        return pair
    for name, answer in answers.items():
        if not answer:
            report(name, "empty final Assistant answer", "fill it or remove this line")
    prompt = _parse_hh_turns(shared[:cut], report)
    return {**pair, "prompt": prompt, **answers}


def _parse_hh_turns(text: str, report: Report) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c' -> user/assistant/user messages."""
    lead, *parts = _HH_TURN.split(text)
    if lead.strip():
        report("chosen", "text before the first 'Human:' turn", "a transcript must start with '\\n\\nHuman:'")
    messages = [{"role": _HH_ROLES[who], "content": said.strip()} for who, said in zip(parts[::2], parts[1::2])]
    if not messages or messages[-1]["role"] != "user":
        report("chosen", "the final Assistant answer does not follow a Human turn",
               "the text before the last '\\n\\nAssistant:' that chosen and rejected share must end with a "
               "'\\n\\nHuman:' turn")
    return messages


_PARSERS: dict[str, Callable[[dict, Report], dict]] = {
    "pairs": _pair_from_record, "hh": _pair_from_hh, "trl-standard": _pair_from_trl_standard,
    "trl-conversational": _pair_from_trl_conversation, "trl-implicit": _pair_from_trl_conversation,
}


# ---- helpers ------------------------------------------------------------------------------------

def _reporter(path: Path, line: int, sink: list[DataError]) -> Report:
    def report(field: str | None, message: str, hint: str | None = None) -> None:
        sink.append(DataError(path, message, line=line, field=field, hint=hint))
    return report


def _to_frame(pairs: list[dict]) -> pd.DataFrame:
    """Schema columns first, then extra fields in first-seen order."""
    extras = list(dict.fromkeys(k for pair in pairs for k in pair if k not in COLUMNS))
    df = pd.DataFrame(pairs, columns=[*COLUMNS, *extras])
    # Same dtypes whatever the content: a missing level is NaN, as after any Parquet round trip.
    return df.astype({"level": "str", "source": "str", "iteration": "int64"})


def _test_count(n_test: int | float, n_batch: int, iteration: Any) -> int:
    if not isinstance(n_test, numbers.Integral):
        return round(n_test * n_batch)
    if n_test > n_batch:
        raise ValueError(f"iteration {iteration} has {n_batch} pairs, cannot hold out {n_test} as test; lower the "
                         "count, or give a fraction of each batch as a float in (0, 1), e.g. 0.1")
    return int(n_test)


def _type_name(value: Any) -> str:
    """JSON's name for a value's type, as a user who wrote the file would say it."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (numbers.Number, "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
