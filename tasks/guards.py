"""Divergence is not success: a Lightning callback stops a trial whose loss is not finite
or has exploded (validation loss over 10 x chance level, ln(classes): a model confidently
wrong), and remembers how many classes each validation predicted, so a trial whose best
weights predict a single class ends FAIL instead of COMPLETE (never kept, evaluated or
registered)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

REASON_TAG = "sweepflow.fail_reason"  # on the trial's MLflow run
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
        if isinstance(outputs, torch.Tensor):
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

    def single_class_reason(self, best_step: int) -> str | None:
        """Why the weights kept at `best_step` are degenerate, or None."""
        n = self.classes_at.get(best_step)
        if n is not None and n < 2:
            return (f"its best weights (step {best_step}) predict a single class on the "
                    "validation split (a degenerate model; sweep.fail_single_class)")
        return None
