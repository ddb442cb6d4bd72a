"""Team-mode settings that cannot work stop with one line naming the key, before anything is
written; the study-as-a-queue rules on real Optuna trials. No PostgreSQL needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sweepflow.tasks.team import (
    SWEEP_TAG,
    TeamPlan,
    WatchClock,
    finished_count,
    next_step,
    shortfall,
    watch_step,
)

from sweepflow.config import ConfigError, load_config
from tests.flows.servers import clean_env
from tests.team.conftest import sweepflow_cmd


def test_workers_need_a_shared_storage():
    with pytest.raises(ConfigError, match=r"sweep.workers=2 needs a shared study: set "
                                          r"sweep.storage=postgresql://"):
        load_config(overrides=["sweep.workers=2"])


def test_grace_period_longer_than_heartbeat():
    with pytest.raises(ConfigError, match="sweep.grace_period=30 must be longer than "
                                          "sweep.heartbeat_interval=30"):
        load_config(overrides=["sweep.grace_period=30"])


def test_workers_need_a_shared_storage_and_the_section_is_not_dumped():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["sweep.workers=2", "sweep.storage=sqlite:///x.db"])
    assert "'space'" not in str(err.value)  # the message, not the whole sweep section


@pytest.mark.parametrize(("override", "shown", "where"), [
    ("sweep.storage=postgresql://sf:hunter2hunter2@db:5432/s", "postgresql://sf:***@db:5432/s",
     "PGPASSWORD or a PGPASSFILE"),
    ("tracking.uri=http://sf:hunter2hunter2@mlflow:5000", "http://sf:***@mlflow:5000",
     "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")])
def test_no_password_in_the_config(override, shown, where):
    """The config goes to MLflow params and Prefect flow-run parameters: a password in a URL
    is refused, and the message hides it."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert f"{override.split('=')[0]}={shown}: a password in the config" in str(err.value)
    assert where in str(err.value) and "hunter2" not in str(err.value)


def test_storage_must_be_a_database_url():
    with pytest.raises(ConfigError, match="sweep.storage='redis://x' is not an Optuna RDB URL"):
        load_config(overrides=["sweep.storage=redis://x"])


@pytest.mark.postgres
def test_a_study_database_that_does_not_exist(tiny_overrides, store: Path, tmp_path):
    """One line naming sweep.storage; no MLflow run left RUNNING."""
    from tests.team.conftest import postgres_problem

    if postgres_problem():
        pytest.skip(postgres_problem())
    url = "postgresql://postgres@127.0.0.1:5432/sf_never_created"
    out = subprocess.run(sweepflow_cmd("run", *tiny_overrides, "sweep.workers=2",
                                       f"sweep.storage={url}"),
                         capture_output=True, text=True, env=clean_env(SWEEPFLOW_HOME=str(store)),
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stdout.replace("\n", " ")
    assert "store error: sweep.storage=postgresql://postgres@127.0.0.1:5432/" in line
    assert "cannot open the study database" in line
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    assert not exps or not client.search_runs(exps, "attributes.status = 'RUNNING'")


def _trial(number: int, state: TrialState, retry_of: list[int] | None = None):
    trial = optuna.trial.create_trial(
        state=state, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
        value=1.0 if state == TrialState.COMPLETE else None,
        system_attrs={"retry_history": retry_of} if retry_of else None)
    trial.number = number
    return trial


def test_a_retried_trial_counts_once():
    trials = [_trial(0, TrialState.COMPLETE), _trial(1, TrialState.FAIL),
              _trial(2, TrialState.COMPLETE, retry_of=[1]), _trial(3, TrialState.PRUNED)]
    assert finished_count(trials) == 3
    assert next_step(trials, 3) == "done"
    assert next_step(trials, 4) == "ask"


def test_wait_while_others_run_and_take_queued_retries():
    running = [_trial(0, TrialState.COMPLETE), _trial(1, TrialState.RUNNING)]
    assert next_step(running, 2) == "wait"  # the running one may die and come back
    queued = [*running, _trial(2, TrialState.WAITING, retry_of=[1])]
    assert next_step(queued, 2) == "ask"


def test_crashed_worker_runs_neither_hang_nor_miscount_the_sweep(tiny_overrides):
    """The parent's watch ends once every worker run has ended and no trial of the sweep is
    RUNNING; a trial left RUNNING by a crashed worker is waited for until the reapers fail
    it (grace period), not forever; runs that never end while the study holds its trials are
    cancelled; a sweep that fell short says so with the runs' end states."""
    import time

    from prefect.states import Completed, Crashed, Running, Scheduled

    config = load_config(overrides=tiny_overrides)
    plan = TeamPlan(sweep_id="s1", target=3, parent_run_id=None)

    def mine(trial):
        trial.user_attrs[SWEEP_TAG] = "s1"
        return trial

    two_done = [mine(_trial(0, TrialState.COMPLETE)), mine(_trial(1, TrialState.COMPLETE))]
    left_running = [*two_done, mine(_trial(2, TrialState.RUNNING))]
    others = [*two_done, _trial(2, TrialState.RUNNING)]
    others[2].user_attrs[SWEEP_TAG] = "another sweep"
    crashed = [Crashed(), Completed()]
    clock = WatchClock()
    assert watch_step(config, [Running(), Completed()], left_running, plan, clock) == "watch"
    assert watch_step(config, crashed, left_running, plan, clock) == "watch"  # reaped soon
    clock.ended = time.monotonic() - config.sweep.grace_period \
        - 2 * config.sweep.heartbeat_interval - 1
    assert watch_step(config, crashed, left_running, plan, clock) == "end"  # never hangs
    assert watch_step(config, crashed, others, plan, WatchClock()) == "end"
    assert shortfall(crashed, two_done, plan.target) == (
        "the trial workers ended 1 trial(s) short of the sweep's target (2 of 3 finished in "
        "the study; worker runs: Completed, Crashed); their logs are on the worker runs in "
        "Prefect")
    done = [*two_done, mine(_trial(2, TrialState.COMPLETE))]
    assert shortfall([Completed(), Completed()], done, plan.target) is None
    clock = WatchClock()
    stuck = [Running(), Scheduled()]  # the study is done; these runs' end never comes
    assert watch_step(config, stuck, done, plan, clock) == "watch"
    clock.done = time.monotonic() - config.sweep.heartbeat_interval - 61
    assert watch_step(config, stuck, done, plan, clock) == "cancel"
