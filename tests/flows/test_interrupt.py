"""Ctrl-C in the middle of a trial: the process ends, and nothing stays RUNNING anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL
from sweepflow.tasks.sweep import study_storage

from sweepflow import tracking
from sweepflow.config import load_config

pytestmark = pytest.mark.slow  # a real Ctrl-C mid-trial


def _running_trial_runs(uri: str, experiment: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return [r.info.run_name for r in runs if r.info.run_name.startswith("trial-")]


def test_ctrl_c_closes_runs_and_trials(tiny_overrides, store):
    # A trial far longer than the test waits (50 epochs finished inside the 2 s on a fast CI
    # machine, and the run was FINISHED rather than KILLED).
    overrides = [*tiny_overrides, "train.max_epochs=2000", "sweep.n_trials=1",
                 "train.early_stopping_patience=5000", "sweep.pruner=none"]
    config = load_config(overrides=overrides)
    uri = tracking.tracking_uri(config)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SWEEPFLOW_HOME": str(store)}
    proc = subprocess.Popen([sys.executable, "-m", "sweepflow.flows.cli", "run", *overrides],
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not _running_trial_runs(uri, config.tracking.experiment):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no trial started"
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert "RUNNING" not in statuses.values(), statuses
    assert statuses["trial-0"] == "KILLED"
    study = optuna.load_study(study_name=config.study_name, storage=study_storage())
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
