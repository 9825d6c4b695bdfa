"""What the code version (part of every step's cache key) covers: the code that computes step outputs,
not the orchestration around it."""

from pathlib import Path

from rlhf_core.artifacts import _STEP_CODE, code_version, source_digest


def _tree(root: Path) -> None:
    for rel, text in {"rlhf_core/ppo.py": "kl = 0.1\n", "rlhf_core/steps/sft.py": "lr = 1e-5\n",
                      "tasks/steps.py": "def sft(): ...\n", "tasks/tracking.py": "def log(): ...\n",
                      "flows/report.py": "TITLE = 'x'\n", "flows/cli.py": "def main(): ...\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_editing_the_algorithm_or_a_task_changes_it(tmp_path):
    _tree(tmp_path)
    before = source_digest(tmp_path, _STEP_CODE)
    for rel in ("rlhf_core/steps/sft.py", "tasks/steps.py"):
        file = tmp_path / rel
        original = file.read_text()
        file.write_text(original + "# changed\n")
        assert source_digest(tmp_path, _STEP_CODE) != before, rel
        file.write_text(original)
    assert source_digest(tmp_path, _STEP_CODE) == before
    (tmp_path / "rlhf_core/steps/sft.py").rename(tmp_path / "rlhf_core/steps/sft2.py")  # same bytes, new module
    assert source_digest(tmp_path, _STEP_CODE) != before


def test_editing_reports_cli_or_tracking_reruns_nothing(tmp_path):
    _tree(tmp_path)
    before = source_digest(tmp_path, _STEP_CODE)
    for rel in ("flows/report.py", "flows/cli.py", "tasks/tracking.py"):
        (tmp_path / rel).write_text("# rewritten\n")
    (tmp_path / "flows/new_command.py").write_text("x = 1\n")
    assert source_digest(tmp_path, _STEP_CODE) == before


def test_the_real_code_version_names_the_package_and_the_step_code():
    base, _, digest = code_version().rpartition("+")
    assert base and len(digest) == 12
    assert digest == source_digest(Path(__file__).resolve().parents[2], _STEP_CODE)
