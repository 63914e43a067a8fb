"""Ctrl-C, SIGTERM and a time limit during an evaluation.

Ctrl-C and SIGTERM become exceptions in the main thread (``KeyboardInterrupt``, :class:`Terminated`),
so the evaluation run ends as KILLED on the way out; a time limit (``handled(timeout=...)``, an
interval timer) becomes :class:`TimedOut`, so the run ends FAILED with the reason. A few steps must not be cut in half (the model
version's tags): inside :func:`deferred` a signal waits until the block ends. Only the command
line installs the handlers (:func:`handled`); a library caller keeps its own.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. a scheduler or torchrun stopping the job), raised like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class TimedOut(Exception):
    """The command ran past its time limit (``--timeout``)."""

    def __init__(self, seconds: float):
        super().__init__(f"the evaluation took longer than --timeout {seconds:g} s and was stopped")
        self.seconds = seconds


EXIT_TIMED_OUT = 124  # as coreutils' timeout(1)
_state = {"installed": False, "depth": 0, "pending": None, "received": None, "timeout": None}


def _raise_for(signum: int):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum == signal.SIGALRM:
        raise TimedOut(_state["timeout"])
    raise Terminated(signum)


def _on_signal(signum, frame):
    if signum != signal.SIGALRM:  # a time limit is a failure, not an interruption
        _state["received"] = signum
    threading.excepthook, sys.excepthook = _quiet_teardown, _quiet_teardown_sys
    if _state["depth"] > 0:
        _state["pending"] = signum
        return
    _raise_for(signum)


_TEARDOWN_ERRORS = (ConnectionError, EOFError)
_default_excepthook, _default_sys_excepthook = threading.excepthook, sys.excepthook


def _quiet_teardown(args) -> None:
    """After a signal, background threads that lose their peer (e.g. the DataLoader's file
    descriptor sharer while its workers stop) would print tracebacks over the one-line
    message; those are expected, anything else is still shown."""
    if issubclass(args.exc_type, _TEARDOWN_ERRORS):
        return
    _default_excepthook(args)


def _quiet_teardown_sys(exc_type, exc, tb) -> None:
    """The same for threads that report through ``sys.excepthook`` (multiprocessing's)."""
    if issubclass(exc_type, _TEARDOWN_ERRORS) and threading.current_thread() is not threading.main_thread():
        return
    _default_sys_excepthook(exc_type, exc, tb)


def quiet_worker(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a worker's background thread that hands tensors to the
    main process fails with a connection error when the main process stops (Ctrl-C, SIGTERM);
    that traceback, printed over the command's one-line message, tells the user nothing."""
    threading.excepthook, sys.excepthook = _quiet_teardown, _quiet_teardown_sys


def received() -> int | None:
    """The interrupting signal seen since :func:`handled` started, if any (an exception raised
    later as a consequence, e.g. by a killed DataLoader worker, is still an interruption)."""
    return _state["received"]


def raise_if_swallowed() -> None:
    """Raise a signal's exception that never surfaced: one raised inside a ``__del__`` or a
    callback (logging's at-fork hook while a DataLoader starts its workers, a C library's
    callback) is dropped by Python, and the work would go on as if nothing happened. The engine
    calls this at every batch and the evaluation between its phases, so such a Ctrl-C stops the
    work within a batch, not after the figures and the report. Outside :func:`handled` it does
    nothing (a library caller keeps its own handlers)."""
    signum = _state["received"]
    if signum is not None and _state["installed"] and _state["depth"] == 0:
        _raise_for(signum)


_default_unraisablehook = sys.unraisablehook


def _quiet_unraisable(unraisable) -> None:
    """A signal's exception raised where Python cannot propagate it (a ``__del__``, an at-fork
    callback such as logging's ``_releaseLock`` when a DataLoader forks its workers) is printed
    as "Exception ignored in ..." with a traceback over the command's one-line message; it is
    not lost (:func:`raise_if_swallowed` raises it again), so it need not be printed."""
    if _state["received"] is not None and issubclass(unraisable.exc_type, (KeyboardInterrupt, Terminated)):
        return
    _default_unraisablehook(unraisable)


@contextlib.contextmanager
def handled(timeout: float | None = None):
    """Turn SIGINT and SIGTERM into exceptions for the duration (main thread only); with
    ``timeout`` (seconds), raise :class:`TimedOut` once that much time has passed."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    watched = (signal.SIGINT, signal.SIGTERM, *((signal.SIGALRM,) if timeout else ()))
    previous = {s: signal.signal(s, _on_signal) for s in watched}
    _state.update(installed=True, received=None, pending=None, timeout=timeout)
    previous_unraisable, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    if timeout:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = previous_unraisable
        _state.update(installed=False)
        # after a signal the quiet hook stays: workers' threads may still be winding down


@contextlib.contextmanager
def deferred():
    """A block that a signal does not cut in half: it is raised when the block ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if _state["depth"] == 0 and pending is not None:
            _state["pending"] = None
            _raise_for(pending)
