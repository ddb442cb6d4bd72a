"""The temporary Prefect server of a command run without PREFECT_API_URL.

Why not Prefect's own `SubprocessASGIServer` (what Prefect's ephemeral mode and
`prefect_test_harness` use)? It starts uvicorn as an ordinary child in our process group, so
a terminal's Ctrl-C reaches the server first and the CLI, unwinding (flow and task runs set
to CANCELLED/CRASHED, logs flushed), spends minutes retrying a dead API; and a SIGKILLed CLI
leaves it orphaned on its port. Neither can be changed through its public API. So this runs
the same app, `prefect.server.api.server.create_app(ephemeral=True)` (the public factory,
not Prefect's internal `PREFECT__SERVER_*` variables), under uvicorn in a session of its own
(terminal signals do not reach it) with PR_SET_PDEATHSIG on Linux (the kernel kills it when
the CLI dies, whatever the signal). `temporary_server()` stops it on every way out, after
draining Prefect's log and event queues into it, as `prefect_test_harness` does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sweepflow.netutil import NotUp, free_port, wait_until_up

log = logging.getLogger(__name__)

# Runs in the child: die with the parent (PR_SET_PDEATHSIG = 1, SIGKILL = 9), and do not
# start if the parent is already gone; then become the uvicorn server.
_LAUNCH = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""


def ephemeral_app() -> Any:  # noqa: ANN401 - a FastAPI app; uvicorn's factory in the child
    """Prefect's API as its ephemeral server serves it: no UI, only the services an
    ephemeral server runs."""
    from prefect.server.api.server import create_app

    return create_app(ephemeral=True, final=True)


def _command(port: int) -> list[str]:
    return [sys.executable, "-c", _LAUNCH, str(os.getpid()), "--factory",
            f"{__name__}:ephemeral_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def _configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value())


@contextmanager
def temporary_server(timeout: float = 120.0) -> Iterator[str | None]:
    """Run a Prefect server for the block unless PREFECT_API_URL is set; yields its API URL
    (PREFECT_API_URL points at it meanwhile, also for child processes), or None when an API
    was configured."""
    if _configured():
        yield None
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0"}
    proc = subprocess.Popen(_command(port), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_until_up(f"{url}/health", timeout, proc)
        except NotUp as err:
            raise RuntimeError(f"the temporary Prefect server did not start: {err}") from None
        with _api_url(url):
            try:
                yield url
            finally:
                _drain()
    finally:
        _stop(proc)


@contextmanager
def _api_url(url: str) -> Iterator[None]:
    """PREFECT_API_URL = `url` in the environment (child processes), in Prefect's global
    settings (other threads) and in this context's settings; restored afterwards."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()


def _drain(timeout: float = 30.0) -> None:
    """Send what Prefect's background workers still hold (run logs, events) to the server
    while it is up; otherwise they retry against a stopped server at interpreter exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout, at_exit=False)
        except Exception as err:  # noqa: BLE001 - best effort: the results are written
            log.debug("draining %s: %s", worker.__name__, err)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
