"""End to end: the real flow, a real Prefect server, a real MLflow store and Optuna study."""

from __future__ import annotations

import asyncio

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from flows.pipeline import pipeline_flow
from sweepflow import tracking
from sweepflow.config import load_config
from tasks.ingest import DataError
from tasks.sweep import study_storage


def _runs(config) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking.tracking_uri(config))
    return mlflow.search_runs(experiment_names=[config.tracking.experiment])


async def _task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_pipeline_end_to_end(tiny_config):
    summary = pipeline_flow(tiny_config)
    client = MlflowClient(tracking.tracking_uri(tiny_config))
    runs = _runs(tiny_config)
    assert set(runs["status"]) == {"FINISHED"}
    parent = client.get_run(summary.run_id)
    assert parent.info.run_name == "sweep-tiny"
    for tag in ("prefect.flow_run_id", "git_sha", "optuna.study", "data.digest"):
        assert parent.data.tags[tag], tag
    assert parent.data.params["train.batch_size"] == "16"
    assert "test/f1_macro" in parent.data.metrics
    assert "test/baseline_f1_macro" in parent.data.metrics
    contexts = {i.tags[0].value for i in parent.inputs.dataset_inputs for _ in [0]}
    assert len(parent.inputs.dataset_inputs) == 3, contexts
    top = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"config.yaml", "data_profile.json", "evaluation", "sweep"} <= top
    evaluation = {a.path for a in client.list_artifacts(summary.run_id, "evaluation")}
    assert evaluation == {"evaluation/classification_report.json",
                          "evaluation/confusion_matrix.png"}
    assert {"negative", "neutral", "positive", "accuracy", "macro avg"} <= set(
        summary.evaluation.report)

    children = runs[runs["tags.mlflow.parentRunId"] == summary.run_id]
    assert len(children) == 2
    assert set(children["tags.optuna.state"]) <= {"complete", "pruned"}
    child = client.get_run(children.iloc[0]["run_id"])
    for key in ("train/loss", "val/loss", "val/accuracy", "val/f1_macro"):
        assert key in child.data.metrics, key
    assert set(child.data.params) == set(tiny_config.sweep.space)

    study = optuna.load_study(study_name="tiny", storage=study_storage())
    assert len(study.trials) == 2

    assert mlflow.models.get_model_info(summary.evaluation.model_uri).signature is not None
    model = mlflow.pyfunc.load_model(summary.evaluation.model_uri)
    pred = model.predict(["great love happy", "awful hate worst"])
    assert set(pred["label"]) <= {"negative", "neutral", "positive"}

    # Same experiment again: ingest and tokenize come from the cache, the study continues.
    state = pipeline_flow(tiny_config, return_state=True)
    states = asyncio.run(_task_states(str(state.state_details.flow_run_id)))
    assert states["ingest"] == "Cached" and states["tokenize"] == "Cached"
    assert len(optuna.load_study(study_name="tiny", storage=study_storage()).trials) == 4


def test_flow_runs_end_without_waiting_on_the_heartbeat_thread():
    """Installed wherever the flows are imported; heartbeats themselves stay on."""
    from prefect import flow_engine
    from prefect.settings import get_current_settings

    from sweepflow.prefect_engine import MARK

    assert getattr(flow_engine._send_heartbeats, MARK, False)
    assert get_current_settings().flows.heartbeat_frequency is not None


def test_run_refuses_a_second_pruning_signal_with_a_config_error(tiny_overrides):
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.sweep import create_study

    create_study(load_config(overrides=[*tiny_overrides, "sweep.pruner_signal=loss"]))
    result = CliRunner().invoke(app, ["run", *tiny_overrides])
    assert result.exit_code == 2, result.output
    assert "config error" in result.output and "sweep.pruner_signal" in result.output


def test_bad_input_fails_before_training_and_leaves_nothing_running(tiny_overrides, tmp_path):
    config = load_config(overrides=[*tiny_overrides, f"data.path={tmp_path / 'nope.csv'}"])
    with pytest.raises(DataError, match="nope.csv"):
        pipeline_flow(config)
    runs = _runs(config) if MlflowClient(tracking.tracking_uri(config)).get_experiment_by_name(
        config.tracking.experiment) else pd.DataFrame({"status": []})
    assert "RUNNING" not in set(runs["status"])
