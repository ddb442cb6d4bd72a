"""Helpers for tests that start real servers (`prefect server start`, `sweepflow serve`,
`sweepflow ui`) as subprocesses: a free loopback port, a clean environment, bounded waits, and
a stop that always leaves nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from sweepflow import stack
from sweepflow.netutil import answers, free_port  # noqa: F401 - for the server tests

BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect settings and MLFLOW_TRACKING_URI (the
    session test harness points this process at its own Prefect server), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    return {**env, **extra}


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the process group, then SIGTERM, then SIGKILL; then kill what is left of its
    descendants (Prefect starts flow-run processes in sessions of their own)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    stack.stop(proc, grace=30)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=5)


@contextmanager
def started(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group with output to `log`; always stopped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=log.parent, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def wait_for(check: Callable[[], Any], timeout: float, what: str, logs: list[Path],
             procs: list[subprocess.Popen]) -> Any:
    """Poll `check` until it returns something truthy; fail with the logs' tails on timeout or
    when one of `procs` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{Path(proc.args[0]).name} exited ({proc.returncode}) while "
                            f"waiting for {what}\n" + "\n".join(tail(p) for p in logs))
        result = check()
        if result:
            return result
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n"
                + "\n".join(tail(p) for p in logs))
