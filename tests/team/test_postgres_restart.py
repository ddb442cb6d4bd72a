"""PostgreSQL goes away: a private cluster (initdb/pg_ctl from Debian's PostgreSQL, its own
port and folder) is stopped for 20 seconds while a worker holds a RUNNING trial with a
heartbeat, then started again. The worker's operations wait for it (backoff, within
sweep.grace_period) and go on: the trial is told, nothing is left RUNNING, and a second
worker's ask during the outage gets its trial once the database is back."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from sweepflow import storage
from sweepflow.config import load_config
from tests.team.pgcluster import NoCluster, private_cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def cluster():
    try:
        with private_cluster() as running:
            yield running
    except NoCluster as err:
        pytest.skip(str(err))


def test_a_20_second_outage_is_waited_out(cluster, tiny_overrides):
    url = f"{cluster.url}/postgres"
    sweep = load_config(overrides=[*tiny_overrides, f"sweep.storage={url}",
                                   "sweep.heartbeat_interval=1", "sweep.grace_period=60"]).sweep
    shared = storage.open_storage(url, sweep)
    study = optuna.create_study(study_name="outage", storage=shared, direction="maximize")
    first = study.ask()
    asked: list[int] = []
    with storage.heartbeat(shared, "outage", first.number):
        cluster.run("-m", "fast", "stop")
        late_ask = threading.Thread(target=lambda: asked.append(study.ask().number))
        late_ask.start()  # waits for the database
        time.sleep(20)
        assert late_ask.is_alive()
        cluster.run("start")
        late_ask.join(timeout=120)
        assert asked and not late_ask.is_alive()
        first.report(0.5, 1)
    study.tell(first, 0.5)
    study.tell(asked[0], 0.4)
    storage.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE]
