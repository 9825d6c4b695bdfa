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

Extra fields are kept as extra columns. Files are JSONL (one object per line) or Parquet; the
Anthropic HH-RLHF format (``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``)
is detected from the first record and converted to the schema above.

Example::

    pairs, report = load_pairs("labels.jsonl")
    train, test = split_pairs(pairs, n_test=1000, seed=0)   # the paper: 1,000 test pairs per batch
"""

from __future__ import annotations

import logging
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from rlhf.core.artifacts import iter_jsonl
from rlhf.core.errors import DataError, DataErrors

LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
"""The four annotation levels, strongest first (§3.2.1; "negligibly better" includes "unsure")."""

ROLES = ("system", "user", "assistant")
"""The roles of a chat message, in pairs' prompts and in conversation files (``rlhf.core.data``). Here
rather than in ``rlhf.core.chat`` because this module stays free of torch: the campaign record imports
it (for :data:`LEVELS`)."""

COLUMNS = ("prompt", "chosen", "rejected", "level", "source", "iteration", "safety")

log = logging.getLogger(__name__)

# One HH turn marker; a transcript may start with "Human:" without the blank line before it.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_LAST_ANSWER = "\n\nAssistant:"
_HH_START = re.compile(r"^\s*Human:")

# report(field, message, hint=None) records one problem of the record being checked
Report = Callable[..., None]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pairs` read and dropped, so that no pair disappears silently."""

    path: str
    format: str                # "pairs" (this schema) or "hh" (Anthropic HH-RLHF transcripts)
    n_read: int                # records read (blank JSONL lines are not records)
    n_dropped_identical: int   # pairs whose chosen and rejected were the same text
    dropped_lines: list[int]   # 1-based JSONL line / Parquet row of each dropped pair

    @property
    def n_kept(self) -> int:
        return self.n_read - self.n_dropped_identical


def load_pairs(path: str | Path) -> tuple[pd.DataFrame, LoadReport]:
    """Read preference pairs from ``.jsonl`` or ``.parquet`` and validate every record.

    Returns ``(pairs, report)``: ``pairs`` has the columns :data:`COLUMNS` (then any extra fields)
    and a fresh RangeIndex; ``report`` says how many records were read and which lines were dropped
    because chosen and rejected are identical (compared without surrounding whitespace) -- such a
    pair carries no preference. Drops are also logged as a warning.

    Raises :class:`DataErrors` listing every problem (file, 1-based line or row, field, what to
    do) if any record is invalid; nothing is returned from a partly invalid file.
    """
    path = Path(path)
    records = _read_records(path)
    fmt = _detect_format(records)
    parse = _pair_from_hh if fmt == "hh" else _pair_from_record

    errors: list[DataError] = []
    pairs: list[dict] = []
    dropped: list[int] = []
    for line, record in records:
        if isinstance(record, DataError):
            errors.append(record)
            continue
        pair, problems = _check_record(path, line, record, parse)
        errors.extend(problems)
        if pair is None:
            continue
        if pair["chosen"].strip() == pair["rejected"].strip():
            dropped.append(line)
        else:
            pairs.append(pair)
    if errors:
        raise DataErrors(errors)

    if dropped:
        shown = ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else "")
        log.warning("%s: dropped %d pair(s) whose chosen and rejected are identical (lines %s)",
                    path, len(dropped), shown)
    return _to_frame(pairs), LoadReport(str(path), fmt, len(records), len(dropped), dropped)


def split_pairs(df: pd.DataFrame, n_test: int | float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out test pairs from each ``iteration`` batch (the paper keeps 1,000 per batch, §3.2.2).

    ``n_test`` is a count per batch (int >= 0) or a fraction of each batch (float in [0, 1)),
    rounded to the nearest pair. Without an ``iteration`` column the whole frame is one batch.
    Returns ``(train, test)`` with the original index labels, in the original row order.

    A batch's test pairs depend only on ``seed``, its iteration number and its own rows, so adding
    later batches never moves an earlier pair between train and test: held-out pairs stay
    held out when the RMs are retrained on all data so far.
    Raises ValueError if a count is larger than its batch.
    """
    _check_n_test(n_test)
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


# ---- reading ----------------------------------------------------------------------------------

def _read_records(path: Path) -> list[tuple[int, Any]]:
    """``(line, record)`` for every record; a JSONL line that is not UTF-8 or not JSON yields its DataError
    instead of a record."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise DataErrors([DataError(path, f"unsupported file type '{suffix}'",
                                    hint="give preference pairs as .jsonl or .parquet")])
    if not path.is_file():
        raise DataErrors([DataError(path, "file not found", hint="check the path")])
    if suffix == ".parquet":
        return _read_parquet(path)
    records: list[tuple[int, Any]] = []
    # A bad line takes its place among the records, so problems are listed in file order.
    for line, record in iter_jsonl(path, lambda error: records.append((error.line, error))):
        records.append((line, record))
    return records


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    # pyarrow's to_pylist gives plain lists/dicts/None, as JSON would (pandas would give numpy
    # arrays and NaN); pyarrow.parquet is only imported when a Parquet file is read.
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt or non-Parquet file
        raise DataErrors([DataError(path, f"cannot read Parquet ({e})",
                                    hint="check that the file is a valid Parquet file")]) from None
    return list(enumerate(rows, start=1))


