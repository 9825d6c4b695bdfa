"""Annotators turn pairs of answers into labelled preferences (chosen, rejected, level).

One interface, three implementations:
- ``SimulatedAnnotator``: the gold judge + levels + rater noise (``rlhf.core.rater``); the default.
- ``FileAnnotator``: export the pairs to a CSV/JSONL file, people fill in ``preferred`` ("a"
  or "b") and ``level``, import it back with every problem reported at once.
- ``HumanAnnotator``: the same, and it waits for the labels file to appear (the flow pauses).

Pairs in:  pair_id, prompt_id, prompt, response_a, response_b, instructions, safety, source,
           iteration.
Labels out: pair_id, prompt_id, prompt, chosen, rejected, level, source, iteration, safety,
           instructions, annotator (+ gold_chosen, gold_rejected for the simulated rater).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rlhf.core.artifacts import atomic_file, write_jsonl
from rlhf.core.errors import ConfigError, DataError, DataErrors, RLHFError
from rlhf.core.preferences import read_records, record_format
from rlhf.core.rater.gold import gold_score
from rlhf.core.rater.levels import LEVELS, RaterConfig, decide

PAIR_COLUMNS = ["pair_id", "prompt_id", "prompt", "response_a", "response_b", "instructions",
                "safety", "source", "iteration"]
EXPORT_COLUMNS = ["pair_id", "prompt", "response_a", "response_b", "preferred", "level"]
LABEL_HINT = f"write preferred as a or b, and level as one of {', '.join(LEVELS)}"


def check_pairs(pairs: pd.DataFrame, path: str = "<pairs>") -> None:
    """Raise :class:`DataErrors` if a column is missing or a pair id is empty or repeated."""
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    errors = [DataError(path, "column is missing", field=c,
                        hint=f"pairs need the columns {', '.join(PAIR_COLUMNS)}") for c in missing]
    first: dict[str, int] = {}
    for line, pid in enumerate(pairs.get("pair_id", pd.Series(dtype=object)).tolist(), 1):
        if not _text(pid):
            errors.append(DataError(path, "empty pair_id", line=line, field="pair_id",
                                    hint="give every pair a unique id"))
        elif pid in first:
            errors.append(DataError(path, f"duplicate pair_id {pid!r} (also on line {first[pid]})",
                                    line=line, field="pair_id", hint="pair ids must be unique"))
        first.setdefault(pid, line)
    if errors:
        raise DataErrors(errors)


def _text(value) -> str:
    """A cell as stripped text; None and NaN (an empty CSV cell) are empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def _labelled_row(pair: dict, preferred: str, level: str, annotator: str) -> dict:
    win, lose = ("response_a", "response_b") if preferred == "a" else ("response_b", "response_a")
    return {"pair_id": pair["pair_id"], "prompt_id": pair["prompt_id"], "prompt": pair["prompt"],
            "chosen": pair[win], "rejected": pair[lose], "level": level,
            "source": pair["source"], "iteration": int(pair["iteration"]),
            "safety": bool(pair["safety"]), "instructions": pair["instructions"],
            "annotator": annotator}


