"""Team mode: one sweep, many trial workers, one machine or many.

The sweep's flow (the parent) ingests and tokenizes once into `store.shared_dir`, opens the
sweep's MLflow parent run and launches `sweep.workers` runs of the `trial-worker` deployment on
the Prefect work pool `sweep.work_pool` (type `process`). Whichever Prefect worker picks a run
up, on this machine or another, starts it as a process of its own; that process sets torch's
threads to its share of the cores and pulls trials from the one shared Optuna study
(PostgreSQL) until the study holds the sweep's number of finished trials. Every trial is an
MLflow child of the parent run.

A worker that dies (SIGKILL, lost machine) stops its trial's heartbeat; once the grace period
passes, whoever looks next (another worker or the parent) fails the trial in Optuna, whose
retry callback queues it again with the same params, and closes its MLflow run as KILLED.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from sweepflow.tasks.pruning import trial_steps
from sweepflow.tasks.sweep import StudyRef, TrialResult, load_study, outcome_line, run_asked
from sweepflow.tasks.tokenize import TokenizedData

from sweepflow import paths, storage, tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.stack import stop

log = logging.getLogger(__name__)

FLOW_NAME = "trial-worker"
ENTRYPOINT = "sweepflow.flows.worker.trial_worker_flow"
SWEEP_TAG = "sweepflow.sweep_id"  # MLflow tag and Optuna user attr: which sweep ran the trial
WORKER_TAG = "sweepflow.worker"  # host:pid of the process that ran the trial
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class TeamError(RuntimeError):
    """Team mode cannot start; the message says what to set or start."""


class TeamPlan(BaseModel):
    """What every trial worker of one sweep gets."""

    sweep_id: str
    target: int  # the sweep is done when the study holds this many finished trials
    parent_run_id: str | None


# -- the study as a queue -------------------------------------------------------------------

def finished_count(trials: list[FrozenTrial]) -> int:
    """Complete, pruned and failed trials, except failed ones that were retried (a dead
    worker's trial counts once, through its retry)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.state in DONE_STATES and not (t.state == TrialState.FAIL
                                               and t.number in retried) for t in trials)


def next_step(trials: list[FrozenTrial], target: int) -> str:
    """"ask" (a queued retry, or fewer trials than the target), "wait" (others still run
    trials that may die and come back) or "done"."""
    states = [t.state for t in trials]
    running = states.count(TrialState.RUNNING)
    if TrialState.WAITING in states or finished_count(trials) + running < target:
        return "ask"
    return "wait" if running else "done"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def close_stale_runs(config: SweepflowConfig, study: optuna.Study) -> int:
    """Close as KILLED the MLflow trial runs still RUNNING whose Optuna trial has finished:
    their worker died (Optuna failed the trial on its heartbeat). Returns how many."""
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    exp = client.get_experiment_by_name(config.tracking.experiment)
    if exp is None:
        return 0
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    runs = client.search_runs([exp.experiment_id], f"tags.`optuna.study` = '{study.study_name}'"
                              " and attributes.status = 'RUNNING'", max_results=1000)
    closed = 0
    for run in runs:
        number = int(run.data.tags.get("optuna.trial_number", -1))
        if number in states and states[number].is_finished():
            client.log_batch(run.info.run_id, tags=[
                tracking.RunTag("optuna.state", "failed"),
                tracking.RunTag("error", f"worker {run.data.tags.get(WORKER_TAG, '?')} "
                                         "stopped sending heartbeats: trial failed and retried")])
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


def reap(config: SweepflowConfig, study: optuna.Study) -> None:
    """Fail the trials of dead workers (Optuna re-queues them) and close their MLflow runs."""
    storage.fail_stale_trials(study)
    closed = close_stale_runs(config, study)
    if closed:
        report.info(f"closed {closed} MLflow run(s) of trials whose worker died; "
                    "their params are queued again")


# -- one worker -----------------------------------------------------------------------------

