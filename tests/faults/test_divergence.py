"""Divergence is a failure, a poor model is not: a learning rate of 1e30 makes the training
loss non-finite within a few steps for sure (AdamW's first update and its decoupled weight
decay scale every weight to ~1e28-1e30; the next forward pass overflows float32), so both
trials end FAIL with the guard's message on their runs; a model that trained without
numerical failure but predicts a single class completes with its real score (Optuna learns
from it) and only the registry refuses it."""

from __future__ import annotations

import re

import optuna
from mlflow.tracking import MlflowClient
from sweepflow.flows.cli import app
from typer.testing import CliRunner

from sweepflow import tracking
from sweepflow.config import load_config

runner = CliRunner()
HUGE_LR = "sweep.space={learning_rate: {type: categorical, choices: [1.0e+30]}}"
NON_FINITE = re.compile(r"training loss is (nan|inf|-inf) at step \d+ \(diverged: try a lower "
                        r"learning rate\)")
# Weights that barely move from their random start: the tiny model labels every validation
# text with one class (the same class every time: seeded, CPU, fp32).
TINY_LR = "sweep.space={learning_rate: {type: categorical, choices: [1.0e-9]}}"


def _runs(overrides: list[str]) -> tuple[MlflowClient, dict]:
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking.tracking_uri(config))
    exp = client.get_experiment_by_name("tiny")
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_exploding_loss_fails_the_trials_and_registers_nothing(tiny_overrides, store):
    overrides = [*tiny_overrides, HUGE_LR, "registry.refuse_single_class=true"]
    result = runner.invoke(app, ["run", *overrides])
    assert result.exit_code == 1, result.output
    trial_lines = [line for line in result.output.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all("Diverged" in line for line in trial_lines)
    assert "sweep error: study 'tiny' has no complete trial" in result.output
    client, runs = _runs(overrides)
    for name in ("trial-0", "trial-1"):
        assert runs[name].info.status == "FAILED"
        assert NON_FINITE.search(runs[name].data.tags["sweepflow.fail_reason"]), runs[name].data
    assert all(NON_FINITE.search(line) for line in trial_lines), trial_lines
    assert runs["sweep-tiny"].info.status == "FAILED"
    assert client.search_registered_models() == []
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{store / 'optuna.db'}")
    assert {t.state.name for t in study.trials} == {"FAIL"}
    assert not (store / "models").exists() or not list((store / "models").rglob("trial-*"))


def test_single_class_model_completes_with_its_score_and_is_not_registered(tiny_overrides,
                                                                           store):
    overrides = [*tiny_overrides, TINY_LR, "sweep.n_trials=1",
                 "registry.refuse_single_class=true"]
    result = runner.invoke(app, ["run", *overrides])
    assert result.exit_code == 0, result.output
    # The outcome line (after the progress bar's last frame on the same console line).
    trial_lines = re.findall(r"trial \d+ (?:complete|pruned|failed).*", result.output)
    assert len(trial_lines) == 1, result.output
    assert "complete" in trial_lines[0] and "single-class predictions at step" in trial_lines[0]
    assert "Diverged" not in result.output and "failed" not in trial_lines[0]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{store / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and 0 <= trial.value < 0.5  # its real, low score
    assert trial.user_attrs["note"].startswith("single-class predictions at step")
    client, runs = _runs(overrides)
    assert runs["trial-0"].info.status == "FINISHED"
    assert runs["trial-0"].data.tags["sweepflow.note"] == trial.user_attrs["note"]
    assert runs["sweep-tiny"].data.tags["registry.decision"].startswith("refused: it predicts "
                                                                        "a single class")
    assert client.search_registered_models() == []
