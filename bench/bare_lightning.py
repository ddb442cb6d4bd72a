"""The same training as one sweepflow trial, written as a bare Lightning script: no Prefect,
no MLflow, no Optuna, no caches. The bench times it against `sweepflow run` (one trial).

It reads the splits sweepflow tokenized (same token ids), trains with the same recipe: the
`train` section of the same config (conf/base.yaml + the overrides given: learning rate,
weight decay, warm-up, precision, batching, dropout masks, batch sizes, epochs, validations),
AdamW fused, glibc keeping freed memory, dynamically padded batches drawn as sweepflow draws
them (tasks/batching.py); then predicts the test split and saves the model.

    python -m bench.bare_lightning --data TOKENIZED_DIR --model MODEL_DIR --out result.json \
        [key=value ...]
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from sweepflow.tasks.batching import train_batches  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.classification import MulticlassF1Score  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from sweepflow.config import TrainConfig, load_config  # noqa: E402
from sweepflow.fastdropout import speed_up_dropout  # noqa: E402
from sweepflow.memory import keep_freed_memory  # noqa: E402
from sweepflow.precision import resolve_precision  # noqa: E402

SEED = 42


class Classifier(pl.LightningModule):
    """AutoModelForSequenceClassification in Lightning: AdamW (fused unless `fused` is
    False), linear schedule with warm-up, macro-F1 per validation. bench/sweep_contenders.py
    uses it, unfused and with stock dropout, as the module a user writes for Optuna and Ray."""

    def __init__(self, model_dir: str, num_labels: int, cfg: TrainConfig, fused: bool = True
                 ) -> None:
        super().__init__()
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels, ignore_mismatched_sizes=True).train()
        self.cfg = cfg
        self.fused = fused
        self.f1 = MulticlassF1Score(num_classes=num_labels, average="macro")

    def on_fit_start(self) -> None:
        if self.cfg.fast_dropout:  # part of the recipe being matched, not orchestration
            speed_up_dropout(self.model)

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        return self.model(**batch).loss

    def validation_step(self, batch: dict, _: int) -> None:
        self.f1.update(self.model(**batch).logits.argmax(-1), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/f1_macro", self.f1.compute())
        self.f1.reset()

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.cfg.learning_rate,
                                      weight_decay=self.cfg.weight_decay,
                                      fused=self.fused or None)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(self.cfg.warmup_ratio * total)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def loaders(data: datasets.DatasetDict, collate: DataCollatorWithPadding, cfg: TrainConfig
            ) -> tuple[DataLoader, DataLoader, DataLoader]:
    eval_batch = cfg.eval_batch_size
    cols = ["input_ids", "attention_mask", "label"]
    rows = {s: data[s].select_columns(cols).to_list() for s in data}

    def by_length(split: str) -> list[int]:
        return sorted(range(len(rows[split])), key=data[split]["length"].__getitem__)

    return (DataLoader(rows["train"], collate_fn=collate,
                       **train_batches(data["train"]["length"], cfg, SEED)),
            DataLoader(rows["validation"], batch_size=eval_batch, sampler=by_length(
                "validation"), collate_fn=collate),
            DataLoader(rows["test"], batch_size=eval_batch, sampler=by_length("test"),
                       collate_fn=collate))


def predict(model: torch.nn.Module, loader: DataLoader, precision: str) -> float:
    """Test macro-F1 with the training precision's autocast, as sweepflow's evaluate does."""
    f1 = MulticlassF1Score(num_classes=model.config.num_labels, average="macro")
    model.eval()
    bf16 = precision.startswith("bf16")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            labels = batch.pop("labels")
            f1.update(model(**batch).logits.argmax(-1), labels)
    return float(f1.compute())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="tokenized folder (with data/)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value, as for `sweepflow run`")
    args = parser.parse_intermixed_args()
    cfg = load_config(overrides=args.overrides).train
    precision = resolve_precision(cfg.precision)
    imported = time.perf_counter()
    pl.seed_everything(SEED, verbose=False)
    keep_freed_memory()
    data = datasets.load_from_disk(str(Path(args.data) / "data"))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    collate = DataCollatorWithPadding(tokenizer)
    train, val, test = loaders(data, collate, cfg)
    module = Classifier(args.model, data["train"].features["label"].num_classes, cfg)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision,
                         max_epochs=cfg.max_epochs, max_steps=cfg.max_steps,
                         val_check_interval=1.0 / cfg.val_checks_per_epoch,
                         logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         enable_model_summary=False, enable_progress_bar=False)
    fit_start = time.perf_counter()
    trainer.fit(module, train, val)
    fitted = time.perf_counter()
    test_f1 = predict(module.model, test, precision)
    predicted = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        module.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    Path(args.out).write_text(json.dumps({
        "import_seconds": imported - START, "setup_seconds": fit_start - imported,
        "fit_seconds": fitted - fit_start, "test_seconds": predicted - fitted,
        "save_seconds": time.perf_counter() - predicted,
        "steps": trainer.global_step, "test_f1_macro": test_f1,
        "val_f1_macro": float(trainer.callback_metrics.get("val/f1_macro", float("nan"))),
    }))


if __name__ == "__main__":
    main()