def worker_threads(config: SweepflowConfig) -> int:
    """This worker's share of the machine's cores: cores // workers on this host."""
    cores = len(os.sched_getaffinity(0))
    per_host = config.sweep.workers_per_host or min(config.sweep.workers, cores)
    return max(1, cores // per_host)


def work(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef, plan: TeamPlan
         ) -> list[TrialResult]:
    """Pull trials from the shared study until it holds `plan.target` finished trials."""
    threads = config.train.num_threads or worker_threads(config)
    config = config.model_copy(update={"train": config.train.model_copy(
        update={"num_threads": threads})})
    steps = trial_steps(config.train, tokens.data.sizes["train"])
    shared = storage.open_storage(ref.storage, config.sweep)
    tags = {SWEEP_TAG: plan.sweep_id, WORKER_TAG: worker_name()}
    results: list[TrialResult] = []
    while True:
        reap(config, load_study(ref, config, steps))
        with storage.study_lock(shared, ref.name):  # count and ask as one step
            study = load_study(ref, config, steps)
            step = next_step(study.get_trials(deepcopy=False), plan.target)
            trial = study.ask() if step == "ask" else None
        if trial is not None:
            for key, value in tags.items():
                trial.set_user_attr(key, value)
            result = run_asked(config, tokens, ref, study, trial, plan.parent_run_id, tags)
            report.info(f"[{tags[WORKER_TAG]}, {threads} thread(s)] "
                        + outcome_line(result, ref.metric, steps))
            results.append(result)
        elif step == "wait":
            time.sleep(config.sweep.heartbeat_interval)
        else:
            return results


@task(name="pull-trials", cache_policy=NO_CACHE)
def work_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
              plan: TeamPlan) -> int:
    return len(work(config, tokens, study, plan))


# -- the parent: launch, watch, collect -------------------------------------------------------

