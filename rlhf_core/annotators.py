"""Annotators turn pairs of answers into labelled preferences (chosen, rejected, level).

One interface, three implementations:
- ``SimulatedAnnotator``: the gold judge + levels + rater noise (``rlhf.core.rater``); the default.
- ``FileAnnotator``: export the pairs to a CSV/JSONL file, people fill in ``preferred`` ("a"
  or "b") and ``level``, import it back with every problem reported at once.
- ``HumanAnnotator``: the same, and it waits for the labels file to appear (the flow pauses).

Every pair is labelled on two axes, as Llama 2's annotators did (§3.2.1):

- **helpfulness**: which answer is better and by how much (``preferred`` a/b, ``level``);
- **safety**: each answer safe or unsafe (``safe_a``, ``safe_b``) and, where the prompt is adversarial
  (``safety`` true: an unsafe request), which answer is safer and by how much (``safety_preferred``,
  ``safety_level``). On other prompts the safety preference is optional (both or neither).

Pairs in:  pair_id, prompt_id, prompt, response_a, response_b, instructions, safety, source,
           iteration.
Labels out: pair_id, prompt_id, prompt, chosen, rejected, level (the helpfulness axis), source,
           iteration, safety, instructions, chosen_safe, rejected_safe (each answer's safety label),
           safety_prefers ("chosen", "rejected" or None: which of the two the safety preference picks),
           safety_level (its level or None), annotator. The simulated rater adds what it knows and people
           do not: the gold scores of both answers on each axis (``gold_chosen``, ``gold_rejected``;
           ``safety_gold_chosen``, ``safety_gold_rejected`` on adversarial prompts) and the chance that
           each axis' label agrees with the gold order (``p_agree``, ``safety_p_agree``: 1 - p_flip of the
           gold gap, 0.5 on a gold tie), from which a reward model's accuracy is judged against the
           labels' own ceiling (``rlhf.core.reward.metrics.gold_metrics``).
           ``rlhf.core.preferences.axis_pairs`` turns them into each reward model's pairs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rlhf.core.artifacts import atomic_file, write_jsonl
from rlhf.core.errors import ConfigError, DataError, DataErrors, RLHFError
from rlhf.core.preferences import read_records, record_format, variant_label
from rlhf.core.rater.gold import helpfulness_axis, is_safe, last_user_message, safety_axis
from rlhf.core.rater.levels import LEVELS, TIE_EPS, RaterConfig, decide, flip_probability

PAIR_COLUMNS = ["pair_id", "prompt_id", "prompt", "response_a", "response_b", "instructions",
                "safety", "source", "iteration"]
LABEL_COLUMNS = ["preferred", "level", "safe_a", "safe_b", "safety_preferred", "safety_level"]
EXPORT_COLUMNS = ["pair_id", "prompt", "response_a", "response_b", "adversarial", *LABEL_COLUMNS]
LABEL_HINT = f"write preferred as a or b, and level as one of {', '.join(LEVELS)}"
SAFE_HINT = "write safe or unsafe: an answer is unsafe when it helps with a harmful request"
SAFETY_HINT = (f"an adversarial prompt needs safety_preferred (a or b: the safer answer) and safety_level (one of "
               f"{', '.join(LEVELS)}); on other prompts give both or neither")


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


@dataclass(frozen=True)
class Label:
    """One pair's labels on both axes, answers named a and b as they were shown."""

    preferred: str  # a | b: the more helpful answer
    level: str  # how much more helpful (LEVELS)
    safe_a: bool  # answer a is safe
    safe_b: bool
    safety_preferred: str | None = None  # a | b: the safer answer (adversarial prompts), else None
    safety_level: str | None = None


def _labelled_row(pair: dict, label: Label, annotator: str) -> dict:
    win, lose = ("a", "b") if label.preferred == "a" else ("b", "a")
    safe = {"a": label.safe_a, "b": label.safe_b}
    prefers = None if label.safety_preferred is None else (
        "chosen" if label.safety_preferred == label.preferred else "rejected")
    return {"pair_id": pair["pair_id"], "prompt_id": pair["prompt_id"], "prompt": pair["prompt"],
            "chosen": pair[f"response_{win}"], "rejected": pair[f"response_{lose}"], "level": label.level,
            "source": pair["source"], "iteration": int(pair["iteration"]),
            "safety": bool(pair["safety"]), "instructions": pair["instructions"],
            "chosen_safe": safe[win], "rejected_safe": safe[lose], "safety_prefers": prefers,
            "safety_level": label.safety_level, "annotator": annotator,
            "chosen_variant": _variant(pair, win), "rejected_variant": _variant(pair, lose)}


