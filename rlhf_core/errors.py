"""Errors a user can act on: each says what was wrong, where, and what to do."""

from __future__ import annotations


class RLHFError(Exception):
    """Base class for every error the platform reports to a user without a stack trace."""


class DataError(RLHFError, ValueError):
    """A problem in an input data file, located by file, line (1-based) and field.

    ``str(err)`` reads like ``data.jsonl:12: field 'messages[1].role': unknown role 'bot'
    (expected one of system, user, assistant) -- fix or remove this line``.
    """

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None,
                 hint: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        self.hint = hint
        where = self.path if line is None else f"{self.path}:{line}"
        what = message if field is None else f"field '{field}': {message}"
        text = f"{where}: {what}"
        if hint:
            text += f" -- {hint}"
        super().__init__(text)


class DataErrors(RLHFError, ValueError):
    """Several :class:`DataError` found in one file; all are listed (up to a limit) so a user can
    fix a file in one pass instead of one error per run."""

    def __init__(self, errors: list[DataError], limit: int = 20):
        self.errors = list(errors)
        shown = "\n".join(f"  {e}" for e in self.errors[:limit])
        more = len(self.errors) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.errors)} problem(s) in the input data:\n{shown}{tail}")


class ConfigError(RLHFError, ValueError):
    """A bad configuration value; names the config key and what to do."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config '{key}': {message}")
