"""`make install`'s script (scripts/install-venv.sh) into a fresh venv: what it installs, and what it leaves behind.

uv installs the pinned packages from pip's local wheel folders (a machine's CPU build of torch lies there; PyPI's
torch of the same version is a CUDA build), byte-compiles them, and keeps its build-lock files out of the shared
temp dir.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_install_script_builds_a_working_venv_and_leaves_the_temp_dir_clean(tmp_path):
    venv, tmp = tmp_path / "venv", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    done = subprocess.run(["bash", str(REPO / "scripts" / "install-venv.sh"), str(venv)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "installing with pip instead" not in done.stderr, done.stderr[-3000:]  # uv's path, not the fallback

    # The embedded model is found as the project finds it (its package is never imported: --no-deps).
    probe = ("import sysconfig, torch, rlhf.cli; from rlhf.core.models import embedded_gguf_path; "
             "assert embedded_gguf_path().stat().st_size > 50e6; "
             "print(torch.__version__); print(sysconfig.get_paths()['purelib'])")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    version, site = out.stdout.splitlines()
    # The same torch as the suite's own venv: pip's find-links reached uv (without them: PyPI's build).
    assert version == torch.__version__
    assert list(Path(site, "torch", "__pycache__").glob("__init__.cpython-*.pyc")), "site-packages not byte-compiled"
    assert not list(tmp.iterdir()), f"left in the temp dir: {sorted(p.name for p in tmp.iterdir())}"
