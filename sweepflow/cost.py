"""What a run cost: CPU seconds, wall seconds and peak memory, measured with psutil.

Every run opened by `tracking.managed_run` (each trial, and the sweep's parent run) is metered
from open to close and gets `cost/cpu_seconds` (user + system time of this process and its
children, all threads), `cost/wall_seconds` and `cost/peak_rss_mb` (the largest resident
memory of this process and its children seen while the run was open, sampled every 0.2 s).
A parent run also gets its trials' totals: `cost/trials_cpu_seconds`,
`cost/trials_wall_seconds` and `cost/trials_peak_rss_mb` (the largest of them).

CPU seconds above wall seconds mean several cores were busy; their ratio is the average number
of cores used. Threads the process runs beside the run (Prefect's and MLflow's loggers) are
counted too: they are part of what the run cost on this machine.
"""

from __future__ import annotations

import threading
import time

import psutil
from pydantic import BaseModel, ConfigDict

SAMPLE_SECONDS = 0.2
PREFIX = "cost/"


class Cost(BaseModel):
    model_config = ConfigDict(frozen=True)
    cpu_seconds: float
    wall_seconds: float
    peak_rss_mb: float

    def metrics(self, prefix: str = PREFIX) -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.model_dump().items()}


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # the child ended meanwhile
            pass
    return total


class Meter:
    """Started on creation; `stop()` ends the sampling and returns the cost so far."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._cpu0, self._wall0 = _cpu_seconds(self._proc), time.perf_counter()
        self._peak = _rss(self._proc)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="sweepflow-cost",
                                        daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            try:
                self._peak = max(self._peak, _rss(self._proc))
            except psutil.Error:
                return

    def stop(self) -> Cost:
        self._done.set()
        self._peak = max(self._peak, _rss(self._proc))
        return Cost(cpu_seconds=_cpu_seconds(self._proc) - self._cpu0,
                    wall_seconds=time.perf_counter() - self._wall0,
                    peak_rss_mb=self._peak / 2**20)


def totals(children: list[dict[str, float]]) -> dict[str, float]:
    """The trials' totals from their cost/* metrics (children without them are skipped)."""
    metered = [m for m in children if f"{PREFIX}cpu_seconds" in m]
    if not metered:
        return {}
    return {f"{PREFIX}trials_cpu_seconds": sum(m[f"{PREFIX}cpu_seconds"] for m in metered),
            f"{PREFIX}trials_wall_seconds": sum(m[f"{PREFIX}wall_seconds"] for m in metered),
            f"{PREFIX}trials_peak_rss_mb": max(m[f"{PREFIX}peak_rss_mb"] for m in metered)}
