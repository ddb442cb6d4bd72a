"""Train: a LightningModule around AutoModelForSequenceClassification, fed by dynamically
padded batches (shuffled by default, bucketed by length on request: tasks/batching.py); the
best weights are kept in memory."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import Logger
from sweepflow.tasks.batching import MicroBatchCollator, micro_batches, train_batches
from sweepflow.tasks.clean import LABEL
from sweepflow.tasks.multilabel import multi_hot
from sweepflow.tasks.tokenize import TokenizedData, load_tokenized, load_tokenizer
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelExactMatch,
    MultilabelF1Score,
)
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from sweepflow import interrupts
from sweepflow.config import TrainConfig
from sweepflow.fastdropout import speed_up_dropout
from sweepflow.memory import keep_freed_memory
from sweepflow.precision import resolve_precision

log = logging.getLogger(__name__)


def set_threads(num_threads: int | None) -> int:
    """Match torch's intra-op threads to the cores this process may use."""
    n = num_threads or len(os.sched_getaffinity(0))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class Rows(Dataset):
    """Tokenized rows held as Python lists: indexing costs no Arrow round trip."""

    def __init__(self, split: Any) -> None:
        cols = split.to_dict()
        self.input_ids = cols["input_ids"]
        self.attention_mask = cols["attention_mask"]
        self.labels = cols[LABEL]
        inner = getattr(split.features[LABEL], "feature", None)
        if inner is not None:  # multi-label: label-id lists as float multi-hot rows (BCE)
            self.labels = multi_hot(self.labels, inner.num_classes).tolist()
        self.lengths = cols["length"]
        self.docs = cols.get("doc")  # chunks: the text each window comes from

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                "labels": self.labels[i]}


class PairRows(Rows):
    """Sentence pairs: their token types (0 first text, 1 second) go to the model too."""

    def __init__(self, split: Any) -> None:
        super().__init__(split)
        self.token_type_ids = split.to_dict()["token_type_ids"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "token_type_ids": self.token_type_ids[i]}


@functools.lru_cache(maxsize=2)
def load_rows(path: str) -> dict[str, Rows]:
    """All splits in memory, once per process: every trial of a sweep reuses them."""
    dd = load_tokenized(path)
    kind = PairRows if "token_type_ids" in dd["train"].column_names else Rows
    return {split: kind(dd[split]) for split in dd}


def _collate(tokens: TokenizedData) -> DataCollatorWithPadding:
    # Multiples of 8 help GPU tensor cores; on CPU they only add padding (~10% more tokens).
    multiple = 8 if torch.cuda.is_available() else None
    return DataCollatorWithPadding(load_tokenizer(tokens.model_path),
                                   pad_to_multiple_of=multiple)


def train_loader(rows: Rows, tokens: TokenizedData, cfg: TrainConfig, seed: int) -> DataLoader:
    """Batches drawn as `cfg.batching` says (tasks/batching.py), random per epoch from `seed`;
    each one collated as up to `cfg.micro_batches` length-sorted pieces."""
    collate = MicroBatchCollator(_collate(tokens), micro_batches(cfg.micro_batches))
    return DataLoader(rows, collate_fn=collate, **train_batches(rows.lengths, cfg, seed))


def eval_loader(rows: Rows, tokens: TokenizedData, batch_size: int) -> DataLoader:
    """Rows sorted by length (little padding); `loader.sampler` is that order."""
    order = sorted(range(len(rows)), key=rows.lengths.__getitem__)
    return DataLoader(rows, batch_size=batch_size, sampler=order, collate_fn=_collate(tokens))


