"""Conversation datasets: read, validate, tokenise.

A file holds one conversation per row: JSONL lines ``{"messages": [{"role", "content"}, ...]}`` (extra
keys are kept; ``.jsonl``, gzip-compressed ``.jsonl.gz``, or ``.json`` read as JSON lines) or a Parquet
table with a ``messages`` column of the same shape. A conversation is an optional system message, then
user and assistant turns alternating, starting with a user turn and containing at least one non-empty
assistant turn.

Every problem in a file is collected and reported together (file, line, field, what to do); nothing is
skipped silently: ``load_conversations(path, on_bad_record="skip")`` drops the bad rows instead of
failing, and logs each (``file:line: reason``) and their count. Over-long conversations are truncated or
dropped by policy, and the counts are returned in a :class:`TokenizeReport` for the caller to print.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat import render_conversation
from .errors import ConfigError, DataError, DataErrors
from .preferences import ROLES, check_on_bad_record, read_records, skipped_reason

OVERLONG_POLICIES = ("truncate", "drop")
CONVERSATION_FORMATS = (".jsonl", ".jsonl.gz", ".parquet", ".json")

log = logging.getLogger(__name__)


def _read(path: Path) -> list[tuple[int, Any]]:
    """``(line, row)`` of every row; a line that is not JSON gives its DataError in place of the row."""
    if not path.is_file():
        raise DataError(path, "file not found", hint="check the path (data.path)")
    return read_records(path, CONVERSATION_FORMATS, what="conversations (one JSON object per line)")


def read_rows(path: str | Path) -> list[tuple[int, Any]]:
    """``(line_number, row)`` pairs from a JSONL (``.jsonl``, ``.jsonl.gz``, ``.json``) or Parquet file; every
    line that is not JSON is reported (:class:`DataErrors`)."""
    rows = _read(Path(path))
    errors = [row for _, row in rows if isinstance(row, DataError)]
    if errors:
        raise DataErrors(errors)
    return rows


def validate_messages(messages: Any, path, line: int, key: str = "messages") -> list[DataError]:
    """Problems of one conversation, each naming its field (``messages[2].role``)."""
    def err(msg, fld=key, hint="fix or remove this line"):
        return DataError(path, msg, line, fld, hint)

    if not isinstance(messages, list) or not messages:
        return [err("expected a non-empty list of {role, content} messages")]
    errors = []
    expected = "user"
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            errors.append(err("expected an object with 'role' and 'content'", where))
            continue
        role, content = message.get("role"), message.get("content")
        if role is None or role not in ROLES:
            problem = "missing role" if role is None else f"unknown role {role!r}"
            errors.append(err(f"{problem} (expected one of {', '.join(ROLES)})", f"{where}.role"))
            expected = "assistant" if expected == "user" else "user"  # judge the next turn as if this one fit
            continue
        if not isinstance(content, str):
            errors.append(err("missing content (expected a string)", f"{where}.content"))
            continue
        if role == "system":
            if i != 0:
                errors.append(err("a system message may only come first", f"{where}.role"))
            continue
        if role != expected:
            errors.append(err(f"expected a {expected} turn here (user and assistant turns alternate, "
                              "starting with user)", f"{where}.role"))
        elif role in ("user", "assistant") and not content.strip():
            errors.append(err(f"empty {role} content", f"{where}.content"))
        expected = "assistant" if role == "user" else "user"
    if not errors and not any(m.get("role") == "assistant" for m in messages):
        errors.append(err("no assistant turn: nothing to train on"))
    return errors


def load_conversations(path: str | Path, on_bad_record: str = "error") -> list[dict]:
    """Validated rows of a conversation file (each a dict with at least ``messages``).

    ``on_bad_record="error"`` (the default) raises :class:`DataErrors` listing every problem (lines that are
    not JSON first, as they stop the file from being read); ``"skip"`` drops each bad row, logs it as a
    warning (``file:line: reason``) and logs how many were skipped. Either way, a file with no valid
    conversation is an error.
    """
    check_on_bad_record(on_bad_record, "data.on_bad_record")
    path = Path(path)
    records = _read(path) if on_bad_record == "skip" else read_rows(path)
    rows, errors, skipped = [], [], []
    for line, row in records:
        if isinstance(row, DataError):
            problems = [row]
        elif not isinstance(row, dict) or "messages" not in row:
            problems = [DataError(path, "expected an object with a 'messages' list", line, "messages",
                                  "fix or remove this line")]
        else:
            problems = validate_messages(row["messages"], path, line)
            if row.get("loss_mode", "all") not in ("all", "last"):  # a row's own mask (GAtt rows: "last")
                problems.append(DataError(path, f"unknown loss_mode {row['loss_mode']!r} (expected all or last)", line,
                                          "loss_mode", "use all (every assistant turn) or last (the final one), or "
                                          "fix or remove this line"))
        errors.extend(problems)
        if problems:
            skipped.append(skipped_reason(path, line, problems))
        else:
            rows.append(row)
    if errors and (on_bad_record == "error" or not rows):
        raise DataErrors(errors)
    for text in skipped:
        log.warning("skipped bad record (on_bad_record=skip): %s", text)
    if skipped:
        log.warning("%s: skipped %d bad conversation(s) of %d", path, len(skipped), len(records))
    if not rows:
        raise DataError(path, "no conversations in the file", hint="add at least one conversation")
    return rows


@dataclass
class TokenizeReport:
    """What tokenisation did to a dataset, for the step's log line and manifest."""

    n_input: int = 0
    n_kept: int = 0
    n_truncated: int = 0
    n_dropped_overlong: int = 0
    n_tokens: int = 0
    n_target_tokens: int = 0
    dropped_rows: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.n_kept}/{self.n_input} conversations kept, {self.n_truncated} truncated, "
                f"{self.n_dropped_overlong} dropped as over-long; {self.n_tokens} tokens, "
                f"{self.n_target_tokens} targets")


