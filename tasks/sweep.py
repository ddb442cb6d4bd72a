"""Sweep: a persistent Optuna study, a search space from config, and one trial at a time,
each a nested MLflow run.

The best model is tied to what it was trained on. Every trial records its training basis
(data digest, base model, tokenization) as an Optuna user attribute, and the model kept for a
basis is the one of the trial Optuna ranks best among the complete trials on that basis. So a
study continued on other data (another file, another `max_train_samples`) starts a new best for
that data instead of handing on a model trained on the old one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.loggers import MLFlowLogger
from optuna.exceptions import UpdateFinishedTrialError
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from sweepflow.tasks.guards import NOTE_TAG, REASON_TAG, DivergenceGuard
from sweepflow.tasks.pruning import (
    BASIS_ATTR,
    SIGNAL_ATTR,
    PerBasisPruner,
    StepPruning,
    make_pruner,
    pruning_signal,
    trial_steps,
)
from sweepflow.tasks.tokenize import TokenizedData, load_tokenizer
from sweepflow.tasks.train import fit

from sweepflow import cache, interrupts, owner, storage, tracking
from sweepflow.config import (
    CategoricalParam,
    ConfigError,
    FloatParam,
    IntParam,
    SweepConfig,
    SweepflowConfig,
)
from sweepflow.console import report
from sweepflow.hashing import hash_json
from sweepflow.paths import models_dir, shared_dir

log = logging.getLogger(__name__)

DIGEST_ATTR = "data_digest"
SEED_TAG = "sweepflow.train_seed"  # on the trial's MLflow run: the seed it trained with
RETRIED = "failed_trial"  # system attr of a retry that Optuna queued for a dead worker's trial


class StudyRef(BaseModel):
    name: str
    storage: str
    direction: str
    metric: str
    models: str  # the folder of the study's kept models (store.shared_dir/models/<name>)


class TrialResult(BaseModel):
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    params: dict[str, Any]
    steps: int
    seconds: float
    run_id: str
    error: str | None = None
    note: str | None = None  # e.g. "single-class predictions at step 4" (still complete)


def study_storage(config: SweepflowConfig | None = None) -> str:
    """The study's storage URL: sweep.storage, else SQLite in the store (sweepflow/storage.py)."""
    return storage.storage_url(config.sweep if config is not None else None)


def make_sampler(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(cfg), seed=seed)
    startup = cfg.sampler_startup
    if cfg.sampler == "gp":  # Gaussian-process BO; running trials enter its acquisition, so
        # parallel asks spread out
        return PrunedAwareGPSampler(seed=seed, n_startup_trials=startup,
                                    scores_comparable=cfg.pruner_signal == "metric")
    # constant_liar: a trial still running (another worker's) counts as a poor result, so
    # workers asking at the same time do not all sample next to the same best trial. With
    # one worker no other trial runs and nothing changes.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                      constant_liar=True)