class Annotator(ABC):
    """Labels pairs: ``label(pairs) -> labelled pairs`` (schemas in the module docstring)."""

    name: str

    @abstractmethod
    def label(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """One labelled row per pair, in the order of ``pairs``."""


class SimulatedAnnotator(Annotator):
    """The default "human": gold scores, a level from their gap, and seeded rater noise.

    Each pair's draw comes from its own generator seeded by (seed, pair_id), so a pair gets the
    same label whatever else is in the batch and in whatever order.
    """

    name = "simulated"

    def __init__(self, config: RaterConfig | None = None):
        self.config = (config or RaterConfig()).validate()

    def label(self, pairs: pd.DataFrame) -> pd.DataFrame:
        check_pairs(pairs)
        rows = []
        for pair in pairs.to_dict("records"):
            gold = {side: gold_score(_text(pair[f"response_{side}"]), pair["instructions"],
                                     bool(pair["safety"])) for side in ("a", "b")}
            rng = random.Random(f"{self.config.seed}:{pair['pair_id']}")
            preferred, level = decide(gold["a"], gold["b"], rng, self.config)
            other = "b" if preferred == "a" else "a"
            rows.append(_labelled_row(pair, preferred, level, self.name)
                        | {"gold_chosen": gold[preferred], "gold_rejected": gold[other]})
        return pd.DataFrame(rows)


def _json_default(value):
    """numpy scalars and arrays (as read from Parquet) to plain Python."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _checked_suffix(path, allowed: tuple[str, ...]) -> Path:
    path = Path(path)
    if path.suffix not in allowed:
        raise DataError(path, f"unsupported suffix {path.suffix!r}",
                        hint=f"use a {' or '.join(allowed)} file")
    return path


def write_frame(frame: pd.DataFrame, path) -> Path:
    """Write ``frame`` atomically as Parquet, JSONL or CSV, chosen by the suffix."""
    path = _checked_suffix(path, (".parquet", ".jsonl", ".csv"))
    if path.suffix == ".jsonl":
        write_jsonl(path, frame.to_dict("records"), ensure_ascii=False, default=_json_default)
        return path
    with atomic_file(path) as tmp:
        (frame.to_parquet if path.suffix == ".parquet" else frame.to_csv)(tmp, index=False)
    return path


PAIR_FORMATS = (".jsonl", ".jsonl.gz", ".parquet")  # pairs to label
LABEL_FORMATS = (".csv", ".jsonl", ".jsonl.gz", ".parquet")  # labelled files to import


def _read_jsonl(path: Path, accepted: tuple[str, ...], what: str) -> tuple[list[tuple[int, dict]], list[DataError]]:
    """Records of a JSONL (``.jsonl``, ``.jsonl.gz``) or Parquet file, and the lines that are not JSON objects."""
    records, errors = [], []
    for line, record in read_records(path, accepted, what):
        if isinstance(record, DataError):
            errors.append(record)
        elif isinstance(record, dict):
            records.append((line, record))
        else:
            errors.append(DataError(path, "expected a JSON object", line=line, hint="fix or remove this line"))
    return records, errors


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    """Rows with the file line each starts on (a quoted cell may span several lines)."""
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        start = 2
        for row in reader:
            records.append((start, row))
            start = reader.line_num + 1
    return records


def _read_records(path: Path) -> tuple[list[tuple[int, dict]], list[DataError]]:
    """``(line, record)`` of a labels file (CSV, JSONL, JSONL.gz or Parquet), and the lines that could not be
    read."""
    if record_format(path, LABEL_FORMATS, "labels") == ".csv":
        if not path.is_file():
            raise DataError(path, "file not found", hint="check the path")
        return _read_csv(path), []
    return _read_jsonl(path, LABEL_FORMATS, "labels")


def read_pairs(path) -> pd.DataFrame:
    """Pairs from JSONL (``.jsonl``, ``.jsonl.gz``) or Parquet, checked with :func:`check_pairs`; prompts as
    lists of dicts."""
    path = Path(path)
    if record_format(path, PAIR_FORMATS, "pairs to label") == ".parquet":
        pairs = pd.read_parquet(path)
    else:
        records, errors = _read_jsonl(path, PAIR_FORMATS, "pairs to label")
        if errors:
            raise DataErrors(errors)
        pairs = pd.DataFrame([r for _, r in records])
    check_pairs(pairs, str(path))
    pairs["prompt"] = [[dict(m) for m in prompt] for prompt in pairs["prompt"]]
    return pairs


def _check_label(path: Path, line: int, record: dict) -> tuple[tuple[str, str] | None,
                                                                list[DataError]]:
    """``(preferred, level)`` of one labelled line, or the problems found on it.

    Levels are read leniently ("Slightly better" -> slightly_better); anything else is reported.
    """
    preferred = _text(record.get("preferred")).lower()
    level = _text(record.get("level")).lower().replace(" ", "_").replace("-", "_")
    errors = []
    if preferred not in ("a", "b"):
        what = "missing label" if not preferred else f"bad value {preferred!r}"
        errors.append(DataError(path, f"{what} (expected a or b)", line=line,
                                field="preferred", hint=LABEL_HINT))
    if level not in LEVELS:
        what = "missing label" if not level else f"unknown level {level!r}"
        errors.append(DataError(path, f"{what} (expected one of {', '.join(LEVELS)})",
                                line=line, field="level", hint=LABEL_HINT))
    return (None if errors else (preferred, level)), errors


class FileAnnotator(Annotator):
    """People label an exported file; ``label`` imports the labelled file at ``labels_path``."""

    name = "file"

    def __init__(self, labels_path=None):
        self.labels_path = Path(labels_path) if labels_path is not None else None

    def export(self, pairs: pd.DataFrame, path) -> Path:
        """Write the pairs to label (CSV or JSONL by suffix), keyed by their ``pair_id``, with
        empty ``preferred`` and ``level`` columns for people to fill in."""
        path = _checked_suffix(path, (".csv", ".jsonl"))
        check_pairs(pairs)
        frame = pairs.assign(preferred="", level="")[EXPORT_COLUMNS]
        if path.suffix == ".csv":
            frame["prompt"] = [json.dumps(p, ensure_ascii=False, default=_json_default)
                               for p in frame["prompt"]]
        return write_frame(frame, path)

    def import_labels(self, path, pairs: pd.DataFrame) -> pd.DataFrame:
        """The labelled pairs, or :class:`DataErrors` listing every unknown, duplicate or
        unlabelled pair id and every bad ``preferred``/``level`` value (file, line, field).

        Prompts and answers are taken from ``pairs``, not from the file, so an accidental edit
        of an answer in the file cannot change what is trained on.
        """
        path = Path(path)
        check_pairs(pairs)
        records, errors = _read_records(path)
        by_id = {p["pair_id"]: p for p in pairs.to_dict("records")}
        labels: dict[str, tuple[str, str]] = {}
        seen: dict[str, int] = {}
        for line, record in records:
            pid = _text(record.get("pair_id"))
            if pid not in by_id:
                what = f"unknown pair_id {pid!r}" if pid else "missing pair_id"
                errors.append(DataError(
                    path, f"{what}: not one of the {len(by_id)} pairs to label", line=line,
                    field="pair_id", hint="copy the id from the exported file or remove the line"))
            elif pid in seen:
                errors.append(DataError(path, f"duplicate pair_id {pid!r} (first on line "
                                        f"{seen[pid]})", line=line, field="pair_id",
                                        hint="keep one label per pair"))
            else:
                seen[pid] = line
                label, problems = _check_label(path, line, record)
                errors += problems
                if label:
                    labels[pid] = label
        errors += [DataError(path, f"pair {pid!r} has no line", field="pair_id",
                             hint=f"add a line for it: {LABEL_HINT}")
                   for pid in by_id if pid not in seen]
        if errors:
            raise DataErrors(errors)
        return pd.DataFrame([_labelled_row(by_id[pid], *labels[pid], self.name) for pid in by_id])

    def label(self, pairs: pd.DataFrame) -> pd.DataFrame:
        if self.labels_path is None or not self.labels_path.exists():
            raise DataError(self.labels_path or "<labels_path>", "labels file not found",
                            hint="export the pairs, label them, save the file here and rerun")
        return self.import_labels(self.labels_path, pairs)


class LabelsTimeout(RLHFError, TimeoutError):
    """No labels file appeared in time."""


class HumanAnnotator(FileAnnotator):
    """Export the pairs for people, wait for their labels file, import and validate it.

    Save the labels under another name and rename it into place when complete: the file is
    read as soon as it exists.
    """

    name = "human"

    def __init__(self, export_path, labels_path, poll_seconds: float = 30.0,
                 timeout: float = 7 * 24 * 3600.0):
        super().__init__(labels_path)
        self.export_path = Path(export_path)
        self.poll_seconds, self.timeout = poll_seconds, timeout

    def wait_for_labels(self, path, poll_seconds: float, timeout: float) -> Path:
        """Return ``path`` once it exists; :class:`LabelsTimeout` after ``timeout`` seconds."""
        path = Path(path)
        deadline = time.monotonic() + timeout
        while not path.exists():
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabelsTimeout(f"{path}: no labels file after {timeout:g} s -- label the "
                                    "exported pairs, save them there and rerun")
            time.sleep(min(poll_seconds, left))
        return path

    def label(self, pairs: pd.DataFrame) -> pd.DataFrame:
        if not self.labels_path.exists():
            self.export(pairs, self.export_path)
        self.wait_for_labels(self.labels_path, self.poll_seconds, self.timeout)
        return self.import_labels(self.labels_path, pairs)


@dataclass
class AnnotatorConfig:
    """How ``annotate_file`` labels pairs (plain dicts of the same keys are accepted)."""

    name: str = "simulated"  # simulated | file | human
    rater: RaterConfig = field(default_factory=RaterConfig)  # simulated rater
    labels_path: str | None = None  # file/human: the labelled CSV/JSONL to import
    export_path: str | None = None  # human: where the pairs to label are written
    poll_seconds: float = 30.0  # human: how often to look for the labels file
    timeout_seconds: float = 7 * 24 * 3600.0  # human: Llama 2's label batches were weekly

    @classmethod
    def from_dict(cls, values: dict) -> "AnnotatorConfig":
        rater = values.get("rater", {})
        if not isinstance(rater, RaterConfig):
            rater = _dataclass_from(RaterConfig, rater, "annotator.rater")
        return _dataclass_from(cls, {**values, "rater": rater}, "annotator")


def _dataclass_from(cls, values: dict, prefix: str):
    """``cls(**values)``, with a :class:`ConfigError` naming an unknown key instead of a
    TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", f"unknown key; expected one of "
                              f"{', '.join(sorted(known))}")
    return cls(**values)


