"""Pruning: the configured Optuna pruner, and a Lightning callback that reports each
validation to the trial and stops the trainer when the pruner says so.

Optuna's public trial API only (`trial.report`, `trial.should_prune`): optuna-integration's
Lightning callback reports once per epoch and raises inside the trainer, while a trial here
validates several times per epoch and keeps its best weights when it is pruned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from typing import Any

import lightning.pytorch as pl
import optuna
from lightning.pytorch.callbacks import Callback
from optuna.trial import FrozenTrial, TrialState

from sweepflow.config import SweepConfig, TrainConfig

SIGNAL_ATTR = "pruning_signal"  # study user attribute: what its trials report to the pruner
BASIS_ATTR = "basis"  # trial user attribute: what the trial was trained on (sweep.basis())


def warmup_steps(cfg: SweepConfig, steps: int) -> int:
    """Optimizer steps before a trial of `steps` may be pruned: the later of the two settings."""
    return max(cfg.pruner_warmup_steps, math.ceil(cfg.pruner_warmup * steps))


def trial_steps(train: TrainConfig, train_rows: int) -> int:
    """Optimizer steps of a trial that runs to the end (as Lightning counts them)."""
    steps = math.ceil(train_rows / train.batch_size) * train.max_epochs
    return min(steps, train.max_steps) if train.max_steps > 0 else steps


def pruning_signal(cfg: SweepConfig) -> str:
    """What each validation reports to the pruner (the study's intermediate values): the
    metric, or val/loss, negated ("-val/loss") when the study maximizes."""
    if cfg.pruner_signal == "metric":
        return cfg.metric
    return "-val/loss" if cfg.direction == "maximize" else "val/loss"


class _BasisTrials:
    """A study storage that shows only the trials trained on one basis (the rest delegated)."""

    def __init__(self, storage: Any, key: str | None) -> None:
        self._storage, self._key = storage, key

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if t.user_attrs.get(BASIS_ATTR) == self._key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


class PerBasisPruner(optuna.pruners.BasePruner):
    """The configured pruner, judging a trial only against trials trained on the same data,
    model and tokenization: a study continued on grown data never prunes tonight's trials
    against last night's (other step counts, other validation rows). The pruner sees the
    study through a storage view, so every pruner (hyperband's bracket studies included)
    reads only that basis' trials."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        view = copy.copy(study)
        view._storage = _BasisTrials(study._storage, trial.user_attrs.get(BASIS_ATTR))
        return self.inner.prune(view, trial)


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


def is_last_validation(trainer: pl.Trainer, step: int) -> bool:
    """No validation comes after this one: the next would fall past the trial's last step.
    With 3 validations per epoch of 250 steps they come at steps 83, 166 and 249, so the
    last one is not at the last step (the default run once pruned a trial at 249 of 250)."""
    interval = trainer.val_check_batch
    if not isinstance(interval, int | float) or math.isinf(interval):
        interval = 1  # validation once per epoch: its end is the last step
    return step + interval > trainer.estimated_stepping_batches


class StepPruning(Callback):
    """Reports the pruning signal at every validation (step = optimizer step) and stops the
    trainer when the pruner says so, after the warm-up (`pruner_warmup_steps`, or
    `pruner_warmup` as a share of this trial's steps, whichever is later), not before the
    trial's `pruner_min_validations`-th validation (at 1 epoch x 3 checks the first one ranks
    barely trained models: the high learning rates overtake later) and never at the last
    validation (the steps are spent; pruning then would only discard the trial)."""

    def __init__(self, trial: optuna.Trial, cfg: SweepConfig) -> None:
        signal = pruning_signal(cfg)
        self.trial = trial
        self.cfg = cfg
        self.monitor = signal.removeprefix("-")
        self.sign = -1.0 if signal.startswith("-") else 1.0
        self.hold_until = cfg.pruner_warmup_steps
        self.pruned_at: int | None = None
        self.reports = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hold_until = warmup_steps(self.cfg, trainer.estimated_stepping_batches)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None:
            return
        step = trainer.global_step
        self.trial.report(self.sign * float(score), step=step)
        self.reports += 1
        early = step < self.hold_until or self.reports < self.cfg.pruner_min_validations
        if early or is_last_validation(trainer, step):
            return
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True
