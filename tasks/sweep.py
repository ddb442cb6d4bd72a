"""Sweep: a persistent Optuna study, a search space from config, and one trial at a time,
each a nested MLflow run whose best weights become the study's best model if they win."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from datetime import datetime
from typing import Any

import lightning.pytorch as pl
import optuna
from optuna_integration import PyTorchLightningPruningCallback
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from sweepflow import tracking
from sweepflow.config import (
    CategoricalParam,
    ConfigError,
    FloatParam,
    IntParam,
    SweepConfig,
    SweepflowConfig,
    TrainConfig,
)
from sweepflow.paths import best_model_dir, store_dir
from tasks.tokenize import TokenizedData, load_tokenizer
from tasks.train import BatchedMlflowLogger, fit

log = logging.getLogger(__name__)


class StudyRef(BaseModel):
    name: str
    storage: str
    direction: str
    metric: str


class TrialResult(BaseModel):
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    params: dict[str, Any]
    steps: int
    seconds: float
    run_id: str
    error: str | None = None


def study_storage() -> str:
    path = store_dir() / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_sampler(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(cfg), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, cfg.n_trials // 3))


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


def make_pruner(cfg: SweepConfig, steps: int | None = None) -> optuna.pruners.BasePruner:
    """The configured pruner. `steps` (optimizer steps of one full trial) turns the warm-up
    share into steps: successive halving's first rung and hyperband's resources."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.pruner_warmup_steps
        )
    if cfg.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            cfg.pruner_percentile, n_startup_trials=cfg.startup_trials,
            n_warmup_steps=cfg.pruner_warmup_steps,
        )
    first_rung = max(1, warmup_steps(cfg, steps or 0))
    if cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_rung, reduction_factor=cfg.pruner_reduction_factor)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first_rung, max_resource=steps or "auto",
            reduction_factor=cfg.pruner_reduction_factor)
    return optuna.pruners.NopPruner()


def warmup_steps(cfg: SweepConfig, steps: int) -> int:
    """Optimizer steps before a trial of `steps` may be pruned: the later of the two settings."""
    return max(cfg.pruner_warmup_steps, math.ceil(cfg.pruner_warmup * steps))


def trial_steps(train: TrainConfig, train_rows: int) -> int:
    """Optimizer steps of a trial that runs to the end (as Lightning counts them)."""
    steps = math.ceil(train_rows / train.batch_size) * train.max_epochs
    return min(steps, train.max_steps) if train.max_steps > 0 else steps


SIGNAL_ATTR = "pruning_signal"  # study user attribute: what its trials report to the pruner


def pruning_signal(cfg: SweepConfig) -> str:
    """What each validation reports to the pruner (the study's intermediate values): the
    metric, or val/loss, negated ("-val/loss") when the study maximizes."""
    if cfg.pruner_signal == "metric":
        return cfg.metric
    return "-val/loss" if cfg.direction == "maximize" else "val/loss"


def study_name(config: SweepflowConfig) -> str:
    if config.sweep.continue_study:
        return config.study_name
    return f"{config.study_name}-{datetime.now():%Y%m%d-%H%M%S}"


