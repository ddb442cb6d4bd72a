"""A trial worker: one process pulling trials from a sweep's shared study until it holds the
sweep's number of finished trials. Run by Prefect workers from the `trial-worker/<pool>`
deployment that a team sweep creates (flows/team.py)."""

from __future__ import annotations

import logging

from prefect import flow
from sweepflow.tasks.sweep import StudyRef
from sweepflow.tasks.team import TeamPlan, work_task
from sweepflow.tasks.tokenize import TokenizedData

from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.tracking import Tracker


@flow(name="trial-worker")
def trial_worker_flow(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
                      plan: TeamPlan) -> int:
    report.setLevel(logging.INFO)  # one line per trial in the run's log (the CLI is not here)
    tracker = Tracker.open(config, plan.parent_run_id)  # trials are children of the sweep's run
    return work_task(config, tokens, study, plan, tracker)
