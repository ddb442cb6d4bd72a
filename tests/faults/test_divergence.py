"""Divergence is not success: learning rates of 100-1000 explode the loss; the trials end
FAIL with the reason on their runs, nothing is kept or registered."""

from __future__ import annotations

import optuna
from mlflow.tracking import MlflowClient
from sweepflow.flows.cli import app
from typer.testing import CliRunner

from sweepflow import tracking
from sweepflow.config import load_config

runner = CliRunner()
HUGE_LR = "sweep.space={learning_rate: {type: float, low: 100, high: 1000, log: true}}"


def test_exploding_loss_fails_the_trials_and_registers_nothing(tiny_overrides, store):
    overrides = [*tiny_overrides, HUGE_LR, "sweep.fail_single_class=true"]
    result = runner.invoke(app, ["run", *overrides])
    assert result.exit_code == 1, result.output
    trial_lines = [line for line in result.output.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all("Diverged" in line for line in trial_lines)
    assert "sweep error: study 'tiny' has no complete trial" in result.output
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking.tracking_uri(config))
    exp = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    for name in ("trial-0", "trial-1"):
        assert runs[name].info.status == "FAILED"
        assert "diverged" in runs[name].data.tags["sweepflow.fail_reason"]
    assert runs["sweep-tiny"].info.status == "FAILED"
    assert client.search_registered_models() == []
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{store / 'optuna.db'}")
    assert {t.state.name for t in study.trials} == {"FAIL"}
    assert not (store / "models").exists() or not list((store / "models").rglob("trial-*"))


def test_single_class_best_weights_fail_the_trial(tiny_config):
    """The tiny model after 14 steps predicts one class: with the guard on, FAIL."""
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.sweep import create_study, run_trial
    from sweepflow.tasks.tokenize import tokenize

    config = tiny_config.model_copy(update={"sweep": tiny_config.sweep.model_copy(
        update={"fail_single_class": True, "n_trials": 1})})
    tokens = tokenize(config, ingest(config))
    result = run_trial(config, tokens, create_study(config), None)
    if result.state == "failed":
        assert "predict a single class" in result.error
    else:  # it learnt more than one class: then it must really predict several
        assert result.value is not None and result.value > 1 / 6
