"""A Ctrl-C or SIGTERM that arrives while a garbage collection runs a finalizer is not lost.

Python runs a signal's handler in whatever code the main thread is in; inside a finalizer (``__del__``, a
weakref callback) the handler's exception is printed and dropped. Every step starts with a collection
(``release_memory``), so on a busy machine a signal sent as a step started was swallowed and the run went on
to the end (`test_kill_and_resume.py::test_sigterm_or_ctrl_c_stops_the_run_cleanly` failed that way under
load). ``collect_garbage`` holds the signals until the collection ends."""

from __future__ import annotations

import gc
import signal
import sys

import pytest

from rlhf.core.training import collect_garbage


class Stop(Exception):
    pass


class SignalsItselfWhenFinalized:
    """In a reference cycle, so only a collection finalizes it; its ``__del__`` sends ``signum`` to this
    process and goes on running Python, so the handler runs inside the finalizer."""

    def __init__(self, signum: int):
        self.signum, self.cycle = signum, self

    def __del__(self):
        signal.raise_signal(self.signum)
        sum(range(1000))  # bytecodes after the signal: the handler runs here, inside __del__


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_collection_stops_the_caller_after_it(signum):
    def stop(number, frame):
        raise Stop(number)

    previous = signal.signal(signum, stop)
    try:
        gc.collect()
        SignalsItselfWhenFinalized(signum)  # garbage at once: a cycle only a collection frees
        with pytest.raises(Stop):
            collect_garbage()
        assert signal.getsignal(signum) is stop  # the handler is back
    finally:
        signal.signal(signum, previous)


def test_a_plain_collection_drops_the_same_signal(monkeypatch):
    """What the fix is for: in a plain collection the handler's exception never reaches the caller."""
    def stop(number, frame):
        raise Stop(number)

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        gc.collect()
        SignalsItselfWhenFinalized(signal.SIGTERM)
        gc.collect()  # returns normally
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert dropped == [Stop]
