"""Who owns a run: host, PID and process start time, tagged on every MLflow run and Optuna
trial this process opens, so a later command can tell a live owner from a dead one.

The start time (from /proc, in clock ticks since boot) tells a reused PID from the owner:
a PID whose process started at another time is a different process.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

HOST_TAG, PID_TAG, START_TAG = "sweepflow.owner.host", "sweepflow.owner.pid", \
    "sweepflow.owner.start"
OWNER_ATTR = "owner"  # Optuna trial user attribute: {"host", "pid", "start"}


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str  # "" where the platform has no /proc

    def tags(self) -> dict[str, str]:
        return {HOST_TAG: self.host, PID_TAG: str(self.pid), START_TAG: self.start}

    def attr(self) -> dict[str, str | int]:
        return {"host": self.host, "pid": self.pid, "start": self.start}


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks after boot; None if there is no such process
    ("" where /proc is not available and the PID exists)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        return stat.read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def me() -> Owner:
    return Owner(socket.gethostname(), os.getpid(), start_time(os.getpid()) or "")


def is_dead(host: str | None, pid: str | int | None, start: str | None) -> bool:
    """True only for an owner on this host whose process is gone (or is another process
    now). An owner on another host is never judged from here."""
    if not host or pid in (None, "") or host != socket.gethostname():
        return False
    try:
        now = start_time(int(pid))
    except ValueError:
        return False
    return now is None or bool(start and now and now != start)