class PrunedAwareGPSampler(optuna.samplers.GPSampler):
    """Optuna's GPSampler, shown each pruned trial as complete at a pessimistic score: its last
    reported value (when the pruner saw the metric itself), and never above the worst complete
    trial. Optuna's GP fits complete trials only, so without this a pruned point is unseen and
    asked again (measured: the same pruned point 3 times in a row, docs/performance.md); TPE
    ranks pruned trials below complete ones in the same way."""

    def __init__(self, *, scores_comparable: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._scores_comparable = scores_comparable

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(_PrunedAsComplete(study, self._scores_comparable),
                                       trial, search_space)


class _PrunedAsComplete:
    """A study as GPSampler reads its trials: pruned ones listed as complete (see above); all
    else, writes included, goes to the study itself."""

    def __init__(self, study: optuna.Study, scores_comparable: bool) -> None:
        self._study, self._comparable = study, scores_comparable

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
                    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        if not complete or (states is not None and TrialState.COMPLETE not in states):
            return [t for t in trials if states is None or t.state in states]
        maximize = self._study.direction == StudyDirection.MAXIMIZE
        worst = min(complete) if maximize else max(complete)
        shown = []
        for t in trials:
            if t.state == TrialState.PRUNED and t.intermediate_values:
                last = t.intermediate_values[max(t.intermediate_values)]
                score = worst if not (self._comparable and math.isfinite(last)) else (
                    min(last, worst) if maximize else max(last, worst))
                shown.append(optuna.trial.create_trial(
                    params=t.params, distributions=t.distributions, value=score))
            elif states is None or t.state in states:
                shown.append(t)
        return shown


def grid_space(cfg: SweepConfig) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, p in cfg.space.items():
        if isinstance(p, CategoricalParam):
            grid[name] = list(p.choices)
        elif isinstance(p, IntParam):
            grid[name] = list(range(p.low, p.high + 1, p.step))
        elif p.step is not None:
            n = int(round((p.high - p.low) / p.step))
            grid[name] = [p.low + i * p.step for i in range(n + 1)]
        else:
            raise ValueError(f"sweep.space.{name}: the grid sampler needs a 'step' for floats")
    return grid


def study_name(config: SweepflowConfig) -> str:
    if config.sweep.continue_study:
        return config.study_name
    return f"{config.study_name}-{datetime.now():%Y%m%d-%H%M%S}"


def create_study(config: SweepflowConfig, name: str | None = None) -> StudyRef:
    """Create the study, or load it when it exists: a re-run continues it."""
    name = name or study_name(config)
    models = models_dir(shared_dir(config.store.shared_dir), name)
    ref = StudyRef(name=name, storage=study_storage(config), direction=config.sweep.direction,
                   metric=config.sweep.metric, models=str(models))
    shared = storage.open_storage(ref.storage, config.sweep)
    with storage.study_lock(shared, ref.name):  # two sweeps started at once: one study
        study = optuna.create_study(study_name=ref.name, storage=shared,
                                    direction=ref.direction, load_if_exists=True)
    signal = pruning_signal(config.sweep)
    # Studies from before pruner_signal existed reported sweep.metric.
    reported = study.user_attrs.get(SIGNAL_ATTR, config.sweep.metric if study.trials else None)
    if reported not in (None, signal):
        raise ConfigError(
            f"sweep.pruner_signal={config.sweep.pruner_signal}: study '{ref.name}' "
            f"({ref.storage}) has trials that reported {reported} to the pruner, this run "
            f"would report {signal}, and the pruner would compare the two. Keep the study's "
            "signal, or start a new study (sweep.study_name=... or sweep.continue_study=false).")
    study.set_user_attr(SIGNAL_ATTR, signal)
    return ref


def load_study(ref: StudyRef, config: SweepflowConfig, steps: int | None = None
               ) -> optuna.Study:
    """Load the study with a sampler seeded by (seed, trials so far): every trial is asked
    from a fresh process-independent state, and a re-run with the same seed repeats.
    `steps`: a full trial's optimizer steps, for the pruner's warm-up share."""
    opened = storage.trial_cache(storage.open_storage(ref.storage, config.sweep))
    n = len(opened.get_all_trials(opened.get_study_id_from_name(ref.name), deepcopy=False))
    return optuna.load_study(study_name=ref.name, storage=opened,
                             sampler=make_sampler(config.sweep, config.seed + n),
                             pruner=PerBasisPruner(make_pruner(config.sweep, steps)))


def suggest(trial: optuna.Trial, cfg: SweepConfig) -> dict[str, Any]:
    """The one place where the config's search space becomes trial.suggest_* calls."""
    params: dict[str, Any] = {}
    for name, p in cfg.space.items():
        if isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        else:
            params[name] = trial.suggest_categorical(name, p.choices)
    return params


def basis(tokens: TokenizedData) -> str:
    """What makes two trials' models comparable: the same splits (data digest), the same base
    model and the same tokenization."""
    key = {"data": tokens.data.digest, "model": tokens.model_path,
           "max_length": tokens.max_length}
    if tokens.long is not None:  # other truncation or chunks: other models
        key["long"] = tokens.long.__dict__
    return hash_json(key)[:12]


def rank(study: optuna.Study, value: float, number: int) -> tuple[float, int]:
    """The one ordering of trials (higher is better): Optuna's, where the first of equal
    values (the lowest number) is the best."""
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    return (sign * value, -number)


def best_on_basis(study: optuna.Study, key: str, trials: list[FrozenTrial] | None = None
                  ) -> FrozenTrial | None:
    """Optuna's best complete trial among those trained on `key` (the first of equals).
    `trials`: the study's trials as already read (one read serves several decisions)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    complete = [t for t in trials
                if t.state == TrialState.COMPLETE and t.user_attrs.get(BASIS_ATTR) == key]
    if not complete:
        return None
    return max(complete, key=lambda t: rank(study, t.value, t.number))


WARM_ATTR = "warm_start_from"  # trial user attribute: the basis whose best params it re-tries


def previous_basis(study: optuna.Study, key: str) -> str | None:
    """The training basis of the study's latest complete trial on other data, or None when
    this basis already has trials (it was warm-started, or continues)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.user_attrs.get(BASIS_ATTR) == key or t.state == TrialState.WAITING
           for t in trials):
        return None
    other = [t for t in trials if t.state == TrialState.COMPLETE
             and t.user_attrs.get(BASIS_ATTR) not in (None, key)]
    return max(other, key=lambda t: t.number).user_attrs[BASIS_ATTR] if other else None


