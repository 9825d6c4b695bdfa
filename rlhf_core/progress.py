"""Progress bars for the long loops, all made by one helper so they behave the same.

Sampling, reward scoring, the temperature search, GAtt synthesis, evaluation and training each run for
minutes on a CPU; a bar with the count done, the rate and the ETA tells whether to wait or to stop.

When a bar shows: never under :func:`quiet` or when the caller says ``disable`` (e.g. not the main
process); else ``RLHF_PROGRESS=1`` forces bars on (a log file you watch with ``tail -f``) and
``RLHF_PROGRESS=0`` forces them off; unset, a bar shows only when stderr is a terminal (tqdm's
``disable=None``), so CI logs and captured task logs stay readable.

Nesting: a bar opened while another is open (a sampling pass inside the temperature search) is drawn
below it and cleared when it closes (``leave=None``), so a step leaves one line per phase. A loop whose
own bar already covers the work inside it (PPO: a rollout and a scoring pass every step) runs that work
under :func:`quiet` instead, so its log does not fill with a bar per step.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

ENV = "RLHF_PROGRESS"
MININTERVAL = 1.0  # seconds between redraws: often enough to see it move, rare enough for a log file
_ON, _OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_QUIET: ContextVar[bool] = ContextVar("rlhf_progress_quiet", default=False)


def forced() -> bool | None:
    """``RLHF_PROGRESS`` read now: True (bars on), False (off), None (unset or not understood: automatic)."""
    value = os.environ.get(ENV, "").strip().lower()
    return True if value in _ON else False if value in _OFF else None


def _disable(disable: bool) -> bool | None:
    """tqdm's ``disable``: True (no bar), False (a bar, even on a file) or None (a bar on a terminal only)."""
    if disable or _QUIET.get():
        return True
    force = forced()
    return None if force is None else not force


def shown(disable: bool = False) -> bool:
    """Whether a bar made now would show, for libraries with their own bar switch (vLLM's ``use_tqdm``)."""
    mode = _disable(disable)
    return not mode if mode is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(total: int | None, desc: str, unit: str = "it", *, leave: bool | None = None, disable: bool = False,
             **kwargs):
    """A tqdm bar counting ``unit`` up to ``total`` (count, rate, ETA); use it as a context manager.

    ``leave=None`` keeps the bar's last line only when it is not nested in another bar; ``disable=True``
    is the caller's veto (no env var overrides it); ``kwargs`` go to tqdm (``initial``, ...).
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=_disable(disable),
                mininterval=MININTERVAL, dynamic_ncols=True, **kwargs)


@contextmanager
def quiet() -> Iterator[None]:
    """No bars are made inside (in this thread or task): for work an outer bar already counts."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def follow_library_bars() -> None:
    """transformers' own bars (loading weights, writing shards) follow the same rule as ours: off when
    ours would not show (no terminal, ``RLHF_PROGRESS=0``), so a CI log has none of their carriage returns."""
    from transformers.utils import logging as hf_logging

    if shown():
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
