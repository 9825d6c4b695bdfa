"""The output contract of every step: the directory it writes under an iteration's directory and the
files in it. Runners write through these names (each runner module re-exports its own contracts);
tasks, flows, the CLI and the report find outputs through them, so a file name is spelled once.

A step's directory holds ``manifest.json`` (written last) beside the files named here; a model step's
directory is itself a ``save_pretrained`` model directory. This module is imported by the campaign
record too, so it stays free of heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METRICS = "metrics.jsonl"  # one line per optimizer step, in every training step's output


@dataclass(frozen=True)
class Outputs:
    """``dirname`` under the iteration directory; ``files`` maps a name to the file's name in it."""

    dirname: str
    files: dict[str, str] = field(default_factory=dict)

    def dir(self, iteration_dir: str | Path) -> Path:
        """The step's output directory in ``iteration_dir`` (``<campaign>/iter-<n>``)."""
        return Path(iteration_dir) / self.dirname

    def paths(self, out_dir: str | Path) -> dict[str, str]:
        """Every named file of an output directory, as absolute path strings (a step reference's ``files``)."""
        return {name: str(Path(out_dir).resolve() / file) for name, file in self.files.items()}

    def __getitem__(self, name: str) -> str:
        return self.files[name]


# iteration 0
SFT = Outputs("sft", {"metrics": METRICS})
SEED_PAIRS = Outputs("seed_pairs", {"helpful": "helpful.parquet", "safety": "safety.parquet"})

# iteration n, in DAG order
COLLECT_PAIRS = Outputs("collect_pairs", {"pairs": "pairs.parquet"})
ANNOTATE = Outputs("annotate", {"pairs": "pairs.parquet"})
RM_NAMES = ("helpful", "safety")


def rm_names(train_safety: bool) -> list[str]:
    """The reward models an iteration trains (``reward.train_safety``)."""
    return list(RM_NAMES) if train_safety else ["helpful"]


def rm_outputs(name: str) -> Outputs:
    """A trained reward model: an RM directory (``rlhf.core.reward.model``) with its test scores."""
    return Outputs(f"rm-{name}", {"metrics": METRICS, "eval": "eval.csv", "accuracy": "accuracy_by_level.md"})


def rm_eval_outputs(name: str) -> Outputs:
    """A reward model's accuracy per preference level on held-out pairs."""
    return Outputs(f"rm-{name}-eval", {"eval": "eval.csv", "accuracy": "accuracy_by_level.md"})


RM_ABLATION = Outputs("rm-ablation", {"table_csv": "table28.csv", "table_md": "table28.md"})
SEARCH_TEMPERATURE = Outputs("search_temperature", {"curve": "curve.csv", "samples": "samples.parquet"})
REJECTION_SAMPLE = Outputs("rejection_sample", {"candidates": "candidates.parquet", "pool": "pool.parquet",
                                                "pool_sft": "pool_sft.jsonl", "gain": "gain.csv"})
TRAIN_POLICY = Outputs("train_policy", {"metrics": METRICS})
PPO = Outputs("ppo", {"metrics": METRICS, "eval_history": "eval_history.csv"})
GATT = Outputs("gatt", {"metrics": METRICS, "dialogues": "dialogues.parquet", "rows": "gatt_sft.jsonl",
                        "judgments": "judgments.parquet", "adherence": "adherence.csv"})
# gatt.mix_into=pool: the dialogues (and the input policy's adherence) before train_policy, which trains on them
# with the pool; the iteration's final policy's adherence after
GATT_DIALOGUES = Outputs("gatt_dialogues", {"dialogues": "dialogues.parquet", "rows": "gatt_sft.jsonl",
                                            "before": "before.json", "judgments": "judgments.parquet"})
GATT_ADHERENCE = Outputs("gatt_adherence", {"judgments": "judgments.parquet", "adherence": "adherence.csv"})
EVALUATE = Outputs("evaluate", {"answers": "answers.parquet", "judgments": "judgments.parquet"})
# distillation (rejection.student): the student fine-tuned on the iteration's pool, and judged on its own
DISTILL = Outputs("distill", {"metrics": METRICS})
EVALUATE_STUDENT = Outputs("evaluate-student", {"answers": "answers.parquet", "judgments": "judgments.parquet"})


def answers_cache(iteration_dir: str | Path) -> Path:
    """``<campaign>/answers``: each model's answers to the evaluation prompts, kept by the evaluate steps of
    every iteration (one entry per model, prompt set, system prompt and sampling config; an entry is a folder
    with ``answers.parquet`` and its manifest), so a later evaluation reads the answers of the models it has
    seen before instead of sampling them again (``rlhf.core.steps.evaluate``)."""
    return Path(iteration_dir).parent / "answers"

# single-step commands only (`rlhf sample`, `rlhf gatt data|train|eval`)
SAMPLE = Outputs("sample", {"samples": "samples.parquet"})


def shard_outputs(step: str, index: int, count: int) -> Outputs:
    """One shard of a sharded step (``rlhf.core.shards``): its rows, which the step's merge reads."""
    return Outputs(f"{step}-shard-{index}-of-{count}", {"rows": "rows.parquet"})
GATT_DATA = Outputs("gatt-data", {"dialogues": "dialogues.parquet", "rows": "gatt_sft.jsonl"})
GATT_TRAIN = Outputs("gatt-train", {"metrics": METRICS})
GATT_EVAL = Outputs("gatt-eval", {"judgments": "judgments.parquet", "adherence": "adherence.json"})