def warm_start(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef
               ) -> list[FrozenTrial]:
    """On a new data version, enqueue the params of the previous version's best
    `sweep.warm_start` trials, so the night's first trials are the known-good ones."""
    if config.sweep.warm_start == 0:
        return []
    study = load_study(ref, config)
    key = basis(tokens)
    shared = storage.open_storage(ref.storage, config.sweep)
    with storage.study_lock(shared, ref.name):  # two workers: one warm start
        previous = previous_basis(study, key)
        if previous is None:
            return []
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.user_attrs.get(BASIS_ATTR) == previous]
        best = sorted(complete, key=lambda t: rank(study, t.value, t.number), reverse=True)
        best = best[:min(config.sweep.warm_start, config.sweep.n_trials)]
        for trial in best:
            params = {k: v for k, v in trial.params.items() if k in config.sweep.space}
            # Not skip_if_exists: yesterday's trial with these params is what it matches.
            study.enqueue_trial(params, user_attrs={WARM_ATTR: f"{previous}#{trial.number}"})
    return best


def trial_model_dir(models: str | Path, key: str, number: int) -> Path:
    """The kept model of trial `number` on basis `key`, under a study's `models` folder."""
    return Path(models) / key / f"trial-{number}"


def keep_if_best(study: optuna.Study, key: str, result: TrialResult, module: Any,
                 state: dict, tokens: TokenizedData, models: str | Path) -> bool:
    """Save a complete trial's best weights when it ranks above the basis' best so far (ties
    go to the lower trial number, as in Optuna). Called under the study lock before the study
    is told, so the trial that Optuna calls best always has its folder."""
    return keep_if_better(study, key, result, models,
                          model_writer(study.study_name, key, result, module, state, tokens))


def keep_if_better(study: optuna.Study, key: str, result: TrialResult, models: str | Path,
                   write: Callable[[Path], None], trials: list[FrozenTrial] | None = None,
                   staged: Path | Exception | None = None) -> bool:
    """keep_if_best with the model's writer handed in (`write(folder)` fills the folder that
    is then published by rename): the decision is the study's, the bytes the caller's.
    `trials`: the study's trials as read; `staged`: the model already written beside its
    folder by stage_model (or the error that writing it raised), only renamed here."""
    if not beats_kept(study, key, result, models, trials):
        return False
    target = trial_model_dir(models, key, result.number)
    if isinstance(staged, Exception):
        raise staged
    if staged is None:
        cache.publish(target, write, replace=True)
    else:
        cache.commit(staged, target, replace=True)
    return True


