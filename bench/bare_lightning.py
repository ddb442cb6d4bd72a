"""The same training as one sweepflow trial, written as a bare Lightning script: no Prefect,
no MLflow, no Optuna, no caches. The bench times it against `sweepflow run` (one trial).

It reads the splits sweepflow tokenized (same token ids), trains with the same recipe
(AdamW fused, linear warm-up, bf16-mixed, cheap CPU dropout masks, glibc keeping freed
memory, length-bucketed dynamically padded batches (tasks/batching.py), the same number of
validations),
predicts the test split and saves the model.

    python -m bench.bare_lightning --data TOKENIZED_DIR --model MODEL_DIR --out result.json
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
from sweepflow.tasks.batching import BucketedBatchSampler  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.classification import MulticlassF1Score  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from sweepflow.fastdropout import speed_up_dropout  # noqa: E402
from sweepflow.memory import keep_freed_memory  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self, model_dir: str, num_labels: int, lr: float, warmup: float) -> None:
        super().__init__()
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels).train()
        self.lr, self.warmup = lr, warmup
        self.f1 = MulticlassF1Score(num_classes=num_labels, average="macro")

    def on_fit_start(self) -> None:
        speed_up_dropout(self.model)  # part of the recipe being matched, not orchestration

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        return self.model(**batch).loss

    def validation_step(self, batch: dict, _: int) -> None:
        self.f1.update(self.model(**batch).logits.argmax(-1), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/f1_macro", self.f1.compute())
        self.f1.reset()

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01,
                                      fused=True)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup * total), total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def loaders(data: datasets.DatasetDict, collate: DataCollatorWithPadding, batch: int,
            eval_batch: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    train = data["train"]
    sampler = BucketedBatchSampler(train["length"], batch, seed=42)
    cols = ["input_ids", "attention_mask", "label"]
    rows = {s: data[s].select_columns(cols).to_list() for s in data}

    def by_length(split: str) -> list[int]:
        return sorted(range(len(rows[split])), key=data[split]["length"].__getitem__)

    return (DataLoader(rows["train"], batch_sampler=sampler, collate_fn=collate),
            DataLoader(rows["validation"], batch_size=eval_batch, sampler=by_length(
                "validation"), collate_fn=collate),
            DataLoader(rows["test"], batch_size=eval_batch, sampler=by_length("test"),
                       collate_fn=collate))


def predict(model: torch.nn.Module, loader: DataLoader) -> float:
    """Test macro-F1 with bf16 autocast, as sweepflow's evaluate does."""
    f1 = MulticlassF1Score(num_classes=model.config.num_labels, average="macro")
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in loader:
            labels = batch.pop("labels")
            f1.update(model(**batch).logits.argmax(-1), labels)
    return float(f1.compute())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="tokenized folder (with data/)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--val-checks", type=int, default=3)
    args = parser.parse_args()
    imported = time.perf_counter()
    pl.seed_everything(42, verbose=False)
    keep_freed_memory()
    data = datasets.load_from_disk(str(Path(args.data) / "data"))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    collate = DataCollatorWithPadding(tokenizer)
    train, val, test = loaders(data, collate, args.batch_size, args.eval_batch_size)
    module = Classifier(args.model, data["train"].features["label"].num_classes, 5e-5, 0.1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed",
                         max_epochs=args.epochs, val_check_interval=1.0 / args.val_checks,
                         logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         enable_model_summary=False, enable_progress_bar=False)
    fit_start = time.perf_counter()
    trainer.fit(module, train, val)
    fitted = time.perf_counter()
    test_f1 = predict(module.model, test)
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
