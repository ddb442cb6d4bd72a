"""Divergence is not success, and a poor model is not a divergence.

A Lightning callback stops a trial whose loss is not finite or has exploded (validation loss
over 10 x chance level, ln(classes): a model confidently wrong): that trial ends FAIL. It also
remembers how many classes each validation predicted. A trial whose best weights predict a
single class trained without numerical failure: it ends COMPLETE with its real (low) score,
so Optuna's sampler learns from it, and its outcome line says "single-class predictions at
step N". The registry, not the sweep, keeps such a model out (`registry.refuse_single_class`,
tasks/register.py)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

REASON_TAG = "sweepflow.fail_reason"  # on the trial's MLflow run
NOTE_TAG = "sweepflow.note"  # e.g. single-class predictions, on a trial that completed
EXPLODED = 10  # a validation loss this many times chance level (ln classes) has diverged


class Diverged(RuntimeError):
    """The training or validation loss is not finite."""


class DivergenceGuard(Callback):
    def __init__(self) -> None:
        self.classes_at: dict[int, int] = {}  # global step of a validation -> classes predicted
        self._seen: set[int] = set()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise Diverged(f"training loss is {float(loss)} at step {trainer.global_step} "
                           "(diverged: try a lower learning rate)")

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule
                                  ) -> None:
        self._seen = set()

    def on_validation_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:  # multi-label: label sets
            self._seen.update(map(tuple, outputs.unique(dim=0).tolist()))
        elif isinstance(outputs, torch.Tensor):
            self._seen.update(outputs.unique().tolist())

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        chance = math.log(max(2, int(getattr(module.model.config, "num_labels", 2))))
        if loss is not None and not float(loss) <= EXPLODED * chance:  # also NaN, inf
            raise Diverged(f"validation loss {float(loss):.4g} at step {trainer.global_step} "
                           f"is not finite or far above chance level ({chance:.2f}): the "
                           "training diverged; try a lower learning rate")
        self.classes_at[trainer.global_step] = len(self._seen)

    def single_class_note(self, best_step: int) -> str | None:
        """"single-class predictions at step N" when the weights kept at `best_step` label
        the whole validation split with one class, else None."""
        n = self.classes_at.get(best_step)
        if n is not None and n < 2:
            return f"single-class predictions at step {best_step}"
        return None
