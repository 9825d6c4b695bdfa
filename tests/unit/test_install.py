"""One import name: the distribution installs a single top-level package, ``rlhf``, from the card's
folders (pyproject.toml maps them), and the entry points work from an editable install (this venv) and
from a non-editable one (built from the tree into a temp folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_every_package_folder_is_listed():
    """A folder with an ``__init__.py`` that pyproject.toml does not list would be missing from a wheel."""
    folders = {folder: name for name, folder in PYPROJECT["package-dir"].items()}
    found = set()
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == set(PYPROJECT["packages"])


@pytest.mark.parametrize("argv", [["-m", "rlhf", "--help"], ["-m", "rlhf.cli", "sft", "--help"]])
def test_entry_points_of_the_editable_install(tmp_path, argv):
    out = _run([sys.executable, *argv], cwd=tmp_path)  # not the repo root: the install, not the tree
    assert out.returncode == 0, out.stderr
    assert "usage: rlhf" in out.stdout
    script = Path(sys.executable).with_name("rlhf")
    assert "rlhf run" in _run([str(script), "--help"], cwd=tmp_path).stdout


@pytest.mark.slow
def test_a_non_editable_install_has_one_top_level_name_and_runs(tmp_path):
    target, source = tmp_path / "site", tmp_path / "source"
    # from a copy of the tracked tree: a build leaves build/ and *.egg-info where it runs
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  "--target", str(target), str(source)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    top = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert top == ["rlhf"]
    # The installed copy comes first on the path, ahead of this venv's editable finder.
    check = ("import importlib, pkgutil, rlhf\n"
             "mods = [m.name for m in pkgutil.walk_packages(rlhf.__path__, 'rlhf.')\n"
             "        if not m.name.endswith('__main__')]\n"
             "for m in mods: importlib.import_module(m)\n"
             "from rlhf.flows.config import compose_config\n"
             "from rlhf.core.assets import asset_path\n"
             "cfg = compose_config(['experiment=smoke'])\n"
             "print(rlhf.core.__file__, len(mods), cfg.campaign.iterations, asset_path('sft_demo.jsonl').is_file())")
    out = _run([sys.executable, "-c", check], cwd=tmp_path, PYTHONPATH=str(target))
    assert out.returncode == 0, out.stderr
    core_file, n_modules, iterations, asset = out.stdout.split()
    assert core_file.startswith(str(target)) and int(n_modules) > 40 and asset == "True"
    cli = _run([sys.executable, "-m", "rlhf", "--help"], cwd=tmp_path, PYTHONPATH=str(target))
    assert cli.returncode == 0 and "usage: rlhf" in cli.stdout, cli.stderr
