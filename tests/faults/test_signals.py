"""Kill it: SIGKILL, Ctrl-C on the process group, SIGTERM, on a real `sweepflow run` in the
middle of a trial. Nothing stays RUNNING and the temporary Prefect server goes too."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from prefect.settings import PREFECT_API_URL

from tests.faults.conftest import (
    LONG_TRIAL,
    children_with,
    cli_env,
    output_within,
    reap,
    run_cli,
    start_cli,
    statuses,
    trial_states,
    wait_for_trial,
)

pytestmark = pytest.mark.slow  # real signals on real `sweepflow run` processes


def _server_of(pid: int) -> psutil.Process:
    deadline = time.time() + 120
    while time.time() < deadline:
        servers = children_with("uvicorn", pid)
        if servers:
            return servers[0]
        time.sleep(0.2)
    raise AssertionError("no temporary server")


def test_sigkill_mid_trial_is_reaped_by_the_next_command(tiny_overrides, store):
    env = cli_env(store)  # no PREFECT_API_URL: the CLI starts its own temporary server
    proc = start_cli(["run", *tiny_overrides, *LONG_TRIAL], env)
    try:
        server = _server_of(proc.pid)
        wait_for_trial(proc, store)
        proc.kill()
        proc.wait(timeout=30)
        server.wait(timeout=15)  # PR_SET_PDEATHSIG: the kernel killed it with its parent
    finally:
        reap(proc)
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert statuses(store) == {"sweep-tiny": "RUNNING", "trial-0": "RUNNING"}
    assert trial_states(store) == ["RUNNING"]

    result = run_cli(["compare", *tiny_overrides], env)
    assert result.returncode == 0, result.stdout + result.stderr
    line = (f"closed 2 run(s) as KILLED and 1 trial(s) as FAIL left RUNNING by a dead "
            f"process (pid {proc.pid})")
    assert line in result.stdout
    assert statuses(store) == {"sweep-tiny": "KILLED", "trial-0": "KILLED"}
    assert trial_states(store) == ["FAIL"]
    again = run_cli(["compare", *tiny_overrides], env)
    assert "closed" not in again.stdout  # said once


def test_ctrl_c_on_the_process_group(tiny_overrides, store):
    """A terminal's Ctrl-C reaches every process of the foreground group: the client stops
    within seconds (exit 130, one line, no traceback) and its server outlives its last call."""
    env = cli_env(store)
    proc = start_cli(["run", *tiny_overrides, *LONG_TRIAL], env, start_new_session=True)
    try:
        server = _server_of(proc.pid)
        wait_for_trial(proc, store)
        os.killpg(proc.pid, signal.SIGINT)
        start = time.time()
        out = output_within(proc, 60)
        took = time.time() - start
    finally:
        reap(proc)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted (SIGINT): trial 0 of study tiny stopped; its runs are marked " \
           "KILLED" in out
    assert "Traceback" not in out and "ConnectError" not in out
    assert took < 30
    assert statuses(store) == {"sweep-tiny": "KILLED", "trial-0": "KILLED"}
    assert trial_states(store) == ["FAIL"]
    server.wait(timeout=15)  # stopped by the client after its last call


def test_sigterm_ends_runs_killed_with_143(tiny_overrides, store):
    env = cli_env(store, PREFECT_API_URL.value())
    proc = start_cli(["run", *tiny_overrides, *LONG_TRIAL], env)
    try:
        wait_for_trial(proc, store)
        proc.terminate()
        out = output_within(proc, 60)
    finally:
        reap(proc)
    assert proc.returncode == 143, out[-3000:]
    assert "interrupted (SIGTERM): trial 0 of study tiny stopped" in out
    assert "Traceback" not in out
    assert statuses(store) == {"sweep-tiny": "KILLED", "trial-0": "KILLED"}
    assert trial_states(store) == ["FAIL"]
