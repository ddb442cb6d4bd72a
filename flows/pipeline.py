"""The pipeline: ingest -> data version (skip if nothing changed) -> tokenize -> champion
re-scored -> drift -> sweep (subflow) -> evaluate -> register -> compress, in one MLflow
parent run. Without a config (a deployment run with no parameters) it loads conf/base.yaml."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from sweepflow.flows.sweep import sweep_flow
from sweepflow.tasks.champion import check_champion_task
from sweepflow.tasks.compress import compress_task
from sweepflow.tasks.drift import drift_task
from sweepflow.tasks.evaluate import evaluate_task
from sweepflow.tasks.ingest import ingest_task
from sweepflow.tasks.lineage import log_lineage_task, run_tags
from sweepflow.tasks.register import register_task
from sweepflow.tasks.summary import PipelineSummary, skipped_summary, summarize
from sweepflow.tasks.sweep import create_study_task
from sweepflow.tasks.tokenize import tokenize_task
from sweepflow.tasks.versions import record_version_task, skip_unchanged_task

from sweepflow.config import SweepflowConfig, load_config
from sweepflow.tracking import Tracker


@flow(name="pipeline")
def pipeline_flow(config: SweepflowConfig | None = None) -> PipelineSummary:
    config = config or load_config()
    data = ingest_task(config)
    study = create_study_task(config)
    tags = run_tags(config, study.name, flow_run.get_id())
    tracker = Tracker.open(config)  # the one connection to MLflow, handed to the steps
    with tracker.start_run(f"sweep-{study.name}", tags) as run:
        version = record_version_task(config, data, run)
        if skipped := skip_unchanged_task(config, version, run):
            return skipped_summary(config, run, version, skipped)
        tokens = tokenize_task(config, data)
        log_lineage_task(config, tokens, run)
        champion = check_champion_task(config, tokens, run)
        drift = drift_task(config, tokens, champion, run)
        sweep = sweep_flow(config, tokens, study, run)
        evaluation = evaluate_task(config, tokens, sweep, run)
        registry = register_task(config, evaluation, run, champion)
        compress_task(config, tokens, sweep.model_dir, registry, run)
    return summarize(config, sweep, evaluation, run, registry, version, drift)
