"""Fault tests: real subprocesses, real signals, real corrupted files. Helpers to run the
CLI as a child process and to read what the store holds afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from tests import ROOT

LONG_TRIAL = ["train.max_epochs=200", "train.early_stopping_patience=1000", "sweep.pruner=none",
              "sweep.n_trials=1"]


@pytest.fixture(autouse=True, scope="session")
def prefect_server():
    """One temporary Prefect server for the in-process tests of this folder (subprocesses
    that test the CLI's own temporary server do not get its URL)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def cli_env(store: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"SWEEPFLOW_HOME": str(store), "COLUMNS": "200", "PYTHONFAULTHANDLER": "1",
            "PREFECT_HOME": str(store.parent / "prefect-home"), **extra}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_cli(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweepflow.flows.cli", *args], cwd=ROOT,
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def output_within(proc: subprocess.Popen, seconds: float) -> str:
    """The process's output once it exits; past `seconds` it is aborted and reaped (no zombie
    left for later tests) and the test fails with what it had printed: its first lines, and
    the stacks of all its threads (SIGABRT with cli_env's PYTHONFAULTHANDLER)."""
    try:
        return proc.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
        pytest.fail(f"still running {seconds:.0f} s after the signal; its output:\n"
                    f"{out[:3000]}\n[...]\n{out[-12000:]}")


def children_with(needle: str, pid: int | None = None) -> list[psutil.Process]:
    """The children of `pid` (this process) whose command line holds `needle`; a zombie or a
    child gone meanwhile is left out."""
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
            if needle in " ".join(child.cmdline()):
                found.append(child)
    return found


def reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_cli(args: list[str], env: dict[str, str], stdin: str | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweepflow.flows.cli", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=600)


def statuses(store: Path, experiment: str = "tiny") -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


def trial_states(store: Path, study: str = "tiny") -> list[str]:
    storage = f"sqlite:///{store / 'optuna.db'}"
    return [t.state.name for t in optuna.load_study(study_name=study, storage=storage).trials]


def wait_for_trial(proc: subprocess.Popen, store: Path, timeout: float = 300) -> None:
    """Until the trial's MLflow run is RUNNING (the child is training)."""
    deadline = time.time() + timeout
    while statuses(store).get("trial-0") != "RUNNING":
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, "no trial started"
        time.sleep(0.5)
    time.sleep(2)
