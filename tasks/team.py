"""Team mode, the worker's side: one shared Optuna study as a queue of trials.

A trial worker (flows/worker.py, placed by Prefect: flows/team.py) sets torch's threads to its
share of the cores and pulls trials from the one shared study (PostgreSQL) until the study
holds the sweep's number of finished trials. Every trial is an MLflow child of the sweep's
parent run.

A worker that dies (SIGKILL, lost machine) stops its trial's heartbeat; once the grace period
passes, whoever looks next (another worker or the parent) fails the trial in Optuna, whose
retry callback queues it again with the same params, and closes its MLflow run as KILLED.
Plain functions: no work pool, deployment or Prefect worker here (those are in flows/team.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from pydantic import BaseModel
from sweepflow.tasks.pruning import trial_steps
from sweepflow.tasks.sweep import (
    RETRIED,
    StudyRef,
    TrialResult,
    load_study,
    outcome_line,
    run_asked,
)
from sweepflow.tasks.tokenize import TokenizedData

from sweepflow import storage, tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report

log = logging.getLogger(__name__)

SWEEP_TAG = "sweepflow.sweep_id"  # MLflow tag and Optuna user attr: which sweep ran the trial
WORKER_TAG = "sweepflow.worker"  # host:pid of the process that ran the trial
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Between trials, a worker waits this many sweep.grace_period for a study database out of
# reach (20 minutes at the default 120 s) before its run ends with the database's error.
OUT_OF_REACH_WAITS = 10


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


def close_stale_runs(tracker: tracking.Tracker, study: optuna.Study) -> int:
    """Close as KILLED the MLflow trial runs still RUNNING whose Optuna trial was failed on its
    heartbeat (failed without a `fail_reason`, which a live worker always sets first): their
    worker died or is cut off. Returns how many."""
    if tracker.experiment_id is None:
        return 0
    stale = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
             if "fail_reason" not in t.user_attrs}
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`optuna.study` = '{study.study_name}'"
        " and attributes.status = 'RUNNING'", max_results=1000)
    closed = 0
    for run in runs:
        if int(run.data.tags.get("optuna.trial_number", -1)) in stale:
            tracker.on(run.info.run_id).log(tags={
                "optuna.state": "failed",
                "error": f"worker {run.data.tags.get(WORKER_TAG, '?')} stopped sending "
                         "heartbeats: trial failed and retried"})
            tracker.client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


def reap(config: SweepflowConfig, tracker: tracking.Tracker, study: optuna.Study) -> None:
    """Fail the trials of dead workers (Optuna re-queues them) and close their MLflow runs.
    Under the study lock: a worker telling its result holds it too, so a trial is never failed
    between "still running?" and "told" (tasks/sweep.py tell)."""
    with storage.study_lock(storage.open_storage(storage.storage_url(config.sweep),
                                                 config.sweep), study.study_name):
        storage.fail_stale_trials(study)
    close_runs_of_dead(tracker, study)


def close_runs_of_dead(tracker: tracking.Tracker, study: optuna.Study) -> None:
    try:
        closed = close_stale_runs(tracker, study)
    except Exception as err:  # noqa: BLE001 - the next reaper (the parent's, every 2 s) retries
        log.warning("MLflow runs of dead workers' trials not closed yet: %s", err)
        return
    if closed:
        report.info(f"closed {closed} MLflow run(s) of trials whose worker died; "
                    "their params are queued again")


# -- one worker -----------------------------------------------------------------------------

def worker_threads(config: SweepflowConfig) -> int:
    """This worker's share of the machine's cores: cores // workers on this host."""
    cores = len(os.sched_getaffinity(0))
    per_host = config.sweep.workers_per_host or min(config.sweep.workers, cores)
    return max(1, cores // per_host)


def work(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef, plan: TeamPlan,
         tracker: tracking.Tracker) -> list[TrialResult]:
    """Pull trials from the shared study until it holds `plan.target` finished trials;
    `tracker`: on the sweep's parent run."""
    threads = config.train.num_threads or worker_threads(config)
    config = config.model_copy(update={"train": config.train.model_copy(
        update={"num_threads": threads})})
    steps = trial_steps(config.train, tokens.data.sizes["train"])
    shared = storage.open_storage(ref.storage, config.sweep)
    tags = {SWEEP_TAG: plan.sweep_id, WORKER_TAG: worker_name()}
    results: list[TrialResult] = []
    while True:
        step, study, trial = take_next(config, tracker, ref, plan, shared, steps)
        if trial is not None:
            for key, value in tags.items():
                trial.set_user_attr(key, value)
            result = run_asked(config, tokens, ref, study, trial, tracker, tags)
            report.info(f"[{tags[WORKER_TAG]}, {threads} thread(s)] "
                        + outcome_line(result, ref.metric, steps))
            results.append(result)
        elif step == "wait":
            time.sleep(config.sweep.heartbeat_interval)
        else:
            return results


def take_next(config: SweepflowConfig, tracker: tracking.Tracker, ref: StudyRef,
              plan: TeamPlan, shared: object, steps: int
              ) -> tuple[str, optuna.Study, optuna.Trial | None]:
    """Reap, count and ask as one step under the study lock (taken once), then, if a dead
    worker's trial was queued again, close the MLflow runs of such trials (the parent's
    reaper, every 2 s, closes any others). The study is loaded before the lock: that reads
    the trials into the process' cache, so the reads under it fetch only what changed since
    (the lock serialises the count and the new trial, not the reading). A worker between
    trials holds nothing, so while the study database is out of reach (a partition, an
    outage) it waits for it, with backoff, for up to OUT_OF_REACH_WAITS grace periods,
    saying so once."""
    deadline, delay, said = None, 1.0, False
    while True:
        try:
            study = load_study(ref, config, steps)
            with storage.study_lock(shared, ref.name):
                storage.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                step = next_step(trials, plan.target)
                trial = study.ask() if step == "ask" else None
            if any(t.state == TrialState.WAITING and RETRIED in t.system_attrs
                   for t in trials):  # a dead worker's trial, queued again: close its run
                close_runs_of_dead(tracker, study)
            return step, study, trial
        except Exception as err:
            limit = OUT_OF_REACH_WAITS * config.sweep.grace_period
            deadline = deadline or time.monotonic() + limit
            if not storage.out_of_reach(err) or time.monotonic() > deadline:
                raise
            if not said:
                report.info(f"[{worker_name()}] study database out of reach; waiting up to "
                            f"{limit} s for it between trials")
                said = True
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


@task(name="pull-trials", cache_policy=NO_CACHE)
def work_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
              plan: TeamPlan, tracker: tracking.Tracker) -> int:
    return len(work(config, tokens, study, plan, tracker))


