"""A Ctrl-C or SIGTERM that arrives while a garbage collection runs a finalizer is not lost.

Python runs a signal's handler in whatever code the main thread is in; inside a finalizer (``__del__``, a
weakref callback) the handler's exception is printed and dropped. Every step starts with a collection
(``release_memory``), so on a busy machine a signal sent as a step started was swallowed and the run went on
to the end (`test_kill_and_resume.py::test_sigterm_or_ctrl_c_stops_the_run_cleanly` failed that way under
load). ``collect_garbage`` holds the signals until the collection ends. A collection the platform does not
start (Python's automatic one, anywhere) can still drop the handler's exception: the run's handler
(``on_interrupt``) remembers the signal, and the next step raises it again (``raise_if_interrupted``)."""

from __future__ import annotations

import gc
import signal
import sys

import pytest

from rlhf.core.training import collect_garbage, forget_interrupts, on_interrupt, raise_if_interrupted


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_dropped_in_any_collection_stops_the_next_step(monkeypatch, signum):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    previous = signal.signal(signum, on_interrupt)
    forget_interrupts()
    try:
        raise_if_interrupted()  # nothing on record: a no-op
        gc.collect()
        SignalsItselfWhenFinalized(signum)
        gc.collect()  # as an automatic collection would: the KeyboardInterrupt is dropped, the caller goes on
        assert dropped == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt, match=f"signal {int(signum)}"):
            raise_if_interrupted()  # where the next step starts (flows/iteration.py) and as the command ends
    finally:
        signal.signal(signum, previous)
        forget_interrupts()
    raise_if_interrupted()


def test_a_command_that_went_on_after_a_dropped_signal_still_ends_with_130(monkeypatch, capsys):
    """The last step finished although a SIGTERM came during it: `rlhf` exits 130 (interrupted), not 0."""
    import rlhf.cli
    from rlhf.cli.common import Command

    def finishes_despite_the_signal(overrides: list[str]) -> int:
        if overrides == ["signal=yes"]:
            gc.collect()
            SignalsItselfWhenFinalized(signal.SIGTERM)
            gc.collect()  # the handler's KeyboardInterrupt is dropped here
        return 0

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    monkeypatch.setitem(rlhf.cli.COMMANDS, "ui", Command("ui", "a command", "rlhf ui", finishes_despite_the_signal))
    try:
        assert rlhf.cli.main(["ui", "signal=yes"]) == 130
        assert "interrupted" in capsys.readouterr().err
        assert rlhf.cli.main(["ui"]) == 0  # the next command in the same process starts with no signal on record
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        forget_interrupts()


def test_a_sigint_ignored_from_the_start_stays_ignored(monkeypatch):
    """A background job of a non-interactive shell starts with SIGINT ignored; `rlhf` leaves it so."""
    import rlhf.cli
    from rlhf.cli.common import Command

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    seen = {}
    monkeypatch.setitem(rlhf.cli.COMMANDS, "ui", Command("ui", "a command", "rlhf ui", lambda overrides: seen.update(
        {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}) or 0))
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert rlhf.cli.main(["ui"]) == 0
        assert seen == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: on_interrupt}
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert rlhf.cli.main(["ui"]) == 0
        assert seen == {signal.SIGINT: on_interrupt, signal.SIGTERM: on_interrupt}
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