def beats_kept(study: optuna.Study, key: str, result: TrialResult, models: str | Path,
               trials: list[FrozenTrial] | None = None) -> bool:
    """Whether a complete result's model is to be kept: it ranks above the basis' best so far
    (ties go to the lower trial number, as in Optuna), or that best has no kept model."""
    best = best_on_basis(study, key, trials)
    return (best is None or not trial_model_dir(models, key, best.number).exists()
            or rank(study, result.value, result.number) > rank(study, best.value, best.number))


def stage_model(study: optuna.Study, key: str, result: TrialResult, models: str | Path,
                write: Callable[[Path], None]) -> Path | Exception | None:
    """Before the study lock: read the study (the process' trial cache, so the read under the
    lock fetches only what changed since) and, if the result would be kept as things stand,
    write and hash its model beside its folder (cache.stage), the slow part of keeping it.
    None if it would not be kept; the error if writing failed (raised if it is kept)."""
    trials = study.get_trials(deepcopy=False)
    if result.state != "complete" or not beats_kept(study, key, result, models, trials):
        return None
    try:
        return cache.stage(trial_model_dir(models, key, result.number), write)
    except Exception as err:  # noqa: BLE001 - raised under the lock if the model is kept
        return err


def model_writer(study_name: str, key: str, result: TrialResult, module: Any, state: dict,
                 tokens: TokenizedData) -> Callable[[Path], None]:
    """What keeps a trial's model: its best weights, the tokenizer and trial.json."""
    def build(tmp: Path) -> None:
        module.model.load_state_dict(state)
        try:
            module.model.save_pretrained(tmp)
        except Exception as err:  # safetensors reports a full disk as SafetensorError
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)
                          ) from err
        load_tokenizer(tokens.model_path).save_pretrained(tmp)
        (tmp / "trial.json").write_text(json.dumps({
            "study": study_name, "number": result.number, "value": result.value,
            "params": result.params, "run_id": result.run_id, "basis": key,
            "data_digest": tokens.data.digest}))

    return build


def drop_beaten_models(study: optuna.Study, key: str, models: str | Path,
                       trials: list[FrozenTrial] | None = None) -> None:
    """Remove the folders of finished trials that are not the basis' best (the folder of a
    trial still running, e.g. in another worker, is left alone). `trials`: the study's
    trials as read (else read now)."""
    folder = Path(models) / key
    if not folder.is_dir():
        return
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    best = best_on_basis(study, key, trials)
    finished = {t.number for t in trials if t.state.is_finished()}
    for path in folder.glob("trial-*"):
        number = int(path.name.removeprefix("trial-"))
        if number in finished and (best is None or number != best.number):
            shutil.rmtree(path, ignore_errors=True)


def run_trial(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
              tracker: tracking.Tracker) -> TrialResult:
    """Ask the study for a trial, train it in an MLflow run (a child of the tracker's run,
    if any), tell the study the outcome."""
    study = load_study(ref, config, trial_steps(config.train, tokens.data.sizes["train"]))
    return run_asked(config, tokens, ref, study, study.ask(), tracker)


def run_asked(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
              study: optuna.Study, trial: optuna.Trial, tracker: tracking.Tracker,
              tags: dict[str, str] | None = None) -> TrialResult:
    """Train an asked trial (its heartbeat recorded while it runs, on a shared storage)."""
    shared = storage.open_storage(ref.storage, config.sweep)
    with storage.heartbeat(shared, ref.name, trial.number):
        return _run_asked(config, tokens, ref, study, trial, tracker, tags or {})


def _run_asked(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
               study: optuna.Study, trial: optuna.Trial, tracker: tracking.Tracker,
               tags: dict[str, str]) -> TrialResult:
    key = basis(tokens)
    start = time.perf_counter()
    try:
        trial.set_user_attr(owner.OWNER_ATTR, owner.me().attr())  # reaped if this dies
        interrupts.doing(f"trial {trial.number} of study {ref.name}")
        trial.set_user_attr(BASIS_ATTR, key)
        trial.set_user_attr(DIGEST_ATTR, tokens.data.digest)
        params = suggest(trial, config.sweep)
        seed = trial_seed(config, study, trial)
    except BaseException:  # e.g. a search space Optuna rejects: never left RUNNING
        study.tell(trial, state=TrialState.FAIL)
        raise
    try:
        return _train_trial(config, tokens, ref, study, trial, params, seed, tracker, start,
                            tags)
    except (TrialFailed, TrialTaken) as err:
        return TrialResult(number=trial.number, state="failed", value=None, params=params,
                           steps=0, seconds=time.perf_counter() - start, run_id=err.run_id,
                           error=str(err))


