"""The pipeline: ingest -> tokenize -> sweep (subflow) -> evaluate -> register -> compress, in
one MLflow parent run. Without a config (a deployment run with no parameters) it loads
conf/base.yaml."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.sweep import sweep_flow
from sweepflow import paths, tracking
from sweepflow.config import SweepflowConfig, load_config
from tasks.compress import compress_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.lineage import log_lineage_task, run_tags
from tasks.register import register_task
from tasks.summary import PipelineSummary, summarize
from tasks.sweep import create_study_task
from tasks.tokenize import tokenize_task


@flow(name="pipeline")
def pipeline_flow(config: SweepflowConfig | None = None) -> PipelineSummary:
    config = config or load_config()
    paths.use_shared_dir(config.store.shared_dir)
    tokens = tokenize_task(config, ingest_task(config))
    study = create_study_task(config)
    tags = run_tags(config, study.name, flow_run.get_id())
    with tracking.managed_run(config, f"sweep-{study.name}", tags) as run_id:
        log_lineage_task(config, tokens, run_id)
        sweep = sweep_flow(config, tokens, study, run_id)
        evaluation = evaluate_task(config, tokens, sweep, run_id)
        registry = register_task(config, evaluation, run_id)
        compress_task(config, tokens, sweep.model_dir, registry, run_id)
    return summarize(config, sweep, evaluation, run_id, registry)
