"""Close what a dead process left RUNNING: MLflow runs become KILLED and Optuna trials FAIL.

Every run and trial carries its owner (sweepflow/owner.py). A command that opens the store
calls `reap`, which closes the RUNNING runs and trials whose owner was on this host and is
gone (SIGKILL, the OOM killer, a power cut). Owners on other hosts are left alone: a shared
store's other machines are not judged from here, and trials of a shared (PostgreSQL) study
are left to Optuna's heartbeats, which fail and re-queue them (sweepflow/storage.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import optuna
from mlflow.entities import ViewType
from optuna.trial import TrialState

from sweepflow import owner
from sweepflow.storage import is_shared
from sweepflow.tracking import MlflowClient

log = logging.getLogger(__name__)
REASON = "owner process died (pid {pid} on {host})"


@dataclass
class Reaped:
    runs: int = 0
    trials: int = 0
    pids: set[str] = field(default_factory=set)

    def line(self) -> str | None:
        if not (self.runs or self.trials):
            return None
        pids = ", ".join(sorted(self.pids))
        return (f"closed {self.runs} run(s) as KILLED and {self.trials} trial(s) as FAIL "
                f"left RUNNING by a dead process (pid {pids})")


def reap_runs(client: MlflowClient, found: Reaped) -> None:
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not ids:
        return
    for run in client.search_runs(ids, "attributes.status = 'RUNNING'", ViewType.ALL,
                                  max_results=5000):
        tags = run.data.tags
        host, pid = tags.get(owner.HOST_TAG), tags.get(owner.PID_TAG)
        if owner.is_dead(host, pid, tags.get(owner.START_TAG)):
            client.set_tag(run.info.run_id, "error", REASON.format(pid=pid, host=host))
            client.set_terminated(run.info.run_id, status="KILLED")
            found.runs += 1
            found.pids.add(str(pid))


def reap_trials(storage_url: str, found: Reaped) -> None:
    storage = optuna.storages.get_storage(storage_url)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study_id = storage.get_study_id_from_name(summary.study_name)
        for trial in storage.get_all_trials(study_id, deepcopy=False,
                                            states=(TrialState.RUNNING,)):
            who = trial.user_attrs.get(owner.OWNER_ATTR) or {}
            if owner.is_dead(who.get("host"), who.get("pid"), who.get("start")):
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id,
                                                                           trial.number)
                storage.set_trial_user_attr(trial_id, "fail_reason", REASON.format(**who))
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                found.trials += 1
                found.pids.add(str(who.get("pid")))


def reap(client: MlflowClient, storage_url: str | None) -> str | None:
    """Close dead owners' runs and trials (`client`: on the tracking store); the one line to
    print, or None."""
    found = Reaped()
    reap_runs(client, found)
    if storage_url and not is_shared(storage_url):  # shared studies: Optuna's heartbeats
        reap_trials(storage_url, found)
    return found.line()
