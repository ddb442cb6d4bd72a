"""One `prefect server start` on a free 127.0.0.1 port for the whole bench.

Without PREFECT_API_URL every `sweepflow run` starts a temporary server of its own (~11 s),
which would be timed as sweepflow overhead; a long-lived server is how Prefect is run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sweepflow.netutil import NotUp, free_port, wait_until_up


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    startup_seconds: float


@contextmanager
def prefect_server(env: dict[str, str], log: Path, timeout: float = 180) -> Iterator[
        PrefectServer]:
    """Start the server (its own process group), wait for /api/health, stop it at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start",
           "--host", "127.0.0.1", "--port", str(port)]
    server_env = {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_UI_ENABLED": "false"}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        try:
            wait_until_up(f"{url}/health", timeout, proc, interval=0.5)
        except NotUp as err:
            raise RuntimeError(f"prefect server did not start ({err}); see {log}") from None
        yield PrefectServer(url, time.perf_counter() - start)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
