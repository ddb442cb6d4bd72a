"""`sweepflow stack`: the databases, an MLflow server and a Prefect server on them, bound to
127.0.0.1, with the credentials of a new secrets file; the exports printed (the secrets by
their file, never by value); Ctrl-C stops both servers."""

from __future__ import annotations

import subprocess
import uuid

import httpx
import pytest

from sweepflow.credentials import read_secrets
from sweepflow.stack import drop_databases, pg_server_url, stack_databases
from tests.flows.servers import answers, clean_env, free_port, started, tail, wait_for
from tests.team.conftest import postgres_problem, sweepflow_cmd

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # starts and stops the team servers


def test_stack_command_starts_and_stops_the_servers(tmp_path, tiny_overrides):
    if postgres_problem():
        pytest.skip(postgres_problem())
    prefix, mport, pport = f"sf_{uuid.uuid4().hex[:10]}", free_port(), free_port()
    log, secrets = tmp_path / "stack.log", tmp_path / "private" / "secrets.env"
    cmd = sweepflow_cmd("stack", "--home", str(tmp_path / "stack"), "--prefix", prefix,
                        "--mlflow-port", str(mport), "--prefect-port", str(pport))
    try:
        with started(cmd, log, clean_env(SWEEPFLOW_SECRETS=str(secrets))) as proc:
            wait_for(lambda: "Ctrl-C stops the stack" in log.read_text(), 300,
                     "the stack's exports", [log], [proc])
            assert answers(f"http://127.0.0.1:{mport}/health")
            assert answers(f"http://127.0.0.1:{pport}/api/health")
            text = log.read_text()
            assert f"wrote new credentials to {secrets} (mode 600)" in text
            assert f"export PREFECT_API_URL=http://127.0.0.1:{pport}/api" in text
            assert f"set -a; . {secrets}; set +a" in text
            assert "sweep.storage=postgresql://" in text and f"{prefix}_optuna" in text
            creds = read_secrets(secrets)
            for value in creds.secret_values():
                assert value not in text and value not in _logs(tmp_path / "stack" / "logs")
            search = f"http://127.0.0.1:{mport}/api/2.0/mlflow/experiments/search?max_results=1"
            user, password = (creds.values[k] for k in ("MLFLOW_TRACKING_USERNAME",
                                                        "MLFLOW_TRACKING_PASSWORD"))
            assert httpx.get(search, timeout=30).status_code == 401
            assert httpx.get(search, auth=(user, password), timeout=30).status_code == 200
            flows = f"http://127.0.0.1:{pport}/api/flows/filter"
            assert httpx.post(flows, json={}, timeout=30).status_code == 401
            auth = tuple(creds.values["PREFECT_API_AUTH_STRING"].split(":", 1))
            assert httpx.post(flows, json={}, auth=auth, timeout=30).status_code == 200
            # a client without them: one line naming the variables, before anything runs
            run = sweepflow_cmd("run", *tiny_overrides, f"tracking.uri=http://127.0.0.1:{mport}")
            home = str(tmp_path / "client")
            for env, said in (({}, "store error: tracking.uri=http://127.0.0.1:"
                                   f"{mport}: the MLflow server asks for the credentials (401)"),
                              ({"MLFLOW_TRACKING_USERNAME": user,
                                "MLFLOW_TRACKING_PASSWORD": password,
                                "PREFECT_API_URL": f"http://127.0.0.1:{pport}/api"},
                               f"team error: PREFECT_API_URL=http://127.0.0.1:{pport}/api: the "
                               "Prefect server refused the request (401): export "
                               "PREFECT_API_AUTH_STRING")):
                done = subprocess.run(run, capture_output=True, text=True, timeout=300,
                                      env=clean_env(SWEEPFLOW_HOME=home, **env), cwd=tmp_path)
                assert done.returncode == 2 and said in done.stdout, done.stdout + done.stderr
        assert proc.returncode is not None, tail(log)
        assert not answers(f"http://127.0.0.1:{mport}/health")
        assert not answers(f"http://127.0.0.1:{pport}/api/health")
        # MLflow keeps the admin password of its first start: another one stops the stack
        changed = {**creds.values, "MLFLOW_TRACKING_PASSWORD": "another-password-1"}
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                               env=clean_env(**changed))
        assert again.returncode == 1, again.stdout + again.stderr
        assert ("stack error: MLflow refused the credentials of the environment: "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD") in again.stdout
        assert "another-password-1" not in again.stdout + again.stderr
        assert not answers(f"http://127.0.0.1:{mport}/health")
    finally:
        drop_databases(pg_server_url(), list(stack_databases(prefix, auth=True).values()))


def _logs(folder) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("*.log"))