def prefect_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise TeamError("sweep.workers > 1 needs a Prefect server that workers can reach: "
                        "`sweepflow stack` (or `prefect server start`), then "
                        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return url


def team_config(config: SweepflowConfig) -> SweepflowConfig:
    """The config every worker gets: the tracking URI and the shared folder resolved here,
    so a worker on another machine writes to the same places."""
    uri = tracking.tracking_uri(config)
    if config.sweep.workers > 1 and uri.startswith("sqlite") and config.store.shared_dir:
        raise TeamError(f"tracking.uri={uri}: workers on other machines cannot reach a SQLite "
                        "store; point tracking.uri at an MLflow server (http://host:5000)")
    return config.model_copy(update={
        "tracking": config.tracking.model_copy(update={"uri": uri}),
        "store": config.store.model_copy(update={"shared_dir": str(paths.shared_dir())})})


def ensure_deployment(pool: str) -> str:
    """The work pool (type process) and the `trial-worker/<pool>` deployment, created or
    updated; the flow is imported by module path, so any machine with sweepflow installed
    runs it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template()))
            except ObjectAlreadyExists:
                pass
        flow_id = client.create_flow_from_name(FLOW_NAME)
        client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool,
                                 entrypoint=ENTRYPOINT, path=None, pull_steps=[],
                                 enforce_parameter_schema=False, tags=["sweepflow"],
                                 description="sweepflow trial worker: pulls trials from a "
                                             "shared Optuna study")
    return f"{FLOW_NAME}/{pool}"


def launch(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef, plan: TeamPlan
           ) -> list[Any]:
    """`sweep.workers` runs of the trial-worker deployment (returned at once)."""
    from prefect.deployments import run_deployment

    name = ensure_deployment(config.sweep.work_pool)
    params = {"config": config.model_dump(mode="json"), "tokens": tokens.model_dump(mode="json"),
              "study": ref.model_dump(mode="json"), "plan": plan.model_dump(mode="json")}
    return [run_deployment(name, parameters=params, timeout=0,
                           flow_run_name=f"{ref.name}-worker-{i + 1}")
            for i in range(config.sweep.workers)]


def start_target(config: SweepflowConfig, ref: StudyRef) -> int:
    """The study's finished trials now plus this sweep's n_trials (counted under the study
    lock, so two sweeps started at once agree)."""
    shared = storage.open_storage(ref.storage, config.sweep)
    with storage.study_lock(shared, ref.name):
        study = load_study(ref, config)
        return finished_count(study.get_trials(deepcopy=False)) + config.sweep.n_trials


def run_team(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
             parent_run_id: str | None) -> list[TrialResult]:
    """Launch the workers, report each trial as it finishes, return this sweep's trials."""
    prefect_api()
    config = team_config(config)
    plan = TeamPlan(sweep_id=uuid.uuid4().hex, target=start_target(config, ref),
                    parent_run_id=parent_run_id)
    runs = launch(config, tokens, ref, plan)
    report.info(f"sweep of {config.sweep.n_trials} trials on {config.sweep.workers} workers "
                f"(work pool '{config.sweep.work_pool}', study '{ref.name}')")
    try:
        watch(config, ref, plan, [r.id for r in runs],
              trial_steps(config.train, tokens.data.sizes["train"]))
    except BaseException:  # Ctrl-C: the workers' runs are cancelled, not left running
        cancel([r.id for r in runs])
        raise
    return collect(config, ref, plan)


def cancel(run_ids: list[Any]) -> None:
    """Ask Prefect to cancel the worker runs (their Prefect worker stops the processes)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            try:
                if not client.read_flow_run(run_id).state.is_final():
                    client.set_flow_run_state(run_id, Cancelling(), force=True)
            except Exception as err:  # noqa: BLE001 - best effort while interrupted
                log.warning("could not cancel flow run %s: %s", run_id, err)


def watch(config: SweepflowConfig, ref: StudyRef, plan: TeamPlan, run_ids: list[Any],
          total: int) -> None:
    """Until every worker run has ended: report finished trials, reap dead workers' trials,
    and say once if no Prefect worker has picked the runs up."""
    from prefect.client.orchestration import get_client

    reported: set[int] = set()
    started, hinted = time.monotonic(), False
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(i).state for i in run_ids]
            study = load_study(ref, config)
            reap(config, study)
            reported |= report_finished(config, ref, plan, study, reported, total)
            if all(s is not None and s.is_final() for s in states):
                return
            waiting = all(s is None or s.is_scheduled() or s.is_pending() for s in states)
            if waiting and not hinted and time.monotonic() - started > 60:
                report.info(f"no Prefect worker has taken the trial workers yet: start one "
                            f"with `prefect worker start --pool {config.sweep.work_pool}`")
                hinted = True
            time.sleep(2)


def report_finished(config: SweepflowConfig, ref: StudyRef, plan: TeamPlan,
                    study: optuna.Study, reported: set[int], total: int) -> set[int]:
    new = {t.number for t in study.get_trials(deepcopy=False, states=DONE_STATES)
           if t.user_attrs.get(SWEEP_TAG) == plan.sweep_id} - reported
    if not new:
        return set()
    for result in collect(config, ref, plan):
        if result.number in new:
            report.info(outcome_line(result, ref.metric, total))
    return new


def collect(config: SweepflowConfig, ref: StudyRef, plan: TeamPlan) -> list[TrialResult]:
    """This sweep's trials as TrialResults, from their MLflow runs and the study."""
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    exp = client.get_experiment_by_name(config.tracking.experiment)
    study = load_study(ref, config)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    runs = client.search_runs([exp.experiment_id], f"tags.`{SWEEP_TAG}` = '{plan.sweep_id}'",
                              max_results=10000) if exp else []
    results = []
    for run in runs:
        trial = trials.get(int(run.data.tags.get("optuna.trial_number", -1)))
        if trial is None or not trial.state.is_finished():
            continue
        state = run.data.tags.get("optuna.state", "failed")
        results.append(TrialResult(
            number=trial.number, state=state if state in ("complete", "pruned") else "failed",
            value=trial.value, params=trial.params, steps=int(run.data.tags.get(
                "optuna.steps", 0)), run_id=run.info.run_id,
            seconds=((run.info.end_time or tracking.now_ms()) - run.info.start_time) / 1000,
            error=run.data.tags.get("error")))
    return sorted(results, key=lambda r: r.number)


@task(name="run-trial-workers", cache_policy=NO_CACHE)
def run_team_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
                  parent_run_id: str | None) -> list[TrialResult]:
    return run_team(config, tokens, study, parent_run_id)


# -- Prefect workers on this machine ----------------------------------------------------------

@contextmanager
def local_workers(config: SweepflowConfig) -> Iterator[Path | None]:
    """`prefect worker start --pool <sweep.work_pool>` on this machine for the length of a
    sweep (sweep.workers > 1 and sweep.start_worker), taking up to `workers_per_host` runs at
    once; its output goes to a log file in the store, not the console."""
    if config.sweep.workers == 1 or not config.sweep.start_worker:
        yield None
        return
    prefect_api()
    cores = len(os.sched_getaffinity(0))
    limit = config.sweep.workers_per_host or min(config.sweep.workers, cores)
    logfile = paths.store_dir() / "team" / f"prefect-worker-{os.getpid()}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool",
           config.sweep.work_pool, "--type", "process", "--limit", str(limit)]
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": os.environ.get(
        "PREFECT_WORKER_QUERY_SECONDS", "2")}
    with logfile.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    report.info(f"Prefect worker on pool '{config.sweep.work_pool}' (pid {proc.pid}, up to "
                f"{limit} trial workers here); log: {logfile}")
    try:
        yield logfile
    finally:
        stop(proc)
