"""The sweep subflow: one Optuna study, n trials, each a nested MLflow run. Runnable alone."""

from __future__ import annotations

from prefect import flow
from sweepflow.flows.team import run_team_task
from sweepflow.tasks.sweep import StudyRef, create_study_task, run_trial_task, warm_start_task
from sweepflow.tasks.sweep_report import SweepResult, summarize_sweep_task
from sweepflow.tasks.tokenize import TokenizedData

from sweepflow.config import SweepflowConfig
from sweepflow.tracking import Tracker


@flow(name="sweep")
def sweep_flow(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef | None = None,
               tracker: Tracker | None = None) -> SweepResult:
    """`tracker`: logging to the pipeline's parent run (run alone: opened here, and each
    trial is a run of its own)."""
    tracker = tracker or Tracker.open(config)
    study = study or create_study_task(config)
    warm_start_task(config, tokens, study)  # a new data version starts from the last best
    if config.sweep.workers > 1:  # team mode: trial workers placed by Prefect
        trials = run_team_task(config, tokens, study, tracker)
    else:
        trials = [run_trial_task.with_options(
            task_run_name=f"trial-{i + 1}-of-{config.sweep.n_trials}")(
                config, tokens, study, tracker) for i in range(config.sweep.n_trials)]
    return summarize_sweep_task(config, study, tokens, trials, tracker)
