"""How `imgq classify` hears that it must stop: Ctrl-C (SIGINT), SIGTERM (`kill`, `timeout`, a service manager)
and SIGHUP (its terminal closed) each become an exception in its main thread, so that it cancels its job and
stops what it started on every way out (issue 25.1), not only on Ctrl-C.

While a job is watched, the signal is raised at the next poll rather than wherever it lands: landing in a redis
client's ``__del__``, Python prints it as an ignored exception and loses it (issue 19.3). A second signal raises
at once, should a poll hang.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM or SIGHUP ended the command. A BaseException, as KeyboardInterrupt is: no ``except Exception``
    swallows it on its way to the code that cancels the job. The CLI exits with 128 + the signal's number, as a
    shell reports a process that signal ended."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# Read and written by the handlers (in the main thread, between two bytecodes): plain values, not a
# threading.Event, whose lock the interrupted main thread may hold.
_state: dict = {"pending": None, "deferring": False}


def _raise_or_defer(exc: BaseException) -> None:
    """Raise ``exc`` now, or keep it for the next poll while a job is watched (the first signal only)."""
    if _state["deferring"] and _state["pending"] is None:
        _state["pending"] = exc
        return
    raise exc


def _terminated(signum, frame) -> None:
    _raise_or_defer(Terminated(signum))


def _interrupted(signum, frame) -> None:
    _raise_or_defer(KeyboardInterrupt())


@contextmanager
def ended_by_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise Terminated in the main thread. A signal this process was
    told to ignore (`nohup` ignores SIGHUP) stays ignored, and one someone else handles stays theirs. Outside the
    main thread (nowhere to catch a signal) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in ENDING_SIGNALS}
    mine = [sig for sig, handler in previous.items() if handler is signal.SIG_DFL]
    for sig in mine:
        signal.signal(sig, _terminated)
    try:
        yield
    finally:
        for sig in mine:
            signal.signal(sig, previous[sig])


@contextmanager
def signals_between_polls() -> Iterator[None]:
    """While the block runs, a first Ctrl-C (and SIGTERM or SIGHUP, where ``ended_by_signals`` turned them into
    Terminated) is raised at the next poll (``raise_if_interrupted``) instead of wherever the signal lands. A
    second one raises at once. Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    own_ctrl_c = previous is signal.default_int_handler  # not when ignored (nohup), or handled by someone else
    if own_ctrl_c:
        signal.signal(signal.SIGINT, _interrupted)
    _state.update(pending=None, deferring=True)
    try:
        yield
    finally:
        _state["deferring"] = False
        if own_ctrl_c:
            signal.signal(signal.SIGINT, previous)
    raise_if_interrupted()  # received after the last poll: still an interrupt


def raise_if_interrupted() -> None:
    """Raises the signal's exception (KeyboardInterrupt, Terminated) if one was received since the last call
    (see ``signals_between_polls``)."""
    pending, _state["pending"] = _state["pending"], None
    if pending is not None:
        _state["deferring"] = False  # the wait ends here: a second signal, while it unwinds, raises at once
        raise pending
