"""Team-mode settings that cannot work stop with one line naming the key, before anything is
written; the study-as-a-queue rules on real Optuna trials. No PostgreSQL needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweepflow.config import ConfigError, load_config
from tasks.team import finished_count, next_step
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


def test_storage_must_be_a_database_url():
    with pytest.raises(ConfigError, match="sweep.storage='redis://x' is not an Optuna RDB URL"):
        load_config(overrides=["sweep.storage=redis://x"])


def test_workers_need_a_prefect_server(tiny_overrides, store: Path, tmp_path):
    overrides = [*tiny_overrides, "sweep.workers=2",
                 "sweep.storage=postgresql://postgres@127.0.0.1:5432/never_opened"]
    out = subprocess.run(sweepflow_cmd("run", *overrides), capture_output=True, text=True,
                         env=clean_env(SWEEPFLOW_HOME=str(store)), cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "team error: sweep.workers > 1 needs a Prefect server" in out.stdout
    assert "PREFECT_API_URL" in out.stdout
    assert not (store / "mlflow.db").exists() and not (store / "cache").exists()


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
