"""What a user reads: `sweepflow run` as a subprocess against the session's Prefect server.
The default console holds the data and cleaning summary, one line per trial and the summary;
no library banner, tip or repeated line. `-v` brings the libraries' logs back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL

from sweepflow import stack
from tests.conftest import make_frame
from tests.flows.servers import answers, clean_env, free_port, started, wait_for

NOISE = ("GPU available", "litlogger", "LOAD REPORT", "A new study created",
         "interpreted in multiple ways", "Finished in state", "Beginning flow run",
         "Loading weights", "Saving the dataset", "Creating initial MLflow database",
         "Successfully registered model", "Starting temporary server")


def _run(args: list[str], store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "SWEEPFLOW_HOME": str(store), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sweepflow.flows.cli", *args], env=env, text=True,
                          capture_output=True, timeout=600)


def test_default_console_is_quiet_and_says_what_happened(tiny_overrides, store, tmp_path):
    # Split files where 25 dev texts were copied into train: the run must say so.
    df = make_frame(200)
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    df.iloc[150:].to_csv(dev, index=False)
    pd.concat([df.iloc[:150], df.iloc[150:175]]).to_csv(train, index=False)
    overrides = [o for o in tiny_overrides if not o.startswith("data.path")]
    overrides.append(f"data.path={{train: '{train}', validation: '{dev}'}}")
    # Ingest and tokenize once here, in the same store: the run reuses both and says so (a
    # miss says nothing: tests/tasks/test_tokenize.py).
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize

    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    tokenize(config, ingest(config))
    result = _run(["run", *overrides], store)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "dropped 25 texts that are also in validation (no leakage): train 25" in out
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("data:")).endswith(
        "; labels negative, neutral, positive (reused from cache)")
    assert next(line for line in lines if line.startswith("tokens: p50")).endswith(
        " (reused from cache)")
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all("val/f1_macro" in line for line in trial_lines)
    assert "test split" in out and "registry:" in out  # the final summary
    for noise in NOISE:
        assert noise not in out, noise
    lines = [line for line in lines if line.strip() and "━" not in line]
    repeated = [line for line, n in Counter(lines).items() if n > 1 and len(line) > 30]
    assert not repeated, repeated


@pytest.mark.slow
def test_no_view_run_lines_with_a_tracking_server(tiny_overrides, store, tmp_path):
    """With an MLflow server as tracking URI, MLflow prints "View run … / View experiment …"
    when each run ends: the quiet console keeps them off."""
    port = free_port()
    cmd = stack.mlflow_command(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts",
                               "127.0.0.1", port)
    log = tmp_path / "mlflow-server.log"
    with started(cmd, log, stack.mlflow_env(clean_env())) as server:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), 120, "mlflow server",
                 [log], [server])
        result = _run(["run", *tiny_overrides, f"tracking.uri=http://127.0.0.1:{port}"], store)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "registry:" in out  # the run went through the server to the end
    assert "View run" not in out and "View experiment" not in out, out[-3000:]


def test_verbose_brings_the_libraries_logs_back(tiny_overrides, store, tmp_path):
    result = _run(["-v", "run", *tiny_overrides, f"data.path={tmp_path / 'missing.csv'}"],
                  store)
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Beginning flow run" in out  # Prefect's own log lines
    assert "data file not found" in out


def test_openmp_waits_passively_only_on_a_full_machine():
    """Idle or beside a niced process OpenMP keeps its own (faster) policy; on a machine whose
    load average has reached its cores it sleeps at barriers; a user's setting always wins."""
    from sweepflow import console

    assert console.openmp_wait_policy(0.3, 2) is None
    assert console.openmp_wait_policy(1.0, 2) is None  # one busy process on 2 cores
    assert console.openmp_wait_policy(2.0, 2) == "PASSIVE"
    code = ("import os; from sweepflow import console; console.configure(); "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True,
                         env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}, check=True).stdout
    assert out.strip() == "ACTIVE"
