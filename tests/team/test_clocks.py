"""Heartbeat staleness does not depend on the workers' clocks: a worker whose clock is an hour
behind keeps its trial alive, and a reaper whose clock is an hour ahead fails only the trial
that really stopped beating. Both run under libfaketime (Debian `faketime`); the heartbeats
and the staleness check use the database's clock (Optuna's RDBStorage: `now()` on the
server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from sweepflow.stack import database_url, drop_databases, ensure_databases, pg_server_url
from tests.team.conftest import postgres_problem

pytestmark = pytest.mark.postgres

SCRIPT = textwrap.dedent("""
    import sys, threading, time, optuna
    from sweepflow import storage
    from sweepflow.config import load_config
    url, name, role, number, seconds = sys.argv[1:6]
    cfg = load_config(overrides=[f"sweep.storage={url}", "sweep.heartbeat_interval=1",
                                 "sweep.grace_period=3"]).sweep
    shared = storage.open_storage(url, cfg)
    end = time.monotonic() + float(seconds)
    if role == "beat":
        with storage.heartbeat(shared, name, int(number)):
            print(time.time(), flush=True)  # the first beat is recorded
            threading.Event().wait(float(seconds))  # libfaketime breaks time.sleep here
    else:
        print(time.time(), flush=True)
        study = optuna.load_study(study_name=name, storage=shared)
        while time.monotonic() < end:
            storage.fail_stale_trials(study)
            threading.Event().wait(0.5)
""")


def _skewed(offset: str, *args: str) -> subprocess.Popen:
    """A process whose wall clock is `offset` off (its monotonic clock, as on a real machine
    with a wrong clock, stays right)."""
    return subprocess.Popen(["faketime", "-f", offset, sys.executable, "-c", SCRIPT, *args],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"})


def test_staleness_uses_the_database_clock_not_the_workers():
    if shutil.which("faketime") is None:
        pytest.skip("needs faketime (apt-get install faketime)")
    problem = postgres_problem()
    if problem:
        pytest.skip(f"needs PostgreSQL: {problem}")
    db = f"sf_{uuid.uuid4().hex[:12]}"
    ensure_databases(pg_server_url(), [db])
    url = database_url(pg_server_url(), db)
    try:
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=3)
        study = optuna.create_study(study_name="clocks", storage=storage)
        alive, silent = study.ask(), study.ask()
        behind = _skewed("-1h", url, "clocks", "beat", str(alive.number), "15")
        clocks = [float(behind.stdout.readline())]
        storage.record_heartbeat(silent._trial_id)  # noqa: SLF001 - one beat, then silence
        ahead = _skewed("+1h", url, "clocks", "reap", "-1", "10")
        clocks.append(float(ahead.stdout.readline()))
        assert clocks[0] < time.time() - 3000 and clocks[1] > time.time() + 3000
        for proc in (behind, ahead):
            assert proc.wait(timeout=300) == 0
        states = {t.number: t.state for t in study.get_trials()}
        assert states[alive.number] == TrialState.RUNNING  # beating an hour "late": alive
        assert states[silent.number] == TrialState.FAIL  # silent past the grace period
    finally:
        drop_databases(pg_server_url(), [db])
