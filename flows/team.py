"""Team mode, the orchestration: Prefect places a sweep's trial workers.

The sweep's flow (the parent) ingests and tokenizes once into `store.shared_dir`, opens the
sweep's MLflow parent run and launches `sweep.workers` runs of the `trial-worker` deployment on
the Prefect work pool `sweep.work_pool` (type `process`). Whichever Prefect worker picks a run
up, on this machine or another, starts it as a process of its own (flows/worker.py), which
pulls trials from the shared study (tasks/team.py). The parent watches the runs, reports each
finished trial, reaps dead workers' trials and cancels the runs on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sweepflow.tasks.pruning import trial_steps
from sweepflow.tasks.sweep import StudyRef, TrialResult, load_study
from sweepflow.tasks.team import (
    TeamPlan,
    WatchClock,
    collect,
    reap,
    report_finished,
    shortfall,
    start_target,
    watch_step,
)
from sweepflow.tasks.tokenize import TokenizedData

from sweepflow import paths, tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.stack import stop
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)

FLOW_NAME = "trial-worker"
ENTRYPOINT = "sweepflow.flows.worker.trial_worker_flow"


class TeamError(UserError):
    """Team mode cannot start; the message says what to set or start."""

    kind = "team error"
    exit_code = 2


def prefect_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise TeamError("sweep.workers > 1 needs a Prefect server that workers can reach: "
                        "`sweepflow stack` (or `prefect server start`), then "
                        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return url


def check_prefect_access() -> None:
    """When PREFECT_API_URL names a server, it takes this process' requests: a server that
    asks for the auth string (PREFECT_API_AUTH_STRING) is one line here, not a traceback
    from inside a flow."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    try:
        with get_client(sync_client=True) as client:
            client.read_flows(limit=1)
    except PrefectHTTPStatusError as err:
        if err.response.status_code not in (401, 403):
            raise
        raise TeamError(f"PREFECT_API_URL={PREFECT_API_URL.value()}: the Prefect server "
                        f"refused the request ({err.response.status_code}): export "
                        "PREFECT_API_AUTH_STRING (`sweepflow stack` said where it is)") from None


def team_config(config: SweepflowConfig, uri: str) -> SweepflowConfig:
    """The config every worker gets: the tracking URI (`uri`, the sweep's) and the shared
    folder resolved here, so a worker on another machine writes to the same places."""
    if config.sweep.workers > 1 and uri.startswith("sqlite") and config.store.shared_dir:
        raise TeamError(f"tracking.uri={uri}: workers on other machines cannot reach a SQLite "
                        "store; point tracking.uri at an MLflow server (http://host:5000)")
    return config.model_copy(update={
        "tracking": config.tracking.model_copy(update={"uri": uri}),
        "store": config.store.model_copy(update={
            "shared_dir": str(paths.shared_dir(config.store.shared_dir))})})


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
                                 # the trial lines (and a refused late result) reach the
                                 # flow run's log, whoever started the Prefect worker
                                 job_variables={"env": {
                                     "PREFECT_LOGGING_EXTRA_LOGGERS": "sweepflow"}},
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


def run_team(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
             tracker: tracking.Tracker) -> list[TrialResult]:
    """Launch the workers, report each trial as it finishes, return this sweep's trials."""
    prefect_api()
    config = team_config(config, tracker.uri)
    plan = TeamPlan(sweep_id=uuid.uuid4().hex, target=start_target(config, ref),
                    parent_run_id=tracker.run_id)
    runs = launch(config, tokens, ref, plan)
    report.info(f"sweep of {config.sweep.n_trials} trials on {config.sweep.workers} workers "
                f"(work pool '{config.sweep.work_pool}', study '{ref.name}')")
    try:
        watch(config, tracker, ref, plan, [r.id for r in runs],
              trial_steps(config.train, tokens.data.sizes["train"]))
    except BaseException:  # Ctrl-C: the workers' runs are cancelled, not left running
        cancel([r.id for r in runs])
        raise
    return collect(config, tracker, ref, plan)


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


def watch(config: SweepflowConfig, tracker: tracking.Tracker, ref: StudyRef, plan: TeamPlan,
          run_ids: list[Any], total: int) -> None:
    """Until every worker run has ended: report finished trials, reap dead workers' trials,
    and say once if no Prefect worker has picked the runs up. Then say if the sweep fell short
    (its worker runs crashed). Never hangs on a run whose end Prefect never hears of."""
    from prefect.client.orchestration import get_client

    reported: set[int] = set()
    started, hinted, clock = time.monotonic(), False, WatchClock()
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(i).state for i in run_ids]
            study = load_study(ref, config)
            reap(config, tracker, study)
            reported |= report_finished(config, tracker, ref, plan, study, reported, total)
            trials = study.get_trials(deepcopy=False)
            step = watch_step(config, states, trials, plan, clock)
            if step == "cancel":
                report.info("the study holds the sweep's trials but worker runs have not "
                            "ended; cancelling them")
                cancel([i for i, s in zip(run_ids, states, strict=True)
                        if s is None or not s.is_final()])
            if step in ("end", "cancel"):
                break
            waiting = all(s is None or s.is_scheduled() or s.is_pending() for s in states)
            if waiting and not hinted and time.monotonic() - started > 60:
                report.info(f"no Prefect worker has taken the trial workers yet: start one "
                            f"with `prefect worker start --pool {config.sweep.work_pool}`")
                hinted = True
            time.sleep(2)
    short = shortfall(states, trials, plan.target)
    if short:
        report.info(short)


@task(name="run-trial-workers", cache_policy=NO_CACHE)
def run_team_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
                  tracker: tracking.Tracker) -> list[TrialResult]:
    return run_team(config, tokens, study, tracker)


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
