"""Time to quality: one contender, one seed, one fresh process; test macro-F1 at checkpoints.

Run by the bench as
    python -m bench.quality NAME --seed S --checkpoints K --out FILE key=value...
The data (key=value overrides, with `seed=S`: each seed its own split) is already tokenized
by the parent. Every contender trains the same fixed recipe (lr 1e-4, weight decay 0.01, no
warm-up, linear decay, batch 32, the epochs the overrides say). At K evenly spaced optimizer
steps (the last one the end of training) its model predicts the validation split (the time to
quality is read from these), and at the end the whole test split (the quality reported);
evaluations are paused out of the training clock. The training clock starts at the first
step's start (after model and optimizer are built: the same point for every contender).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.common import BATCH_SIZE, write_json

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01

# sweepflow contenders: train.* overrides on top of the experiment's defaults.
FIT_SETTINGS: dict[str, dict[str, Any]] = {
    "sweepflow": {},  # the default: precision auto, train.batching default, fast dropout
    "reference": {"precision": "32-true", "batching": "shuffle", "fast_dropout": False,
                  "micro_batches": 1},  # the plain recipe: each batch padded as one
    # The speed settings one at a time (issue 25, point 3), spelled out so that they stay
    # the same whatever conf/base.yaml says: `speed` is the default of 2026-12-03.
    "speed": {"precision": "auto", "batching": "bucketed", "bucket_batches": 8,
              "fast_dropout": True},
    "speed_shuffle": {"precision": "auto", "batching": "shuffle", "bucket_batches": 8,
                      "fast_dropout": True},
    "speed_stock_dropout": {"precision": "auto", "batching": "bucketed", "bucket_batches": 8,
                            "fast_dropout": False},
    "bf16_only": {"precision": "auto", "batching": "shuffle", "fast_dropout": False},
    "sweepflow_shuffle": {"batching": "shuffle"},
    "sweepflow_bucket8": {"bucket_batches": 8},
    "sweepflow_grouped": {"batching": "grouped"},
    "sweepflow_fp32": {"precision": "32-true"},
}


@dataclass
class Checkpoints:
    """Training clock (evaluations paused out) and test macro-F1 at the checkpoint steps."""

    steps: list[int]
    validate: Callable[[Any], float]
    test: Callable[[Any], float]
    start: float | None = None
    paused: float = 0.0
    pause_start: float = 0.0
    points: list[dict[str, float]] = field(default_factory=list)
    real_tokens: int = 0
    padded_tokens: int = 0

    def begin(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def pause(self) -> None:
        self.pause_start = time.perf_counter()

    def resume(self) -> None:
        self.paused += time.perf_counter() - self.pause_start

    def forward_hook(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled():
            mask = kwargs["attention_mask"]
            self.real_tokens += int(mask.sum())
            self.padded_tokens += int(mask.numel())

    def step_end(self, step: int, model: Any) -> None:
        if step not in self.steps or any(p["step"] == step for p in self.points):
            return
        now = time.perf_counter()
        seconds = now - self.start - self.paused
        was_training = model.training
        model.eval()
        point = {"step": step, "seconds": seconds, "val_f1": self.validate(model)}
        if step == self.steps[-1]:
            point["test_f1"] = self.test(model)
        model.train(was_training)
        self.points.append(point)
        self.paused += time.perf_counter() - now

    def summary(self) -> dict[str, Any]:
        return {"points": self.points, "train_seconds": self.points[-1]["seconds"],
                "test_f1": self.points[-1]["test_f1"],
                "padding_share": 1 - self.real_tokens / max(self.padded_tokens, 1)}


def checkpoint_steps(total: int, k: int) -> list[int]:
    return sorted({max(1, round(total * (i + 1) / k)) for i in range(k)})


def evaluator(tokens: Any, split: str, bf16: bool) -> Callable[[Any], float]:
    """Macro-F1 on a whole split, length-sorted batches of 128, the contender's precision
    (bf16 autocast or fp32)."""
    from sklearn.metrics import f1_score
    from sweepflow.tasks.train import eval_loader, load_rows

    rows = load_rows(tokens.path)[split]
    loader = eval_loader(rows, tokens, 128)
    labels = [rows.labels[i] for i in loader.sampler]

    def evaluate(model: Any) -> float:
        preds = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                    enabled=bf16):
            for batch in loader:
                batch.pop("labels")
                preds.append(model(**batch).logits.argmax(-1))
        return float(f1_score(labels, torch.cat(preds).tolist(), average="macro",
                              zero_division=0))

    return evaluate


def evaluators(tokens: Any, bf16: bool) -> tuple[Callable[[Any], float], ...]:
    return evaluator(tokens, "validation", bf16), evaluator(tokens, "test", bf16)


def load_tokens(overrides: list[str]) -> tuple[Any, Any]:
    """The parent tokenized with these overrides: cache hits."""
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize

    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    return config, tokenize(config, ingest(config))


def run_fit(name: str, overrides: list[str], seed: int, k: int) -> dict[str, Any]:
    """tasks.train.fit as a trial runs it, with the fixed recipe and `name`'s settings."""
    import lightning.pytorch as pl
    from sweepflow.tasks.train import fit, resolve_precision

    config, tokens = load_tokens(overrides)
    cfg = config.train.model_copy(update={
        "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "warmup_ratio": 0.0,
        "val_checks_per_epoch": 1, "early_stopping_patience": 100, **FIT_SETTINGS[name]})
    precision = resolve_precision(cfg.precision)
    total = -(-tokens.data.sizes["train"] // cfg.batch_size) * cfg.max_epochs
    clock = Checkpoints(checkpoint_steps(total, k), *evaluators(tokens, "bf16" in precision))

    class Clock(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            module.model.register_forward_pre_hook(clock.forward_hook, with_kwargs=True)

        def on_train_batch_start(self, *args: Any) -> None:
            clock.begin()

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            clock.step_end(trainer.global_step, module.model)

        def on_validation_start(self, *args: Any) -> None:
            clock.pause()

        def on_validation_end(self, *args: Any) -> None:
            clock.resume()

    _, result = fit(tokens, cfg, seed, config.sweep.metric, "max", [Clock()], None,
                    progress=False)
    return {"precision": precision, "batching": cfg.batching, "fast_dropout": cfg.fast_dropout,
            "micro_batches": cfg.micro_batches, "steps": result.steps, **clock.summary()}


def run_hf(name: str, overrides: list[str], seed: int, k: int) -> dict[str, Any]:
    """transformers.Trainer: defaults (fp32, random order) or tuned (bf16, length grouping),
    DataCollatorWithPadding, the same recipe."""
    from sweepflow.tasks.tokenize import load_tokenized, load_tokenizer
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    config, tokens = load_tokens(overrides)
    tuned = {"bf16": True, "train_sampling_strategy": "group_by_length"} \
        if name == "hf_tuned" else {}
    tokenizer = load_tokenizer(tokens.model_path)
    train = load_tokenized(tokens.path)["train"]
    train = train if tuned else train.remove_columns(["length"])
    epochs = config.train.max_epochs
    total = -(-len(train) // BATCH_SIZE) * epochs
    clock = Checkpoints(checkpoint_steps(total, k), *evaluators(tokens, bool(tuned)))

    class Clock(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            clock.begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.step_end(state.global_step, kwargs["model"])

    torch.manual_seed(seed)  # the new head's initial weights
    model = AutoModelForSequenceClassification.from_pretrained(
        tokens.model_path, num_labels=len(tokens.data.label_names))
    model.register_forward_pre_hook(clock.forward_hook, with_kwargs=True)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH_SIZE,
                                 num_train_epochs=epochs, learning_rate=LEARNING_RATE,
                                 weight_decay=WEIGHT_DECAY, seed=seed, report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=True, **tuned)
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          data_collator=DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer, callbacks=[Clock()])
        trainer.train()
    return {"precision": "bf16 autocast" if tuned else "fp32",
            "batching": "grouped" if tuned else "shuffle", "fast_dropout": False,
            "steps": trainer.state.global_step, **clock.summary()}


def runner(name: str) -> Callable[[str, list[str], int, int], dict[str, Any]]:
    return run_hf if name.startswith("hf_") else run_fit


NAMES = (*FIT_SETTINGS, "hf_default", "hf_tuned")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    info = runner(args.name)(args.name, args.overrides, args.seed, args.checkpoints)
    write_json(args.out, {"name": args.name, "seed": args.seed,
                          "threads": torch.get_num_threads(), **info})


if __name__ == "__main__":
    main()