def _train_trial(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
                 study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], seed: int,
                 tracker: tracking.Tracker, start: float, extra_tags: dict[str, str]
                 ) -> TrialResult:
    train_cfg = config.train.model_copy(update=params)
    tags = {"optuna.study": ref.name, "optuna.trial_number": str(trial.number),
            "data.digest": tokens.data.digest, **extra_tags}
    end_tags: dict[str, str] = {}  # logged with the run's cost when it closes
    with tracker.start_run(f"trial-{trial.number}", tags, end_tags) as run:
        run_id = run.run_id
        run.log(params=params, tags={SEED_TAG: str(seed)})
        pruning, guard = StepPruning(trial, config.sweep), DivergenceGuard()
        mode = "max" if ref.direction == "maximize" else "min"
        logger = trial_logger(run)
        try:
            module, fitted = fit(tokens, train_cfg, seed, ref.metric, mode,
                                 [pruning, guard], logger)
        except Exception as err:
            with lost_if_out_of_reach(trial.number, run_id, config.sweep, err):
                if isinstance(err, UpdateFinishedTrialError) or not still_running(study, trial):
                    raise TrialTaken(trial.number, run_id) from err  # failed on its heartbeat
                trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:1000])
                study.tell(trial, state=TrialState.FAIL)
            run.log(tags={"optuna.state": "failed",
                          REASON_TAG: f"{type(err).__name__}: {err}"[:4000]})
            raise TrialFailed(trial.number, run_id, err) from err
        except BaseException:  # Ctrl-C: the trial must not stay RUNNING in the study either
            if still_running(study, trial):
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
            run.log(tags={"optuna.state": "interrupted"})
            raise
        state = "pruned" if pruning.pruned_at is not None else "complete"
        if fitted.best_value is None:
            state = "failed"
        note = guard.single_class_note(fitted.best_step)  # a poor model, not a failure
        if note:
            trial.set_user_attr("note", note)
        result = TrialResult(number=trial.number, state=state, value=fitted.best_value,
                             params=params, steps=fitted.steps,
                             seconds=time.perf_counter() - start, run_id=run_id, note=note)
        with lost_if_out_of_reach(trial.number, run_id, config.sweep):
            tell(study, trial, result, module, fitted.state, tokens, ref.models,
                 storage.open_storage(ref.storage, config.sweep))
        end_tags.update({"optuna.state": state, "optuna.steps": str(result.steps),
                         **({NOTE_TAG: note} if note else {})})
    return result


def trial_seed(config: SweepflowConfig, study: optuna.Study, trial: optuna.Trial) -> int:
    """The seed a trial trains with: `seed`, or with `sweep.seed_per_trial` seed + the trial's
    number, that of the trial it retries for a retry (same params, same draw)."""
    if not config.sweep.seed_per_trial:
        return config.seed
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    return config.seed + frozen.system_attrs.get(RETRIED, trial.number)


class TrialLogger(MLFlowLogger):
    """Lightning's MLflow logger on a trial's run, whose end (status, cost) the Tracker
    logs: Lightning's `finalize` would close the run FINISHED before the study is told."""

    def finalize(self, status: str = "success") -> None:
        return None


def trial_logger(run: tracking.Tracker) -> TrialLogger:
    """The logger of a trial's run. Synchronous: one batch per validation (train/loss is
    logged per epoch), a few requests per trial; MLflow's async queue would add a ~1 s
    wait per trial for its logging thread to stop (a 1 s queue poll) when the run ends."""
    return TrialLogger(tracking_uri=run.uri, run_id=run.run_id, synchronous=True)


def tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult, module: Any,
         state: dict | None, tokens: TokenizedData, models: str | Path, shared: Any = None
         ) -> None:
    """Tell the study the outcome; a complete trial's model is saved first (under `models`,
    the study's folder) if it is the best on its basis, and the models it beat are removed
    after (tell_result). `shared`: the opened storage (open_storage), whose study lock
    serialises this across workers."""
    key = basis(tokens)
    tell_result(study, trial, result, key, models, shared,
                model_writer(study.study_name, key, result, module, state, tokens))


def tell_result(study: optuna.Study, trial: optuna.Trial, result: TrialResult, key: str,
                models: str | Path, shared: Any, write: Callable[[Path], None]) -> None:
    """The hand-off of a finished trial on basis `key`: refuse it (TrialTaken) if the study no
    longer holds it RUNNING (failed on its heartbeat while this worker was cut off, and
    retried), else keep its model (`write`) if it is the basis' best, tell the study, and drop
    the models it beat. The decision is made under the study lock; writing a model that may
    be kept is done before it (stage_model), only its rename under it."""
    staged = stage_model(study, key, result, models, write)
    try:
        # Keep, tell and drop under the study's lock: two workers finishing at once agree
        # with Optuna on the best (ties included) and never remove each other's kept model;
        # the reapers fail stale trials under the same lock, so "still running" holds until
        # told.
        with storage.study_lock(shared, study.study_name):
            _hand_off(study, trial, result, key, models, write, staged)
    finally:
        if isinstance(staged, Path):  # not kept (or kept: renamed away, nothing to remove)
            shutil.rmtree(staged, ignore_errors=True)


def _hand_off(study: optuna.Study, trial: optuna.Trial, result: TrialResult, key: str,
              models: str | Path, write: Callable[[Path], None],
              staged: Path | Exception | None) -> None:
    """tell_result's part under the lock, on one read of the study's trials (the trial cache
    re-reads every unfinished trial, so this trial's state is the study's now)."""
    trials = study.get_trials(deepcopy=False)
    if not still_running(study, trial, trials):
        raise TrialTaken(trial.number, result.run_id)
    if result.state != "complete":
        if result.state == "failed":  # a live worker's failure (see team.close_stale_runs)
            trial.set_user_attr("fail_reason", result.error or "no validation score")
        _tell_or_taken(study, trial, result, state=TrialState.PRUNED
                       if result.state == "pruned" else TrialState.FAIL)
        return
    try:
        kept = keep_if_better(study, key, result, models, write, trials, staged)
    except BaseException as err:
        if storage.out_of_reach(err):  # nothing to tell it with (lost_if_out_of_reach)
            raise
        trial.set_user_attr("fail_reason", f"model not kept: {type(err).__name__}: {err}"
                            [:1000])
        study.tell(trial, state=TrialState.FAIL)
        raise
    try:
        told = _tell_or_taken(study, trial, result, values=result.value)
    except Exception:  # failed by a reaper that did not take the lock, or out of reach
        if kept:
            shutil.rmtree(trial_model_dir(models, key, trial.number), ignore_errors=True)
        raise
    if kept:
        drop_beaten_models(study, key, models,
                           [t for t in trials if t.number != told.number] + [told])


def _tell_or_taken(study: optuna.Study, trial: optuna.Trial, result: TrialResult,
                   **outcome: Any) -> FrozenTrial:
    try:
        return study.tell(trial, **outcome)
    except UpdateFinishedTrialError as err:
        raise TrialTaken(trial.number, result.run_id) from err


def still_running(study: optuna.Study, trial: optuna.Trial,
                  trials: list[FrozenTrial] | None = None) -> bool:
    """Whether the study still holds the trial as RUNNING: in `trials` (the study's trials
    as just read), else read from the storage now."""
    for seen in trials or ():
        if seen.number == trial.number:
            return seen.state == TrialState.RUNNING
    opened = optuna.storages.get_storage(study._storage)  # noqa: SLF001 - Study has no getter
    number = opened.get_trial_id_from_study_id_trial_number(study._study_id, trial.number)  # noqa: SLF001
    return opened.get_trial(number).state == TrialState.RUNNING