# -- the sweep's side: targets and results ------------------------------------------

def start_target(config: SweepflowConfig, ref: StudyRef) -> int:
    """The study's finished trials now plus this sweep's n_trials (counted under the study
    lock, so two sweeps started at once agree)."""
    shared = storage.open_storage(ref.storage, config.sweep)
    with storage.study_lock(shared, ref.name):
        study = load_study(ref, config)
        return finished_count(study.get_trials(deepcopy=False)) + config.sweep.n_trials


def report_finished(config: SweepflowConfig, tracker: tracking.Tracker, ref: StudyRef,
                    plan: TeamPlan, study: optuna.Study, reported: set[int], total: int
                    ) -> set[int]:
    new = {t.number for t in study.get_trials(deepcopy=False, states=DONE_STATES)
           if t.user_attrs.get(SWEEP_TAG) == plan.sweep_id} - reported
    if not new:
        return set()
    for result in collect(config, tracker, ref, plan):
        if result.number in new:
            report.info(outcome_line(result, ref.metric, total))
    return new


def collect(config: SweepflowConfig, tracker: tracking.Tracker, ref: StudyRef, plan: TeamPlan
            ) -> list[TrialResult]:
    """This sweep's trials as TrialResults, from their MLflow runs and the study."""
    study = load_study(ref, config)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{SWEEP_TAG}` = '{plan.sweep_id}'",
        max_results=10000) if tracker.experiment_id else []
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


# -- the sweep's side: watching the worker runs --------------------------------------------

@dataclass
class WatchClock:
    """When the watch first saw the worker runs all ended, and the study done (monotonic)."""

    ended: float | None = None
    done: float | None = None


def _since(first: float | None, holds: bool) -> tuple[float | None, float]:
    """(when a condition first held, seconds since then): (None, 0) while it does not hold."""
    if not holds:
        return None, 0.0
    first = time.monotonic() if first is None else first
    return first, time.monotonic() - first


def watch_step(config: SweepflowConfig, states: list[State | None], trials: list[FrozenTrial],
               plan: TeamPlan, clock: WatchClock) -> str:
    """What the watch does next: "watch" on; "end": every worker run ended and no trial of
    this sweep is RUNNING (a dead worker's trial is failed by the reapers once its heartbeat
    is sweep.grace_period old, so the watch goes on that long after the runs crashed; a trial
    not tagged yet counts as this sweep's); "cancel": the study holds the sweep's trials but
    some runs have not ended (their Prefect worker died with them, or none took them) for
    longer than a live worker takes to see it (sweep.heartbeat_interval) and leave."""
    ended = all(s is not None and s.is_final() for s in states)
    running = any(t.state == TrialState.RUNNING
                  and t.user_attrs.get(SWEEP_TAG) in (None, plan.sweep_id) for t in trials)
    clock.ended, waited = _since(clock.ended, ended)
    if ended and (not running or waited > config.sweep.grace_period
                  + 2 * config.sweep.heartbeat_interval):
        return "end"
    done = next_step(trials, plan.target) == "done"
    clock.done, done_for = _since(clock.done, done)
    if not ended and done_for > config.sweep.heartbeat_interval + 60:
        return "cancel"
    return "watch"


def shortfall(states: list[State | None], trials: list[FrozenTrial], target: int
              ) -> str | None:
    """One line when the sweep ends with fewer finished trials than asked: how many, and the
    worker runs' end states (a crash is on the run in Prefect); None otherwise."""
    finished = finished_count(trials)
    if finished >= target:
        return None
    ends = ", ".join(sorted({s.name for s in states if s is not None})) or "none started"
    return (f"the trial workers ended {target - finished} trial(s) short of the sweep's "
            f"target ({finished} of {target} finished in the study; worker runs: {ends}); "
            "their logs are on the worker runs in Prefect")
