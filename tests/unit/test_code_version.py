"""What the code version (part of every step's key) covers: the code that computes step outputs (the
core; the tasks add their own module's digest to their cache keys), not the orchestration around it."""

import shutil
from pathlib import Path

from rlhf.core.artifacts import CORE_DIR, code_version, source_digest
from rlhf.tasks import steps


def _tree(root: Path) -> None:
    for rel, text in {"core/ppo.py": "kl = 0.1\n", "core/steps/sft.py": "lr = 1e-5\n",
                      "tasks/steps.py": "def sft(): ...\n", "rlhf/tracking.py": "def log(): ...\n",
                      "rlhf/record/report.py": "TITLE = 'x'\n", "rlhf/cli/__init__.py": "def main(): ...\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_editing_the_algorithm_changes_it(tmp_path):
    _tree(tmp_path)
    before = source_digest(tmp_path / "core")
    file = tmp_path / "core/steps/sft.py"
    file.write_text(file.read_text() + "# changed\n")
    assert source_digest(tmp_path / "core") != before
    file.write_text("lr = 1e-5\n")
    assert source_digest(tmp_path / "core") == before
    file.rename(tmp_path / "core/steps/sft2.py")  # same bytes, another module
    assert source_digest(tmp_path / "core") != before


def test_editing_a_task_changes_its_digest(tmp_path):
    _tree(tmp_path)
    before = source_digest(tmp_path / "tasks/steps.py")
    (tmp_path / "tasks/steps.py").write_text("def sft(): return 1\n")
    assert source_digest(tmp_path / "tasks/steps.py") != before


def test_editing_reports_cli_or_tracking_reruns_nothing(tmp_path):
    _tree(tmp_path)
    before = source_digest(tmp_path / "core")
    for rel in ("rlhf/record/report.py", "rlhf/cli/__init__.py", "rlhf/tracking.py", "tasks/steps.py"):
        (tmp_path / rel).write_text("# rewritten\n")
    (tmp_path / "rlhf/cli/new_command.py").write_text("x = 1\n")
    assert source_digest(tmp_path / "core") == before


def test_the_same_code_elsewhere_has_the_same_version(tmp_path):
    """A source checkout (rlhf_core/) and an installed wheel (rlhf/core/) hash alike: paths count
    relative to the core's own folder."""
    shutil.copytree(CORE_DIR, tmp_path / "rlhf" / "core", ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(tmp_path / "rlhf" / "core") == source_digest(CORE_DIR)


def test_the_real_code_version_names_the_package_and_the_core():
    base, _, digest = code_version().rpartition("+")
    assert base and len(digest) == 12
    assert digest == source_digest(CORE_DIR)
    assert steps.TASK_CODE == source_digest(Path(steps.__file__))
