"""The sweep subflow run alone (no pipeline, no parent run): trials, study and best model."""

from __future__ import annotations

from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from sweepflow.flows.sweep import sweep_flow
from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.sweep import study_storage
from sweepflow.tasks.tokenize import tokenize

from sweepflow import tracking


def test_sweep_subflow_runs_alone(tiny_config):
    tokens = tokenize(tiny_config, ingest(tiny_config))
    result = sweep_flow(tiny_config, tokens)
    study = optuna.load_study(study_name=result.study, storage=study_storage())
    assert len(study.trials) == 2 and sum(result.counts.values()) == 2
    assert (Path(result.model_dir) / "model.safetensors").is_file()
    client = MlflowClient(tracking.tracking_uri(tiny_config))
    exp = client.get_experiment_by_name(tiny_config.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1"]
    assert all(tracking.PARENT_TAG not in r.data.tags for r in runs)  # no parent: top level
    assert {r.info.status for r in runs} == {"FINISHED"}
