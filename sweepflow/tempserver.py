"""The temporary Prefect server of a command run without PREFECT_API_URL, owned by us.

Prefect would start its own ephemeral server as an ordinary child: Ctrl-C in a terminal
reaches it first (same process group), so the client spends minutes retrying a dead API,
and a SIGKILLed client leaves it orphaned on its port. This one runs the same uvicorn app,
in its own session (terminal signals do not reach it) and with PR_SET_PDEATHSIG (Linux):
the kernel kills it when its parent dies, whatever the signal. `stop` ends it after the
client's last call (the CLI calls it at exit, after Prefect has drained its queues).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

# Runs in the child: die with the parent (PR_SET_PDEATHSIG = 1, SIGKILL = 9), and do not
# start if the parent is already gone; then become the uvicorn server.
_LAUNCH = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""
_process: subprocess.Popen | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(port: int) -> list[str]:
    import prefect

    return [sys.executable, "-c", _LAUNCH, str(os.getpid()),
            "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def start(timeout: float = 120.0) -> str | None:
    """Start the server unless PREFECT_API_URL is set; returns its API URL (and sets
    PREFECT_API_URL for this process), or None when an API was configured."""
    global _process
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or _process is not None:
        return None
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    _process = subprocess.Popen(_command(port), env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                os.environ["PREFECT_API_URL"] = url
                from prefect.context import refresh_global_settings_context

                refresh_global_settings_context()  # settings read at import see it too
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop()
    raise RuntimeError(f"the temporary Prefect server did not start on 127.0.0.1:{port}")


def pid() -> int | None:
    return _process.pid if _process is not None else None


def stop() -> None:
    """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
    global _process
    proc, _process = _process, None
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
