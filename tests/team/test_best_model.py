"""One rule for a study's best model, on a real PostgreSQL study shared by concurrent
finishers (each with its own connection pool, as separate workers have): forced ties and
simultaneous finishes keep exactly the model of the trial Optuna calls best, and the late
result of a trial failed on its heartbeat (a worker cut off past the grace period) is refused
without touching the kept model."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool
from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.sweep import (
    BASIS_ATTR,
    TrialResult,
    TrialTaken,
    basis,
    create_study,
    tell,
    tell_result,
    trial_model_dir,
)
from sweepflow.tasks.tokenize import tokenize
from sweepflow.tasks.train import TextClassifier

from sweepflow.config import load_config
from sweepflow.paths import models_dir, shared_dir
from sweepflow.stack import database_url, drop_databases, ensure_databases, pg_server_url
from tests.team.conftest import postgres_problem

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_config(tiny_overrides: list[str]) -> Iterator:
    problem = postgres_problem()
    if problem:
        pytest.skip(f"needs PostgreSQL: {problem}")
    name = f"sf_{uuid.uuid4().hex[:12]}"
    ensure_databases(pg_server_url(), [name])
    try:
        yield load_config(overrides=[*tiny_overrides,
                                     f"sweep.storage={database_url(pg_server_url(), name)}"])
    finally:
        drop_databases(pg_server_url(), [name])


def _finish_all(config, values: list[float]) -> tuple[optuna.Study, str, list[int]]:
    """Ask one trial per value, then let one thread per trial (each its own storage and
    pool, like a worker process) tell its result at the same moment."""
    tokens = tokenize(config, ingest(config))
    ref = create_study(config)
    key = basis(tokens)
    module = TextClassifier(tokens.model_path, list(tokens.data.label_names), config.train)
    state = module.model.state_dict()
    asker = optuna.load_study(study_name=ref.name, storage=ref.storage)
    trials = [asker.ask() for _ in values]
    for trial in trials:
        trial.set_user_attr(BASIS_ATTR, key)
    start, errors = threading.Barrier(len(values)), []

    def finisher(trial: optuna.Trial, value: float) -> None:
        storage = RDBStorage(ref.storage, engine_kwargs={"poolclass": NullPool})
        study = optuna.load_study(study_name=ref.name, storage=storage)
        mine = optuna.Trial(study, trial._trial_id)  # noqa: SLF001 - the worker's own handle
        result = TrialResult(number=trial.number, state="complete", value=value, params={},
                             steps=1, seconds=0.0, run_id=f"run-{trial.number}")
        start.wait()
        try:
            tell(study, mine, result, module, state, tokens, ref.models, storage)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    threads = [threading.Thread(target=finisher, args=pair)
               for pair in zip(trials, values, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    return optuna.load_study(study_name=ref.name, storage=ref.storage), key, [
        t.number for t in trials]


def _models(study: optuna.Study) -> Path:
    """Where the study's models are kept (the tests' store: no store.shared_dir)."""
    return models_dir(shared_dir(None), study.study_name)


def _kept(study: optuna.Study, key: str) -> list[str]:
    folder = trial_model_dir(_models(study), key, 0).parent
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("values", [[0.5, 0.5, 0.5, 0.5], [0.4, 0.7, 0.7, 0.6]],
                         ids=["all-tied", "tie-at-the-top"])
def test_simultaneous_finishes_keep_optunas_best(pg_config, values):
    study, key, numbers = _finish_all(pg_config, values)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == len(values)
    best = study.best_trial  # Optuna's rule: the first of equal values
    assert best.number == numbers[values.index(max(values))]
    assert _kept(study, key) == [f"trial-{best.number}"]


def test_a_late_result_is_refused_and_keeps_the_best_model(pg_config):
    """Trial 1 is failed on its heartbeat (as the reaper does to a cut-off worker) and comes
    back with a better score: refused, and the kept model stays trial 0's."""
    study, key, _ = _finish_all(pg_config, [0.5])
    ref_storage = RDBStorage(pg_config.sweep.storage, engine_kwargs={"poolclass": NullPool})
    study = optuna.load_study(study_name=study.study_name, storage=ref_storage)
    late = study.ask()
    late.set_user_attr(BASIS_ATTR, key)
    ref_storage.set_trial_state_values(late._trial_id, TrialState.FAIL)  # noqa: SLF001
    tokens = tokenize(pg_config, ingest(pg_config))
    module = TextClassifier(tokens.model_path, list(tokens.data.label_names), pg_config.train)
    result = TrialResult(number=late.number, state="complete", value=0.9, params={}, steps=1,
                         seconds=0.0, run_id="late")
    with pytest.raises(TrialTaken, match="late result refused"):
        tell(study, late, result, module, module.model.state_dict(), tokens, _models(study),
             ref_storage)
    study = optuna.load_study(study_name=study.study_name, storage=ref_storage)
    assert study.best_trial.number == 0
    assert study.trials[late.number].state == TrialState.FAIL
    assert _kept(study, key) == ["trial-0"]


def test_a_model_written_before_the_lock_and_beaten_meanwhile_is_not_kept(pg_config):
    """A finisher writes its model before taking the study lock (stage_model); if another
    worker tells a better trial meanwhile, the decision under the lock drops the written
    model and keeps the better one. The other worker tells while the first one writes, so
    the writing is not under the lock (it would wait for it)."""
    ref = create_study(pg_config)
    key = "basis"

    def open_study() -> tuple[optuna.Study, RDBStorage]:
        storage = RDBStorage(ref.storage, engine_kwargs={"poolclass": NullPool})
        return optuna.load_study(study_name=ref.name, storage=storage), storage

    def finish(trial: optuna.Trial, value: float, study: optuna.Study, storage: RDBStorage,
               write) -> None:
        result = TrialResult(number=trial.number, state="complete", value=value, params={},
                             steps=1, seconds=0.0, run_id=f"run-{trial.number}")
        tell_result(study, trial, result, key, ref.models, storage, write)

    study, storage = open_study()
    first, second = study.ask(), study.ask()
    for trial in (first, second):
        trial.set_user_attr(BASIS_ATTR, key)
    other_study, other_storage = open_study()
    other = optuna.Trial(other_study, second._trial_id)  # noqa: SLF001 - the other worker's
    errors: list[BaseException] = []

    def write_while_another_finishes(folder: Path) -> None:
        (folder / "model.json").write_text("first")
        thread = threading.Thread(target=lambda: _catch(errors, finish, other, 0.9,
                                                        other_study, other_storage,
                                                        lambda f: (f / "model.json")
                                                        .write_text("second")))
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the other worker waited: the write held the lock"

    finish(first, 0.6, study, storage, write_while_another_finishes)
    assert not errors
    study = optuna.load_study(study_name=ref.name, storage=ref.storage)
    assert study.best_trial.number == second.number
    assert _kept(study, key) == [f"trial-{second.number}"]  # nothing staged left behind
    assert (trial_model_dir(ref.models, key, second.number) / "model.json").read_text() \
        == "second"


def _catch(errors: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as err:  # noqa: BLE001 - reported by the test
        errors.append(err)