def make_annotator(name: str, config: AnnotatorConfig) -> Annotator:
    """The annotator called ``name`` (simulated, file or human), built from ``config``."""
    if name == "simulated":
        return SimulatedAnnotator(config.rater)
    if name not in ("file", "human"):
        raise ConfigError("annotator", f"unknown annotator {name!r}; expected simulated, file "
                          "or human")
    if config.labels_path is None:
        raise ConfigError("annotator.labels_path", f"required by the {name} annotator: the "
                          "labelled file to import")
    if name == "file":
        return FileAnnotator(config.labels_path)
    if config.export_path is None or Path(config.export_path) == Path(config.labels_path):
        raise ConfigError("annotator.export_path", "required by the human annotator and must "
                          "differ from labels_path (the labels file appearing means 'done')")
    return HumanAnnotator(config.export_path, config.labels_path, config.poll_seconds,
                          config.timeout_seconds)


def annotate_file(pairs_path, out_path, annotator_name: str | None = None,
                  config: AnnotatorConfig | dict | None = None) -> Path:
    """Read pairs (JSONL/Parquet), label them, write the labelled pairs (Parquet/JSONL by
    suffix) atomically; return ``out_path``. ``annotator_name`` defaults to ``config.name``."""
    if not isinstance(config, AnnotatorConfig):
        config = AnnotatorConfig.from_dict(config or {})
    out_path = _checked_suffix(out_path, (".parquet", ".jsonl"))
    labelled = make_annotator(annotator_name or config.name, config).label(read_pairs(pairs_path))
    return write_frame(labelled, out_path)