def _detect_format(records: list[tuple[int, Any]]) -> str:
    """"hh" if the first object has no prompt and its chosen is a transcript starting with Human:."""
    for _, record in records:
        if isinstance(record, dict):
            chosen = record.get("chosen")
            is_hh = "prompt" not in record and isinstance(chosen, str) and _HH_START.match(chosen)
            return "hh" if is_hh else "pairs"
    return "pairs"


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
    for name in ("prompt", "chosen", "rejected"):
        if name not in record:
            report(name, "missing required field", "add it, or remove this line")
    if "prompt" in record:
        _check_prompt(record["prompt"], report)
    for name in ("chosen", "rejected"):
        if name in record:
            _check_answer(record[name], name, report)
    return {**record, **_optional_fields(record, report, default_source="file")}


def _check_prompt(prompt: Any, report: Report) -> None:
    if not isinstance(prompt, list):
        report("prompt", f"expected a list of messages, got {_type_name(prompt)}",
               'write it as [{"role": "user", "content": "..."}]')
        return
    for i, message in enumerate(prompt):
        where = f"prompt[{i}]"
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
    # a last message that is not an object was reported above
    if not prompt or (isinstance(prompt[-1], dict) and prompt[-1].get("role") != "user"):
        report("prompt", "must end with a user turn (the one both answers reply to)",
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


# ---- validation: Anthropic HH-RLHF transcripts --------------------------------------------------

def _pair_from_hh(record: dict, report: Report) -> dict:
    """Split two HH transcripts into the shared prompt and the two final Assistant answers."""
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
    split = {}
    for name, text in texts.items():
        cut = text.rfind(_HH_LAST_ANSWER)
        if cut < 0:
            report(name, "no '\\n\\nAssistant:' turn in the transcript",
                   "an HH transcript must end with the Assistant answer being compared")
            continue
        split[name] = (text[:cut], text[cut + len(_HH_LAST_ANSWER):].strip())
        if not split[name][1]:
            report(name, "empty final Assistant answer", "fill it or remove this line")
    if len(split) < 2:
        return pair
    if split["chosen"][0] != split["rejected"][0]:
        report("rejected", "the conversation before the last Assistant turn differs from chosen's",
               "chosen and rejected must share the conversation and differ only in the final answer")
        return pair
    prompt = _parse_hh_turns(split["chosen"][0], report)
    return {**pair, "prompt": prompt, "chosen": split["chosen"][1], "rejected": split["rejected"][1]}


def _parse_hh_turns(text: str, report: Report) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c' -> user/assistant/user messages."""
    lead, *parts = _HH_TURN.split(text)
    if lead.strip():
        report("chosen", "text before the first 'Human:' turn", "a transcript must start with '\\n\\nHuman:'")
    messages = [{"role": _HH_ROLES[who], "content": said.strip()} for who, said in zip(parts[::2], parts[1::2])]
    if not messages or messages[-1]["role"] != "user":
        report("chosen", "the final Assistant answer does not follow a Human turn",
               "the answers must reply to a '\\n\\nHuman:' turn")
    return messages


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


def _check_n_test(n_test: Any) -> None:
    if isinstance(n_test, bool) or not isinstance(n_test, numbers.Real):
        raise ValueError(f"n_test must be a count (int >= 0) or a fraction (float in [0, 1)), got {n_test!r}")
    if isinstance(n_test, numbers.Integral) and n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if not isinstance(n_test, numbers.Integral) and not 0.0 <= n_test < 1.0:
        raise ValueError(f"a float n_test is a fraction of each batch and must be in [0, 1), got {n_test}; "
                         "give a count as an int")


def _test_count(n_test: int | float, n_batch: int, iteration: Any) -> int:
    if not isinstance(n_test, numbers.Integral):
        return round(n_test * n_batch)
    if n_test > n_batch:
        raise ValueError(f"iteration {iteration} has {n_batch} pairs, cannot hold out {n_test} as test; "
                         "lower n_test or give it as a fraction")
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
