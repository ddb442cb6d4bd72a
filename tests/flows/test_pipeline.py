"""End to end: the real flow, a real Prefect server, a real MLflow store and Optuna study."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.flows.pipeline import pipeline_flow
from sweepflow.tasks.ingest import DataError
from sweepflow.tasks.sweep import study_storage

from sweepflow import tracking
from sweepflow.config import load_config


def _runs(config) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking.tracking_uri(config))
    return mlflow.search_runs(experiment_names=[config.tracking.experiment])


def test_pipeline_end_to_end(tiny_config, store):
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
                          "evaluation/confusion_matrix.png", "evaluation/test_predictions.json"}
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

    # Same experiment again: ingest and tokenize reuse their folders, the study continues.
    cached = sorted((store / "cache").glob("*/*"))
    assert [p.parent.name for p in cached] == ["baseline", "ingest", "tokenized"]
    inodes = [p.stat().st_ino for p in cached]
    pipeline_flow(tiny_config.model_copy(update={"sweep": tiny_config.sweep.model_copy(
        update={"on_unchanged": "more_trials"})}))  # unchanged data: sweep anyway
    assert sorted((store / "cache").glob("*/*")) == cached
    assert [p.stat().st_ino for p in cached] == inodes  # read back, not written again
    assert len(optuna.load_study(study_name="tiny", storage=study_storage()).trials) == 4
    leftovers = [p for p in store.rglob("*") if p.name.endswith((".tmp", ".old", ".broken"))
                 or p.name == "tmp"]
    assert not leftovers  # no temporary folders after a run


@pytest.mark.slow  # a second full pipeline variant (make test-all)
def test_a_study_continued_on_other_data_picks_its_best_on_that_data(tiny_config,
                                                                     tiny_overrides):
    """The model evaluated and registered is the one of the trial Optuna calls best among
    the trials trained on this run's data, never the old data's winner."""
    first = pipeline_flow(tiny_config)
    fewer = load_config(overrides=[*tiny_overrides, "data.max_train_samples=60",
                                   "sweep.n_trials=1"])
    second = pipeline_flow(fewer)
    study = optuna.load_study(study_name="tiny", storage=study_storage())
    assert len(study.trials) == 3
    new = study.trials[2]
    assert new.user_attrs["data_digest"] != study.trials[0].user_attrs["data_digest"]
    assert second.sweep.best_number == 2 and second.sweep.other_data_trials == 2
    kept = json.loads((Path(second.sweep.model_dir) / "trial.json").read_text())
    assert kept["number"] == 2 and kept["data_digest"] == new.user_attrs["data_digest"]
    assert Path(first.sweep.model_dir).exists()  # the old data's best is kept for that data
    assert Path(first.sweep.model_dir).parent != Path(second.sweep.model_dir).parent
def test_run_refuses_a_second_pruning_signal_with_a_config_error(tiny_overrides):
    from sweepflow.flows.cli import app
    from sweepflow.tasks.sweep import create_study
    from typer.testing import CliRunner

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
