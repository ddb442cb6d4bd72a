"""Team mode against the real stack: two trial workers on a Prefect process work pool, one
SIGKILLed in the middle of a trial; the MLflow server stopped and started again during a
sweep; two sweeps started at once on one study. Real subprocesses, real servers."""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import AbstractContextManager
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool
from sweepflow.tasks.team import WORKER_TAG, finished_count

from sweepflow.stack import (
    database_url,
    ensure_databases,
    mlflow_command,
    mlflow_env,
    pg_server_url,
    service,
)
from sweepflow.storage import CONNECTIONS_PER_PROCESS
from tests.flows.servers import free_port, started, tail, wait_for
from tests.team.conftest import ConnectionWatch, drop_databases, sweepflow_cmd

# slow: team servers, killed workers, restarted servers
pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _opt(overrides: list[str], key: str) -> str:
    """The value of `key` as the CLI sees it: the last override wins."""
    return [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")][-1]


def _study(overrides: list[str]) -> optuna.Study | None:
    """The sweep's study, read without a connection pool (the test's reads are not counted
    as the product's connections once they are done)."""
    storage = optuna.storages.RDBStorage(_opt(overrides, "sweep.storage"),
                                         engine_kwargs={"poolclass": NullPool})
    try:
        return optuna.load_study(study_name=_opt(overrides, "tracking.experiment"),
                                 storage=storage)
    except KeyError:
        return None


def _running_with_metrics(overrides: list[str]) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial of a worker on this host that has reported at least one validation
    to Optuna, and whose MLflow run has received metrics (the logger sends them in the
    background)."""
    study = _study(overrides)
    for t in study.get_trials(states=(TrialState.RUNNING,)) if study else []:
        where = t.user_attrs.get(WORKER_TAG, "")
        if where.startswith(f"{socket.gethostname()}:") and t.intermediate_values:
            client = MlflowClient(_opt(overrides, "tracking.uri"))
            exp = client.get_experiment_by_name(_opt(overrides, "tracking.experiment"))
            runs = client.search_runs([exp.experiment_id], f"tags.`optuna.trial_number` = "
                                      f"'{t.number}'") if exp else []
            if runs and any(k.startswith("val/") for k in runs[0].data.metrics):
                return t
    return None


def _frozen_running_trial(overrides: list[str]) -> tuple[optuna.trial.FrozenTrial, int] | None:
    """A trial as `_running_with_metrics` finds it, with its worker stopped (SIGSTOP) and the
    trial read again: still RUNNING, so the worker cannot finish it before it is killed. A
    trial that completed between the two reads lets its worker go on (None)."""
    trial = _running_with_metrics(overrides)
    if trial is None:
        return None
    pid = int(trial.user_attrs[WORKER_TAG].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGSTOP)
    now = [t for t in _study(overrides).get_trials() if t.number == trial.number][0]
    if now.state == TrialState.RUNNING:
        return trial, pid
    os.kill(pid, signal.SIGCONT)
    return None


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _check_one_sweep(overrides: list[str], uri: str) -> tuple[optuna.Study, list]:
    """The study and the MLflow runs after a finished sweep: the asked number of finished
    trials, nothing RUNNING anywhere, every trial run a child of the one sweep run."""
    study = _study(overrides)
    trials = study.get_trials()
    assert finished_count(trials) == int(_opt(overrides, "sweep.n_trials"))
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = _runs(uri, _opt(overrides, "tracking.experiment"))
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [t.number for t in trials]  # one run per trial: no duplicate run
    return study, children


def test_sigkill_one_worker_the_other_finishes(team_overrides, team_env, team_stack,
                                               optuna_db, tmp_path):
    log = tmp_path / "run.log"
    team_overrides = [*team_overrides, "sweep.n_trials=3"]
    with ConnectionWatch([optuna_db, team_stack.mlflow_db, team_stack.prefect_db]) as watch, \
            started(sweepflow_cmd("run", *team_overrides), log, team_env) as proc:
        victim, pid = wait_for(lambda: _frozen_running_trial(team_overrides), 600,
                               "a trial that has reported a validation", [log], [proc])
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(900) == 0, tail(log, 80)
    study, children = _check_one_sweep(team_overrides, team_stack.mlflow_url)
    trials = study.get_trials()
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if victim.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params  # the dead worker's params, tried again
    workers = {t.user_attrs[WORKER_TAG] for t in trials}
    assert len(workers) == 2  # both workers ran trials
    run_of = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert run_of[victim.number].info.status == "KILLED"
    assert run_of[victim.number].data.metrics  # what it logged before dying is kept
    assert {run_of[t.number].info.status for t in trials if t.number != victim.number} == {
        "FINISHED"}
    print(f"PostgreSQL connection peaks: {watch.peak}")  # shown with -rP
    # Connections: per process at most pool_size + max_overflow on the study's database
    # (parent + 2 workers), and the servers' own pools.
    assert 0 < watch.peak[optuna_db] <= 3 * CONNECTIONS_PER_PROCESS, watch.peak
    # MLflow server: 2 server workers x 2 stores (tracking, registry) x (pool 2 + overflow 2)
    assert watch.peak[team_stack.mlflow_db] <= 2 * 2 * 4, watch.peak
    # Prefect server: pool 5 + overflow 5 per engine; its API and its services hold one each
    assert watch.peak[team_stack.prefect_db] <= 2 * 10, watch.peak
    # Closed by the reaper: the sweep's parent or the surviving worker, whichever looks first
    # (each says so in its own log), with the reason on the run
    assert "stopped sending heartbeats" in run_of[victim.number].data.tags["error"]


def test_mlflow_server_restarted_during_sweep(team_overrides, team_env, optuna_db,
                                              tmp_path):
    """A sweep whose MLflow server goes away for a few seconds and comes back on the same
    database: trainings go on, metrics from before and after are there, no duplicate run."""
    db = f"{optuna_db}_mlflow"
    ensure_databases(pg_server_url(), [db])
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    overrides = [o for o in team_overrides if not o.startswith("tracking.uri=")]
    overrides += [f"tracking.uri={uri}", "sweep.n_trials=3"]
    cmd = mlflow_command(database_url(pg_server_url(), db), tmp_path / "artifacts",
                         "127.0.0.1", port)
    log = tmp_path / "run.log"
    def up() -> AbstractContextManager:
        server = service(cmd, mlflow_env(dict(team_env)), tmp_path / "mlflow.log",
                         f"{uri}/health")
        server.__enter__()
        return server

    server = None
    try:
        server = up()
        with started(sweepflow_cmd("run", *overrides), log, team_env) as proc:
            wait_for(lambda: _running_with_metrics(overrides), 600,
                     "a trial that has reported a validation", [log], [proc])
            server, stopping = None, server
            stopping.__exit__(None, None, None)  # the server stops...
            time.sleep(5)
            server = up()  # ...and comes back on the same database
            assert proc.wait(900) == 0, tail(log, 80)
        study, children = _check_one_sweep(overrides, uri)
        assert {r.info.status for r in children} == {"FINISHED"}
        client = MlflowClient(uri)
        for run in children:  # every validation of every trial reached the server
            history = client.get_metric_history(run.info.run_id, "val/f1_macro")
            assert len(history) == len(study.trials[int(
                run.data.tags["optuna.trial_number"])].intermediate_values), run.info.run_name
    finally:
        if server is not None:
            server.__exit__(None, None, None)
        drop_databases([db])


def test_two_sweeps_at_once_share_one_study(team_overrides, team_env, team_stack, tmp_path):
    """Two `sweepflow run` on the same study at the same moment: one study, no trial run
    twice, no params asked twice."""
    pool = _opt(team_overrides, "sweep.work_pool")
    overrides = [o for o in team_overrides if not o.startswith(("sweep.n_trials=",
                                                                 "train.max_epochs="))]
    overrides += ["sweep.n_trials=2", "sweep.start_worker=false", "train.max_epochs=1"]
    logs = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "worker.log"]
    worker = [str(Path(sweepflow_cmd()[0]).parent / "prefect"), "worker", "start", "--pool",
              pool, "--type", "process", "--limit", "2"]
    with started(sweepflow_cmd("run", *overrides), logs[0], team_env) as a, \
            started(sweepflow_cmd("run", *overrides), logs[1], team_env) as b, \
            started(worker, logs[2], team_env):
        assert a.wait(400) == 0, tail(logs[0], 80)
        assert b.wait(400) == 0, tail(logs[1], 80)
    storage = optuna.storages.RDBStorage(_opt(overrides, "sweep.storage"),
                                         engine_kwargs={"poolclass": NullPool})
    assert optuna.get_all_study_names(storage) == [_opt(overrides, "tracking.experiment")]
    trials = _study(overrides).get_trials()
    assert len(trials) == finished_count(trials) == 2  # both sweeps agreed on one target
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    runs = _runs(team_stack.mlflow_url, _opt(overrides, "tracking.experiment"))
    numbers = [r.data.tags["optuna.trial_number"] for r in runs
               if "optuna.trial_number" in r.data.tags]
    assert sorted(numbers) == sorted(str(t.number) for t in trials)
    assert not [r for r in runs if r.info.status == "RUNNING"]
