"""PostgreSQL goes away: a private cluster (initdb/pg_ctl from Debian's PostgreSQL, its own
port and folder) is stopped for 20 seconds while a worker holds a RUNNING trial with a
heartbeat, then started again. The worker's operations wait for it (backoff, within
sweep.grace_period) and go on: the trial is told, nothing is left RUNNING, and a second
worker's ask during the outage gets its trial once the database is back."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweepflow import storage
from sweepflow.config import load_config
from tests.flows.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess:
    """initdb and pg_ctl refuse root: run them as the `postgres` user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120,
                          check=True)


@pytest.fixture
def private_cluster():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root needs a `postgres` user for initdb")
    # Not under pytest's tmp_path: the postgres user cannot enter root's 0700 folders.
    home = Path(tempfile.mkdtemp(prefix="sweepflow-pg-"))
    data = home / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"])
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "pg.log"), "-w",
           "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1"]
    _as_postgres([*ctl, "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", ctl
    finally:
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                       + [*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def test_a_20_second_outage_is_waited_out(private_cluster, tiny_overrides):
    url, ctl = private_cluster
    sweep = load_config(overrides=[*tiny_overrides, f"sweep.storage={url}",
                                   "sweep.heartbeat_interval=1", "sweep.grace_period=60"]).sweep
    shared = storage.open_storage(url, sweep)
    study = optuna.create_study(study_name="outage", storage=shared, direction="maximize")
    first = study.ask()
    asked: list[int] = []
    with storage.heartbeat(shared, "outage", first.number):
        _as_postgres([*ctl, "-m", "fast", "stop"])
        late_ask = threading.Thread(target=lambda: asked.append(study.ask().number))
        late_ask.start()  # waits for the database
        time.sleep(20)
        assert late_ask.is_alive()
        _as_postgres([*ctl, "start"])
        late_ask.join(timeout=120)
        assert asked and not late_ask.is_alive()
        first.report(0.5, 1)
    study.tell(first, 0.5)
    study.tell(asked[0], 0.4)
    storage.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE]