def tokenize_conversations(tokenizer, conversations: list[dict], max_length: int, mode: str = "all",
                           overlong: str = "truncate"):
    """Render each conversation; returns ``(examples, report)``, examples = list of
    ``(input_ids, attention_mask, loss_mask)``.

    ``overlong="truncate"`` cuts a conversation to ``max_length`` tokens (keeping its start) and drops it
    only if no target token survives; ``"drop"`` drops every conversation longer than ``max_length``.
    """
    if overlong not in OVERLONG_POLICIES:
        raise ConfigError("data.overlong", f"unknown policy {overlong!r}; use truncate or drop")
    report = TokenizeReport(n_input=len(conversations))
    examples = []
    for index, row in enumerate(conversations):  # a row's own "loss_mode" wins (GAtt rows mixed into SFT data)
        ids, attention, loss_mask = render_conversation(tokenizer, row["messages"], row.get("loss_mode", mode))
        if len(ids) > max_length:
            if overlong == "drop" or not loss_mask[:max_length].any():
                report.n_dropped_overlong += 1
                report.dropped_rows.append(index)
                continue
            ids, attention, loss_mask = ids[:max_length], attention[:max_length], loss_mask[:max_length]
            report.n_truncated += 1
        examples.append((ids, attention, loss_mask))
        report.n_tokens += len(ids)
        report.n_target_tokens += int(loss_mask.sum())
    report.n_kept = len(examples)
    return examples, report


def load_prompts(path: str | Path):
    """A prompt file as a DataFrame: ``prompt_id`` (default ``<file stem>-<line>``), ``messages`` (ending
    with a user turn), ``safety`` (default False) and ``instructions`` (default "[]", checked by the gold
    rater only). Problems are reported like conversation files."""
    import pandas as pd

    path = Path(path)
    records, errors = [], []
    for line, row in read_rows(path):
        messages = row.get("messages") if isinstance(row, dict) else None
        problems = validate_prompt(messages, path, line)
        errors.extend(problems)
        if not problems:
            records.append({"prompt_id": str(row.get("prompt_id") or f"{path.stem}-{line}"), "messages": messages,
                            "safety": bool(row.get("safety") or False),
                            "instructions": row.get("instructions") or "[]"})
    if errors:
        raise DataErrors(errors)
    if not records:
        raise DataError(path, "no prompts in the file", hint="add at least one {\"messages\": [...]} row")
    return pd.DataFrame(records)


def validate_prompt(messages: Any, path, line: int) -> list[DataError]:
    """A prompt is a conversation that ends with the user turn to be answered."""
    if not isinstance(messages, list) or not messages:
        return [DataError(path, "expected a non-empty list of {role, content} messages", line, "messages",
                          "fix or remove this line")]
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") in ROLES and last.get("role") != "user":
        return [DataError(path, "a prompt must end with a user turn", line, f"messages[{len(messages) - 1}].role",
                          "fix or remove this line")]
    # Checked as if answered, so the alternation rules of conversations apply unchanged.
    return validate_messages(list(messages) + [{"role": "assistant", "content": "-"}], path, line)
