"""``python -m rlhf``: the same as the ``rlhf`` command."""

from rlhf.cli import run

run()
