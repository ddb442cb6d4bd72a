"""Ctrl-C and SIGTERM: unwind like KeyboardInterrupt, remember which signal and what was
running, so the CLI can say in one line what was stopped and exit 130 / 143.

Runs opened with sweepflow.tracking.managed_run end KILLED on the way out, and the trial
being trained is told FAIL (tasks/sweep.py). Lightning turns a KeyboardInterrupt inside
`fit` into SystemExit(1); `received()` still tells the CLI it was a signal.

A signal that lands while the main thread is inside a database call (SQLAlchemy, sqlite3,
psycopg2, MLflow's or Optuna's store) is raised at the first line the thread runs outside
that call: raised inside it, it leaves the connection holding SQLite's write lock, and every
clean-up write (the cost, the KILLED status) then fails with "database is locked" after the
20 s busy timeout. The wait uses the line tracer of the frames on the stack (as pdb does),
and lasts at most DEFER_SECONDS: a call that hangs longer is interrupted where it is. A
deferred signal is not raised at all once an interrupt is already unwinding (Lightning ends
`fit` with its own SystemExit on SIGTERM): raised into that clean-up, it would cut a write.

Inside `at_safe_points()` (Lightning's `fit`, whose loggers and callbacks write to the stores
between batches) a signal is not raised where it lands at all: it is held until the next
`safe_point()` (a batch boundary, see tasks/train.StopAtSafePoints), where no write is open.
If none comes within DEFER_SECONDS it falls back to the database-call rule above.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

_received: list[int] = []
_doing: list[str] = []
_pending: list[_Deferred] = []  # at most one: a signal waiting for a database call to end
_safe: list[bool] = []  # one entry per open at_safe_points(): signals wait for safe_point()

DEFER_SECONDS = 10.0
_DATABASE_MODULES = ("sqlalchemy.", "sqlite3", "psycopg2", "alembic.", "mlflow.store.",
                     "optuna.storages.")


class Interrupted(KeyboardInterrupt):
    """Raised by the handlers: a KeyboardInterrupt, so every library unwinds as on Ctrl-C."""


@dataclass
class _Deferred:
    signum: int
    held: bool = False  # held for a safe point (no tracer set), else waiting on a database call
    expired: bool = False
    timer: threading.Timer = field(init=False)  # at DEFER_SECONDS: `expired`, signal again

    def __post_init__(self) -> None:
        self.timer = threading.Timer(DEFER_SECONDS, _expire, (self,))
        self.timer.daemon = True


def in_database_call(frame: FrameType | None) -> bool:
    """Whether `frame` or a caller of it runs code of a database driver or store."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_DATABASE_MODULES):
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    if _pending:  # the time limit's own signal, or another one, while a call runs
        if _pending[0].expired and _pending[0].held:  # no safe point came: the general rule
            signum = _pending.pop().signum
            if in_database_call(frame):
                _defer(signum, frame)
                return
            _raise_unless_unwinding(signum)
        elif _pending[0].expired:
            _raise_unless_unwinding(_pending[0].signum)
        return
    if _received:  # a second signal while unwinding must not interrupt the clean-up
        _received.append(signum)
        return
    _received.append(signum)
    if _safe:
        _hold(signum)
    elif in_database_call(frame):
        _defer(signum, frame)
    else:
        _raise(signum)


def _unwinding() -> bool:
    """Whether an interrupt is already unwinding the main thread: Lightning stops `fit` on
    SIGTERM with its own SystemExit (its handler runs beside ours), and a KeyboardInterrupt
    may be on its way out. Its clean-up writes (KILLED, cost) must not be cut by a second one."""
    return isinstance(sys.exc_info()[1], KeyboardInterrupt | SystemExit)


def _settle() -> None:
    """The deferred signal needs no raise (an interrupt is unwinding): stop waiting for it."""
    if _pending:
        deferred = _pending.pop()
        deferred.timer.cancel()
        if not deferred.held:
            sys.settrace(None)


def _raise_unless_unwinding(signum: int) -> None:
    if _unwinding():
        _settle()
        return
    _raise(signum)


def _raise(signum: int) -> None:
    _settle()
    raise Interrupted(signal.Signals(signum).name)


def _expire(deferred: _Deferred) -> None:
    """The time limit: marked expired, then signalled again."""
    deferred.expired = True
    os.kill(os.getpid(), deferred.signum)


def _hold(signum: int) -> None:
    """Wait for the next safe_point(), or DEFER_SECONDS."""
    deferred = _Deferred(signum, held=True)
    _pending[:] = [deferred]
    deferred.timer.start()


def _defer(signum: int, frame: FrameType) -> None:
    """Raise at the first line outside the database call, or after DEFER_SECONDS."""
    deferred = _Deferred(signum)
    _pending[:] = [deferred]

    def on_line(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "line" and _pending and not in_database_call(frame):
            _raise_unless_unwinding(signum)
        return on_line

    caller: FrameType | None = frame
    while caller is not None:  # only the frames on the stack now: calls made later run untraced
        caller.f_trace = on_line
        caller = caller.f_back
    sys.settrace(lambda *_: None)
    deferred.timer.start()


@contextmanager
def at_safe_points() -> Iterator[None]:
    """Signals that land inside wait for safe_point() (or DEFER_SECONDS). The block's end is
    a safe point too: a held signal is raised there, in place of an error the block raised,
    and dropped when an interrupt (Lightning's own SystemExit on SIGTERM) is the way out."""
    _safe.append(True)
    try:
        yield
    except BaseException as err:
        if _pending and _pending[0].held:
            if isinstance(err, KeyboardInterrupt | SystemExit):
                _settle()
            else:
                _raise(_pending[0].signum)
        raise
    finally:
        _safe.pop()
    safe_point()


def safe_point() -> None:
    """Raise a signal held by at_safe_points(); call it where no store write is open."""
    if _pending and _pending[0].held:
        _raise_unless_unwinding(_pending[0].signum)


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