class TextClassifier(pl.LightningModule):
    def __init__(self, model_path: str, label_names: list[str], cfg: TrainConfig,
                 multi_label: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.multi_label = multi_label
        n = len(label_names)
        # Multi-label: sigmoid outputs and binary cross-entropy (transformers' own loss).
        extra = {"problem_type": "multi_label_classification"} if multi_label else {}
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=n, id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            ignore_mismatched_sizes=True, **extra,
        )
        self.model.train()  # from_pretrained returns eval mode: dropout must be on to train
        if multi_label:  # val/accuracy is the subset accuracy; thresholds 0.5 in the sweep
            self.val_acc = MultilabelExactMatch(num_labels=n)
            self.val_f1 = MultilabelF1Score(num_labels=n, average="macro")
        else:
            self.val_acc = MulticlassAccuracy(num_classes=n)
            self.val_f1 = MulticlassF1Score(num_classes=n, average="macro")

    def on_fit_start(self) -> None:
        if self.cfg.fast_dropout:  # once the model is on its device: CPU only
            speed_up_dropout(self.model)

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
                      _: int) -> torch.Tensor:
        pieces = batch if isinstance(batch, list) else [batch]  # micro-batches of one batch
        rows = sum(len(p["labels"]) for p in pieces)
        # Each piece's mean loss weighted by its rows: the whole batch's mean loss, one backward.
        loss = sum(self.model(**p).loss * (len(p["labels"]) / rows) for p in pieces)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=rows)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        out = self.model(**batch)
        if self.multi_label:  # (rows, labels) 0/1 at probability 0.5
            preds, target = (out.logits > 0).long(), batch["labels"].long()
        else:
            preds, target = out.logits.argmax(-1), batch["labels"]
        self.val_acc.update(preds, target)
        self.val_f1.update(preds, target)
        self.log("val/loss", out.loss, on_epoch=True, batch_size=len(batch["labels"]))
        return preds  # for callbacks (tasks/guards.py counts the classes predicted)

    def on_validation_epoch_end(self) -> None:
        self.log("val/accuracy", self.val_acc.compute())
        self.log("val/f1_macro", self.val_f1.compute())
        self.val_acc.reset()
        self.val_f1.reset()

    def configure_optimizers(self) -> Any:
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        params = [
            {"params": [p for n, p in self.model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": self.cfg.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if n.endswith(no_decay)],
             "weight_decay": 0.0},
        ]
        # Fused AdamW: one kernel for all tensors; on CPU the default is a per-tensor loop
        # that costs a third of a MiniLM step.
        optimizer = torch.optim.AdamW(params, lr=self.cfg.learning_rate,
                                      fused=self.device.type in ("cpu", "cuda"))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.cfg.warmup_ratio * total), total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}


class BestWeights(Callback):
    """Keeps a CPU copy of the weights at the best validation so far: no checkpoint files."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_step = 0
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        better = self.best is None or (value > self.best if self.mode == "max"
                                       else value < self.best)
        if better:
            self.best, self.best_step = value, trainer.global_step
            self.state = {k: v.detach().to("cpu", copy=True)
                          for k, v in module.model.state_dict().items()}


class StopAtSafePoints(Callback):
    """Ctrl-C / SIGTERM during `fit` stop it at a batch boundary, where no logger or callback
    write to the stores is open (sweepflow.interrupts.at_safe_points)."""

    def on_train_batch_start(self, *_: Any) -> None:
        interrupts.safe_point()

    def on_train_batch_end(self, *_: Any) -> None:
        interrupts.safe_point()

    def on_validation_batch_end(self, *_: Any) -> None:
        interrupts.safe_point()


@dataclass(frozen=True)
class FitResult:
    best_value: float | None
    best_step: int
    steps: int
    seconds: float
    samples: int
    state: dict[str, torch.Tensor] | None


def build_trainer(cfg: TrainConfig, callbacks: list[Callback], logger: Logger | None,
                  progress: bool = True) -> pl.Trainer:
    return pl.Trainer(
        accelerator="auto", devices=1, precision=resolve_precision(cfg.precision),
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps,
        val_check_interval=1.0 / cfg.val_checks_per_epoch,
        callbacks=callbacks, logger=logger or False, enable_checkpointing=False,
        num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=progress,
        log_every_n_steps=50,
    )


def fit(tokens: TokenizedData, cfg: TrainConfig, seed: int, monitor: str, mode: str,
        callbacks: list[Callback] = (), logger: Logger | None = None,
        progress: bool = True) -> tuple[TextClassifier, FitResult]:
    """Fine-tune once with `cfg`; returns the module and its best validation result."""
    pl.seed_everything(seed, workers=True, verbose=False)
    set_threads(cfg.num_threads)
    keep_freed_memory()
    rows = load_rows(tokens.path)
    module = TextClassifier(tokens.model_path, list(tokens.data.label_names), cfg,
                            tokens.data.multi_label)
    best = BestWeights(monitor, mode)
    stop = EarlyStopping(monitor, mode=mode, patience=cfg.early_stopping_patience,
                         check_on_train_epoch_end=False)
    trainer = build_trainer(cfg, [StopAtSafePoints(), best, stop, *callbacks], logger, progress)
    train = train_loader(rows["train"], tokens, cfg, seed)
    val = eval_loader(rows["validation"], tokens, cfg.eval_batch_size)
    start = time.perf_counter()
    with interrupts.at_safe_points():
        trainer.fit(module, train, val)
    seconds = time.perf_counter() - start
    result = FitResult(best.best, best.best_step, trainer.global_step, seconds,
                       trainer.global_step * cfg.batch_size, best.state)
    return module, result
