"""SIGTERM as an exception, so every ``finally`` runs: the one helper for the demo and the benchmarks.

A program that owns cgroups, children or attached BPF programs must undo them on
``kill`` as on Ctrl-C; Python's default SIGTERM ends the process without unwinding.
The daemon is the exception: its loop stops on a flag, not by unwinding (commands/daemon.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from agent.errors import NodeAgentError

_Handler = Callable[[int, FrameType | None], Any] | int


class Terminated(NodeAgentError):
    """SIGTERM (or SIGHUP) arrived; raised so the cleanup on the way out runs."""

    exit_code = 128 + signal.SIGTERM


def _raise(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"stopped by {signal.Signals(signum).name}", help="what it had started was cleaned up")


@contextlib.contextmanager
def _handled(handler: _Handler, signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # Python's rule: main thread only
        yield
        return
    wanted = [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]  # nohup'ed stays ignored
    old = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


def raising_signals() -> contextlib.AbstractContextManager[None]:
    """Inside the block SIGTERM and SIGHUP raise :class:`Terminated`, SIGINT KeyboardInterrupt."""
    return _handled(_raise, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def ignoring_signals() -> contextlib.AbstractContextManager[None]:
    """Inside the block SIGINT, SIGTERM and SIGHUP are ignored: a second Ctrl-C must not stop a cleanup half-way."""
    return _handled(signal.SIG_IGN, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