def _variant(pair: dict, side: str) -> str | None:
    """The side's source (``variant_label``) when the pair records it."""
    variant, temperature = pair.get(f"variant_{side}"), pair.get(f"temperature_{side}")
    if pd.isna(variant) or pd.isna(temperature):
        return None
    return variant_label(str(variant), float(temperature))


class Annotator(ABC):
    """Labels pairs: ``label(pairs) -> labelled pairs`` (schemas in the module docstring)."""

    name: str

    @abstractmethod
    def label(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """One labelled row per pair, in the order of ``pairs``."""


class SimulatedAnnotator(Annotator):
    """The default "human": gold scores on each axis, a level from their gap, and seeded rater noise.

    Helpfulness: the gold judge's helpfulness axis on every prompt. Safety: each answer's label
    (``rlhf.core.rater.gold.is_safe``) and, on adversarial prompts, a preference from the safety axis with
    its own, independent noise draw. Each pair's draws come from generators seeded by (seed, pair_id, axis),
    so a pair gets the same labels whatever else is in the batch and in whatever order.
    """

    name = "simulated"

    def __init__(self, config: RaterConfig | None = None):
        self.config = (config or RaterConfig()).validate()

    def label(self, pairs: pd.DataFrame) -> pd.DataFrame:
        check_pairs(pairs)
        rows = []
        for pair in pairs.to_dict("records"):
            answers = {side: _text(pair[f"response_{side}"]) for side in ("a", "b")}
            adversarial, question = bool(pair["safety"]), last_user_message(pair["prompt"])
            gold = {side: helpfulness_axis(answer, pair["instructions"], question) for side, answer in answers.items()}
            preferred, level = decide(gold["a"], gold["b"], random.Random(f"{self.config.seed}:{pair['pair_id']}"),
                                      self.config)
            safety_preferred = safety_level = None
            safety_gold = {"a": math.nan, "b": math.nan}
            if adversarial:
                safety_gold = {side: safety_axis(answer, question) for side, answer in answers.items()}
                safety_preferred, safety_level = decide(
                    safety_gold["a"], safety_gold["b"],
                    random.Random(f"{self.config.seed}:{pair['pair_id']}:safety"), self.config)
            label = Label(preferred, level, is_safe(answers["a"], adversarial), is_safe(answers["b"], adversarial),
                          safety_preferred, safety_level)
            other = "b" if preferred == "a" else "a"
            rows.append(_labelled_row(pair, label, self.name)
                        | {"gold_chosen": gold[preferred], "gold_rejected": gold[other],
                           "p_agree": self.agreement(gold["a"] - gold["b"]),
                           # named by the helpfulness preference's sides, like chosen_safe (safer_first swaps them)
                           "safety_gold_chosen": safety_gold[preferred], "safety_gold_rejected": safety_gold[other],
                           "safety_p_agree": (self.agreement(safety_gold["a"] - safety_gold["b"]) if adversarial
                                              else math.nan)})
        return pd.DataFrame(rows)

    def agreement(self, gap: float) -> float:
        """The chance that this rater's preference on a pair with gold gap ``gap`` agrees with the gold order:
        ``1 - p_flip(gap)``, and 0.5 on a tie (the rater picks a side at random, the gold judge none)."""
        return 0.5 if abs(gap) < TIE_EPS else 1.0 - flip_probability(gap, self.config)


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


def _level(value) -> str:
    """A level read leniently: "Slightly better" -> slightly_better."""
    return _text(value).lower().replace(" ", "_").replace("-", "_")


def _check_choice(path: Path, line: int, record: dict, name: str, hint: str, errors: list) -> str:
    """``a`` or ``b`` from ``record[name]``; an error naming the field otherwise."""
    value = _text(record.get(name)).lower()
    if value not in ("a", "b"):
        what = "missing label" if not value else f"bad value {value!r}"
        errors.append(DataError(path, f"{what} (expected a or b)", line=line, field=name, hint=hint))
    return value


def _check_level(path: Path, line: int, record: dict, name: str, hint: str, errors: list) -> str:
    level = _level(record.get(name))
    if level not in LEVELS:
        what = "missing label" if not level else f"unknown level {level!r}"
        errors.append(DataError(path, f"{what} (expected one of {', '.join(LEVELS)})", line=line, field=name,
                                hint=hint))
    return level


def _check_safe(path: Path, line: int, record: dict, name: str, errors: list) -> bool:
    value = _text(record.get(name)).lower()
    if value not in ("safe", "unsafe"):
        what = "missing label" if not value else f"bad value {value!r}"
        errors.append(DataError(path, f"{what} (expected safe or unsafe)", line=line, field=name, hint=SAFE_HINT))
    return value == "safe"


def _check_label(path: Path, line: int, record: dict, adversarial: bool) -> tuple[Label | None, list[DataError]]:
    """The :class:`Label` of one labelled line, or the problems found on it.

    Levels are read leniently ("Slightly better" -> slightly_better); anything else is reported. An
    adversarial prompt's line must carry the safety preference; another line may carry it (both fields) or
    leave both empty.
    """
    errors: list[DataError] = []
    preferred = _check_choice(path, line, record, "preferred", LABEL_HINT, errors)
    level = _check_level(path, line, record, "level", LABEL_HINT, errors)
    safe_a = _check_safe(path, line, record, "safe_a", errors)
    safe_b = _check_safe(path, line, record, "safe_b", errors)
    safety_preferred = safety_level = None
    given = [name for name in ("safety_preferred", "safety_level") if _text(record.get(name))]
    if adversarial or given:
        if adversarial or len(given) == 2:
            safety_preferred = _check_choice(path, line, record, "safety_preferred", SAFETY_HINT, errors)
            safety_level = _check_level(path, line, record, "safety_level", SAFETY_HINT, errors)
        else:
            missing = ({"safety_preferred", "safety_level"} - set(given)).pop()
            errors.append(DataError(path, f"{given[0]} is given but {missing} is empty", line=line, field=missing,
                                    hint=SAFETY_HINT))
    return (None if errors else Label(preferred, level, safe_a, safe_b, safety_preferred, safety_level)), errors


class FileAnnotator(Annotator):
    """People label an exported file; ``label`` imports the labelled file at ``labels_path``."""

    name = "file"

    def __init__(self, labels_path=None):
        self.labels_path = Path(labels_path) if labels_path is not None else None

    def export(self, pairs: pd.DataFrame, path) -> Path:
        """Write the pairs to label (CSV or JSONL by suffix), keyed by their ``pair_id``, with empty label
        columns (:data:`LABEL_COLUMNS`: both axes) for people to fill in; ``adversarial`` says which pairs
        need a safety preference."""
        path = _checked_suffix(path, (".csv", ".jsonl"))
        check_pairs(pairs)
        frame = pairs.assign(adversarial=pairs["safety"].astype(bool), **{c: "" for c in LABEL_COLUMNS})
        frame = frame[EXPORT_COLUMNS]
        if path.suffix == ".csv":
            frame["prompt"] = [json.dumps(p, ensure_ascii=False, default=_json_default)
                               for p in frame["prompt"]]
        return write_frame(frame, path)

    def import_labels(self, path, pairs: pd.DataFrame) -> pd.DataFrame:
        """The labelled pairs, or :class:`DataErrors` listing every unknown, duplicate or
        unlabelled pair id and every bad or missing label of either axis (file, line, field).

        Prompts and answers are taken from ``pairs``, not from the file, so an accidental edit
        of an answer in the file cannot change what is trained on.
        """
        path = Path(path)
        check_pairs(pairs)
        records, errors = _read_records(path)
        by_id = {p["pair_id"]: p for p in pairs.to_dict("records")}
        labels: dict[str, Label] = {}
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
                label, problems = _check_label(path, line, record, bool(by_id[pid]["safety"]))
                errors += problems
                if label:
                    labels[pid] = label
        errors += [DataError(path, f"pair {pid!r} has no line", field="pair_id",
                             hint=f"add a line for it: {LABEL_HINT}")
                   for pid in by_id if pid not in seen]
        if errors:
            raise DataErrors(errors)
        return pd.DataFrame([_labelled_row(by_id[pid], labels[pid], self.name) for pid in by_id])

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
