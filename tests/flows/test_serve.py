"""Scheduled runs: `sweepflow serve` against a real `prefect server start`, end to end, plus
the checks that fail before anything is served."""

from __future__ import annotations

import inspect

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings
from sweepflow.flows.cli import app
from sweepflow.flows.pipeline import pipeline_flow
from typer.testing import CliRunner

from sweepflow.config import load_config
from tests import ROOT
from tests.flows.servers import BIN, answers, clean_env, free_port, started, tail, wait_for

SERVER_TIMEOUT = 90  # seconds for `prefect server start` to answer /api/health
RUN_TIMEOUT = 240  # seconds for the first scheduled run to complete
runner = CliRunner()


def _output(result) -> str:
    return " ".join(result.output.split())


def test_serve_needs_a_schedule(tiny_overrides):
    result = runner.invoke(app, ["serve", *tiny_overrides])
    assert result.exit_code == 2
    assert "serving needs a schedule: set schedule.cron" in _output(result)
    result = runner.invoke(app, ["serve", *tiny_overrides, "schedule.cron=every day"])
    assert result.exit_code == 2
    assert "bad value for 'schedule.cron'" in _output(result)
    result = runner.invoke(app, ["serve", *tiny_overrides, "schedule.interval=60",
                                 "schedule.timezone=Mars/Olympus"])
    assert result.exit_code == 2
    assert "unknown time zone 'Mars/Olympus'" in _output(result)


def test_serve_needs_a_prefect_server(tiny_overrides):
    """Without PREFECT_API_URL Prefect would start a temporary server, which never
    schedules a run: serve says so and how to start a server, instead of waiting forever."""
    args = ["serve", *tiny_overrides, "schedule.interval=60"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "serving needs a Prefect server: start one with `make prefect-server`" in (
        _output(result))
    nobody = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: nobody}):
        result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert f"no Prefect server answers at PREFECT_API_URL={nobody}" in _output(result)


def test_prefect_yaml_is_generated_from_base_yaml(tmp_path):
    """The committed prefect.yaml is what `sweepflow deploy-file` makes of conf/base.yaml: the
    deployment embeds no config (a run without parameters loads conf/base.yaml), and its
    schedule and pool come from the config."""
    committed = (ROOT / "prefect.yaml").read_text()
    result = runner.invoke(app, ["deploy-file", "--out", str(tmp_path / "prefect.yaml")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "prefect.yaml").read_text() == committed
    (deployment,) = yaml.safe_load(committed)["deployments"]
    assert deployment["entrypoint"] == "flows/pipeline.py:pipeline_flow"
    assert deployment["parameters"] == {}
    assert inspect.signature(pipeline_flow.fn).parameters["config"].default is None

    out = tmp_path / "nightly.yaml"
    result = runner.invoke(app, ["deploy-file", "--out", str(out), "schedule.cron=0 3 * * *",
                                 "schedule.work_pool=gpu"])
    assert result.exit_code == 0, result.output
    (deployment,) = yaml.safe_load(out.read_text())["deployments"]
    assert deployment["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC",
                                        "active": True}]
    assert deployment["work_pool"]["name"] == "gpu" and deployment["parameters"] == {}
    result = runner.invoke(app, ["deploy-file", "--out", str(out), "sweep.n_trials=7"])
    (deployment,) = yaml.safe_load(out.read_text())["deployments"]
    assert deployment["parameters"]["config"]["sweep"]["n_trials"] == 7
    result = runner.invoke(app, ["deploy-file", "--out", str(tmp_path / "bad.yaml"),
                                 "schedule.cron=every day"])
    assert result.exit_code == 2 and "bad value for 'schedule.cron'" in _output(result)
    assert not (tmp_path / "bad.yaml").exists()


def _deployment(api: str, name: str) -> dict | None:
    response = httpx.get(f"{api}/deployments/name/pipeline/{name}", timeout=10)
    return response.json() if response.status_code == 200 else None


def _finished_runs(api: str, deployment_id: str) -> list[dict]:
    """The deployment's flow runs that have finished (its future runs are many)."""
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]},
                          "state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()


@pytest.mark.slow  # a real `prefect server start` and a scheduled run
def test_serve_runs_the_pipeline_on_schedule(tiny_overrides, store, tmp_path):
    """A real server, `sweepflow serve` every 5 s, until one scheduled run has completed and
    left its MLflow parent run with trials in the store (about a minute on 2 cores)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_log, serve_log = tmp_path / "prefect-server.log", tmp_path / "serve.log"
    logs = [server_log, serve_log]
    # The server's database lives in its own PREFECT_HOME; it schedules often and only a few
    # runs ahead (every 5 s would otherwise queue 100 runs).
    server_env = clean_env(PREFECT_HOME=str(tmp_path / "prefect-server"),
                           PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                           PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
                           PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS="3")
    serve_env = clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-client"),
                          PREFECT_RUNNER_POLL_FREQUENCY="2", SWEEPFLOW_HOME=str(store))
    overrides = [*tiny_overrides, "sweep.n_trials=1", "train.max_epochs=1",
                 "schedule.interval=5"]
    config = load_config(overrides=overrides)

    server_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)]
    with started(server_cmd, server_log, server_env) as server:
        wait_for(lambda: answers(f"{api}/health"), SERVER_TIMEOUT, "the Prefect server", logs,
                 [server])
        serve_cmd = [str(BIN / "sweepflow"), "serve", *overrides]
        with started(serve_cmd, serve_log, serve_env) as serving:
            procs = [server, serving]
            deployment = wait_for(lambda: _deployment(api, "tiny"), 120, "the deployment",
                                  logs, procs)
            assert deployment["parameters"] == {"config": config.model_dump(mode="json")}
            assert deployment["schedules"][0]["schedule"]["interval"] == 5

            def completed() -> dict | None:
                runs = _finished_runs(api, deployment["id"])
                broken = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
                if broken:
                    pytest.fail(f"scheduled run {broken[0]['name']} is {broken[0]['state_type']}"
                                "\n" + "\n".join(tail(p, 80) for p in logs))
                return next((r for r in runs if r["state_type"] == "COMPLETED"), None)

            flow_run = wait_for(completed, RUN_TIMEOUT, "a COMPLETED scheduled run", logs,
                                procs)

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs(
        [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run['id']}'")
    assert parent.info.run_name.startswith("sweep-")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert children and all(c.info.run_name.startswith("trial-") for c in children)
