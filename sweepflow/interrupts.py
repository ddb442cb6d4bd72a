"""Ctrl-C and SIGTERM: unwind like KeyboardInterrupt, remember which signal and what was
running, so the CLI can say in one line what was stopped and exit 130 / 143.

Runs opened with sweepflow.tracking.managed_run end KILLED on the way out, and the trial
being trained is told FAIL (tasks/sweep.py). Lightning turns a KeyboardInterrupt inside
`fit` into SystemExit(1); `received()` still tells the CLI it was a signal.
"""

from __future__ import annotations

import signal
import threading

_received: list[int] = []
_doing: list[str] = []


class Interrupted(KeyboardInterrupt):
    """Raised by the handlers: a KeyboardInterrupt, so every library unwinds as on Ctrl-C."""


def _handler(signum: int, _frame: object) -> None:
    first = not _received
    _received.append(signum)
    if first:  # a second signal while unwinding must not interrupt the clean-up
        raise Interrupted(signal.Signals(signum).name)


def install() -> None:
    """SIGINT and SIGTERM handlers (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


def doing(what: str | None) -> None:
    """Record what is running now (e.g. "trial 3 of study tweets"); None when it ended."""
    _doing[:] = [what] if what else []


def received() -> int | None:
    return _received[0] if _received else None


def exit_code() -> int:
    return 128 + (received() or signal.SIGINT)


def line() -> str:
    name = signal.Signals(received() or signal.SIGINT).name
    what = f"{_doing[0]} stopped" if _doing else "stopped"
    return f"interrupted ({name}): {what}; its runs are marked KILLED"
