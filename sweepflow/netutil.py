"""Loopback ports and server health checks, shared by the CLI, the team stack, bench/ and
tests/: a free port to start a server on, and a bounded wait until its health URL answers."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


class NotUp(RuntimeError):
    """A server did not answer in time, or its process exited first; the message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it; another process may take it later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 5) -> bool:
    """True when a GET of `url` answers 200."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_up(url: str, timeout: float, process: subprocess.Popen | None = None,
                  interval: float = 0.2) -> None:
    """Poll `url` until it answers 200; NotUp after `timeout` seconds or as soon as
    `process` (the server, when we started it) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise NotUp(f"the server exited ({process.returncode}) before {url} answered")
        if answers(url, timeout=min(5.0, max(0.5, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            raise NotUp(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(interval)
