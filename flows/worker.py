"""A trial worker: one process pulling trials from a sweep's shared study until it holds the
sweep's number of finished trials. Run by Prefect workers from the `trial-worker/<pool>`
deployment that a team sweep creates (tasks/team.py)."""

from __future__ import annotations

from prefect import flow

from sweepflow import paths
from sweepflow.config import SweepflowConfig
from tasks.sweep import StudyRef
from tasks.team import TeamPlan, work_task
from tasks.tokenize import TokenizedData


@flow(name="trial-worker")
def trial_worker_flow(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
                      plan: TeamPlan) -> int:
    paths.use_shared_dir(config.store.shared_dir)
    return work_task(config, tokens, study, plan)
