"""Who owns a run: host, PID and process start time, tagged on every MLflow run and Optuna
trial this process opens, so a later command can tell a live owner from a dead one.

The start time (psutil's `create_time()`, seconds since the epoch) tells a reused PID from
the owner: a PID whose process started at another time is a different process.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil

HOST_TAG, PID_TAG, START_TAG = "sweepflow.owner.host", "sweepflow.owner.pid", \
    "sweepflow.owner.start"
OWNER_ATTR = "owner"  # Optuna trial user attribute: {"host", "pid", "start"}


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str  # "" where the start time cannot be read

    def tags(self) -> dict[str, str]:
        return {HOST_TAG: self.host, PID_TAG: str(self.pid), START_TAG: self.start}

    def attr(self) -> dict[str, str | int]:
        return {"host": self.host, "pid": self.pid, "start": self.start}


def start_time(pid: int) -> str | None:
    """The process's start time ("%.2f" seconds since the epoch); None if there is no such
    process ("" if it exists but its start time cannot be read)."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return "" if psutil.pid_exists(pid) else None


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
    # Tags written before psutil held clock ticks since boot (no "."): not comparable.
    return now is None or bool(start and "." in start and now and now != start)
