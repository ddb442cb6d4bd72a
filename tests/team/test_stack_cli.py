"""`sweepflow stack`: the databases, an MLflow server and a Prefect server on them, bound to
127.0.0.1, the exports printed; Ctrl-C stops both servers."""

from __future__ import annotations

import uuid

import pytest

from sweepflow.stack import drop_databases, pg_server_url
from tests.flows.servers import answers, clean_env, free_port, started, tail, wait_for
from tests.team.conftest import postgres_problem, sweepflow_cmd

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # starts and stops the team servers


def test_stack_command_starts_and_stops_the_servers(tmp_path):
    if postgres_problem():
        pytest.skip(postgres_problem())
    prefix, mport, pport = f"sf_{uuid.uuid4().hex[:10]}", free_port(), free_port()
    log = tmp_path / "stack.log"
    cmd = sweepflow_cmd("stack", "--home", str(tmp_path / "stack"), "--prefix", prefix,
                        "--mlflow-port", str(mport), "--prefect-port", str(pport))
    try:
        with started(cmd, log, clean_env()) as proc:
            wait_for(lambda: "Ctrl-C stops the stack" in log.read_text(), 300,
                     "the stack's exports", [log], [proc])
            assert answers(f"http://127.0.0.1:{mport}/health")
            assert answers(f"http://127.0.0.1:{pport}/api/health")
            text = log.read_text()
            assert f"export PREFECT_API_URL=http://127.0.0.1:{pport}/api" in text
            assert "sweep.storage=postgresql://" in text and f"{prefix}_optuna" in text
        assert proc.returncode is not None, tail(log)
        assert not answers(f"http://127.0.0.1:{mport}/health")
        assert not answers(f"http://127.0.0.1:{pport}/api/health")
    finally:
        drop_databases(pg_server_url(), [f"{prefix}_{k}" for k in ("optuna", "mlflow",
                                                                   "prefect")])