def create_study(config: SweepflowConfig, name: str | None = None) -> StudyRef:
    """Create the study, or load it when it exists: a re-run continues it."""
    ref = StudyRef(name=name or study_name(config), storage=study_storage(),
                   direction=config.sweep.direction, metric=config.sweep.metric)
    study = optuna.create_study(study_name=ref.name, storage=ref.storage,
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
    storage = optuna.storages.get_storage(ref.storage)
    n = len(storage.get_all_trials(storage.get_study_id_from_name(ref.name), deepcopy=False))
    return optuna.load_study(study_name=ref.name, storage=storage,
                             sampler=make_sampler(config.sweep, config.seed + n),
                             pruner=make_pruner(config.sweep, steps))


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


class StepPruning(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback, reporting at every validation (step = optimizer
    step, not epoch) and stopping the trainer instead of raising inside it.

    `sweep.pruner_signal: loss` reports val/loss instead of sweep.metric: smooth from the
    first validation, where macro-F1 of a barely trained model is noise. It is negated when
    the study maximizes, so the pruner compares in the study's direction. The pruner is
    consulted only after the warm-up: `pruner_warmup_steps`, or `pruner_warmup` as a share
    of this trial's optimizer steps, whichever is later, and never at the last validation
    (the steps are spent; pruning then would only throw the finished trial away)."""

    def __init__(self, trial: optuna.Trial, cfg: SweepConfig) -> None:
        signal = pruning_signal(cfg)
        super().__init__(trial, signal.removeprefix("-"))
        self.sign = -1.0 if signal.startswith("-") else 1.0
        self.cfg = cfg
        self.hold_until = cfg.pruner_warmup_steps
        self.pruned_at: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.hold_until = warmup_steps(self.cfg, trainer.estimated_stepping_batches)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None:
            return
        step = trainer.global_step
        self._trial.report(self.sign * float(score), step=step)
        if step < self.hold_until or step >= trainer.estimated_stepping_batches:
            return  # still warming up, or the trial is done: pruning would only discard it
        if self._trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True


def save_if_best(study: optuna.Study, result: TrialResult, module: Any, state: dict,
                 tokens: TokenizedData) -> bool:
    """Keep the study's best weights on disk (atomically); trials that lose leave no files."""
    target = best_model_dir(study.study_name)
    info = target / "trial.json"
    if info.is_file():
        current = json.loads(info.read_text())["value"]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        if (result.value or 0) <= current if maximize else (result.value or 0) >= current:
            return False
    module.model.load_state_dict(state)
    tmp = target.with_name("best.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.model.save_pretrained(tmp)
    load_tokenizer(tokens.model_path).save_pretrained(tmp)
    (tmp / "trial.json").write_text(json.dumps({"number": result.number, "value": result.value,
                                                "params": result.params,
                                                "run_id": result.run_id,
                                                "data_digest": tokens.data.digest}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return True


def run_trial(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
              parent_run_id: str | None) -> TrialResult:
    """Ask the study for a trial, train it in a nested MLflow run, tell the study the outcome."""
    study = load_study(ref, config, trial_steps(config.train, tokens.data.sizes["train"]))
    trial = study.ask()
    params = suggest(trial, config.sweep)
    start = time.perf_counter()
    try:
        return _train_trial(config, tokens, ref, study, trial, params, parent_run_id, start)
    except TrialFailed as err:
        return TrialResult(number=trial.number, state="failed", value=None, params=params,
                           steps=0, seconds=time.perf_counter() - start, run_id=err.run_id,
                           error=str(err))


def _train_trial(config: SweepflowConfig, tokens: TokenizedData, ref: StudyRef,
                 study: optuna.Study, trial: optuna.Trial, params: dict[str, Any],
                 parent_run_id: str | None, start: float) -> TrialResult:
    train_cfg = config.train.model_copy(update=params)
    tags = {"optuna.study": ref.name, "optuna.trial_number": str(trial.number)}
    with tracking.managed_run(config, f"trial-{trial.number}", tags, parent_run_id) as run_id:
        client = tracking.MlflowClient(tracking.tracking_uri(config))
        client.log_batch(run_id, params=[tracking.Param(k, str(v)) for k, v in params.items()])
        buffer = tracking.MetricBuffer(tracking.tracking_uri(config), run_id)
        pruning = StepPruning(trial, config.sweep)
        mode = "max" if ref.direction == "maximize" else "min"
        try:
            module, fitted = fit(tokens, train_cfg, config.seed, ref.metric, mode, [pruning],
                                 BatchedMlflowLogger(buffer))
        except Exception as err:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            client.set_tag(run_id, "optuna.state", "failed")
            raise TrialFailed(trial.number, run_id, err) from err
        except BaseException:  # Ctrl-C: the trial must not stay RUNNING in the study either
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            client.set_tag(run_id, "optuna.state", "interrupted")
            raise
        state = "pruned" if pruning.pruned_at is not None else "complete"
        if fitted.best_value is None:
            state = "failed"
        result = TrialResult(number=trial.number, state=state, value=fitted.best_value,
                             params=params, steps=fitted.steps,
                             seconds=time.perf_counter() - start, run_id=run_id)
        if state == "complete":
            study.tell(trial, fitted.best_value)
            if save_if_best(study, result, module, fitted.state, tokens):
                client.set_tag(run_id, "optuna.best_so_far", "true")
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if state == "pruned"
                       else optuna.trial.TrialState.FAIL)
        client.log_batch(run_id, tags=[tracking.RunTag("optuna.state", state),
                                       tracking.RunTag("optuna.steps", str(result.steps))])
    return result


class TrialFailed(RuntimeError):
    def __init__(self, number: int, run_id: str, err: Exception) -> None:
        super().__init__(f"trial {number} failed: {type(err).__name__}: {err}")
        self.number, self.run_id = number, run_id


@task(name="create-study")
def create_study_task(config: SweepflowConfig) -> StudyRef:
    ref = create_study(config)
    get_run_logger().info("Optuna study '%s' in %s", ref.name, ref.storage)
    return ref


@task(name="train-trial", cache_policy=NO_CACHE)
def run_trial_task(config: SweepflowConfig, tokens: TokenizedData, study: StudyRef,
                   parent_run_id: str | None) -> TrialResult:
    result = run_trial(config, tokens, study, parent_run_id)
    value = "-" if result.value is None else f"{result.value:.4f}"
    get_run_logger().info("trial %d %s: %s=%s after %d steps, params %s", result.number,
                          result.state, study.metric, value, result.steps, result.params)
    return result