class TrialTaken(tracking.RunKilled):
    """The late result of a trial the study no longer holds as RUNNING: Optuna failed it on
    its heartbeat (its worker was cut off or paused past sweep.grace_period) and queued its
    params again. Refused; the MLflow run ends KILLED with this reason."""

    def __init__(self, number: int, run_id: str) -> None:
        super().__init__(
            f"late result refused: trial {number} was failed on its heartbeat while this "
            "worker was out of reach (network partition, paused process) and its params were "
            "queued again; nothing of this run was told to the study or kept")
        self.number, self.run_id = number, run_id


class TrialOutOfReach(TrialTaken):
    """The study database stayed out of reach (network partition, outage) for longer than
    the connections wait for it (sweep.grace_period): the trial's heartbeat has stopped with
    it, so a reaper fails the trial and its params are retried. This worker walks away
    from it; the MLflow run ends KILLED with this reason."""

    def __init__(self, number: int, run_id: str, grace_period: int, err: BaseException
                 ) -> None:
        reason = storage.out_of_reach(err) or type(err).__name__
        tracking.RunKilled.__init__(
            self, f"trial {number} abandoned: the study database was out of reach for more "
            f"than sweep.grace_period ({grace_period} s; network partition or database "
            f"outage: {reason}); its heartbeat stopped, so it is failed and its params "
            "queued again; nothing of this run was told to the study or kept")
        self.number, self.run_id = number, run_id


@contextmanager
def lost_if_out_of_reach(number: int, run_id: str, sweep: SweepConfig,
                         cause: BaseException | None = None) -> Iterator[None]:
    """Turn "the study database cannot be reached" (in the block, or `cause` already) into
    TrialOutOfReach; other errors pass as they are."""
    if storage.out_of_reach(cause):
        raise TrialOutOfReach(number, run_id, sweep.grace_period, cause) from cause
    try:
        yield
    except TrialTaken:
        raise
    except Exception as err:
        if storage.out_of_reach(err):
            raise TrialOutOfReach(number, run_id, sweep.grace_period, err) from err
        raise


class TrialFailed(RuntimeError):
    def __init__(self, number: int, run_id: str, err: Exception) -> None:
        super().__init__(f"trial {number} failed: {type(err).__name__}: {err}")
        self.number, self.run_id = number, run_id


@task(name="warm-start", cache_policy=NO_CACHE)
def warm_start_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef) -> int:
    best = warm_start(config, tokens, study)
    if best:
        tried = ", ".join(f"#{t.number} ({t.value:.4f})" for t in best)
        report.info(f"warm start: new data version; the first {len(best)} trial(s) re-try "
                    f"the previous version's best params: trials {tried} {study.metric}")
    return len(best)


@task(name="create-study")
def create_study_task(config: SweepflowConfig) -> StudyRef:
    return create_study(config)


def outcome_line(result: TrialResult, metric: str, total_steps: int) -> str:
    """One line per trial: number, outcome, score, steps, time, params."""
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in result.params.items())
    if result.state == "failed":
        return f"trial {result.number} failed after {result.seconds:.0f} s: {result.error}"
    value = "-" if result.value is None else f"{result.value:.4f}"
    where = (f"pruned at step {result.steps} of {total_steps}" if result.state == "pruned"
             else f"complete, {result.steps} steps")
    note = f" ({result.note})" if result.note else ""
    return (f"trial {result.number} {where} in {result.seconds:.0f} s: best {metric} {value}"
            f"{note}  [{params}]")


@task(name="train-trial", cache_policy=NO_CACHE)
def run_trial_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
                   tracker: tracking.Tracker) -> TrialResult:
    result = run_trial(config, tokens, study, tracker)
    total = trial_steps(config.train, tokens.data.sizes["train"])
    report.info(outcome_line(result, study.metric, total))
    return result
