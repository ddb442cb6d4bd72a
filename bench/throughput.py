"""Training throughput of four contenders on the same tokenized data, one process each.

Run by the bench as `python -m bench.throughput NAME --warmup W --out FILE key=value...`, so
every contender starts cold (oneDNN primitive caches, allocator) and pays its own warm-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import BATCH_SIZE, StepClock, prepare, write_json

SEED = 42
LEARNING_RATE = 5e-5


def _train_split(path: str) -> Any:
    """The tokenized train split as a datasets.Dataset (input_ids, attention_mask, label)."""
    from sweepflow.tasks.tokenize import load_tokenized

    return load_tokenized(path)["train"].remove_columns(["length"])


def _hf_model(model_path: str, clock: StepClock) -> Any:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=3)
    model.register_forward_pre_hook(clock.forward_hook, with_kwargs=True)
    return model


def run_sweepflow(overrides: list[str], clock: StepClock) -> dict[str, Any]:
    """tasks.train.fit as a trial runs it: precision auto, train.batching, dynamic padding,
    the batched MLflow logger; one validation per epoch (paused out of the timing)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger
    from sweepflow.tasks.tokenize import TokenizedData
    from sweepflow.tasks.train import fit, resolve_precision

    from sweepflow import tracking
    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    prepared = prepare_from(overrides)
    tokens = TokenizedData.model_validate_json(prepared.tokens_json)
    cfg = config.train.model_copy(update={"max_epochs": 2, "val_checks_per_epoch": 1,
                                          "max_steps": total_steps(prepared, clock)})

    class Clock(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            module.model.register_forward_pre_hook(clock.forward_hook, with_kwargs=True)

        def on_train_batch_end(self, *args: Any) -> None:
            clock.step_end()

        def on_validation_start(self, *args: Any) -> None:
            clock.pause()

        def on_validation_end(self, *args: Any) -> None:
            clock.resume()

    class TimedLogger(MLFlowLogger):
        """The product's logger (Lightning's MLFlowLogger, asynchronous), timed."""

        seconds, calls = 0.0, 0

        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            start = time.perf_counter()
            super().log_metrics(metrics, step)
            TimedLogger.seconds += time.perf_counter() - start
            TimedLogger.calls += 1

    with tracking.managed_run(config, "bench-throughput") as run_id:
        logger = TimedLogger(tracking_uri=tracking.tracking_uri(config), run_id=run_id,
                             synchronous=False)
        _, result = fit(tokens, cfg, SEED, config.sweep.metric, "max", [Clock()], logger,
                        progress=False)
    return {"precision": resolve_precision(cfg.precision), "mlflow_seconds": TimedLogger.seconds,
            "mlflow_calls": TimedLogger.calls, "total_steps": result.steps,
            "fit_seconds": result.seconds}


def _hf_trainer(overrides: list[str], clock: StepClock, **tuned: Any) -> dict[str, Any]:
    from sweepflow.tasks.tokenize import load_tokenizer
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    prepared = prepare_from(overrides)
    tokenizer = load_tokenizer(prepared.model_path)

    class Clock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.step_end()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH_SIZE,
                                 max_steps=total_steps(prepared, clock), seed=SEED,
                                 learning_rate=LEARNING_RATE, report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=True, **tuned)
        trainer = Trainer(model=_hf_model(prepared.model_path, clock), args=args,
                          train_dataset=_hf_train_split(prepared.path, tuned),
                          data_collator=DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer, callbacks=[Clock()])
        trainer.train()
    return {"precision": "bf16 autocast" if tuned.get("bf16") else "fp32",
            "optimizer": str(args.optim)}


def _hf_train_split(path: str, tuned: dict[str, Any]) -> Any:
    """With length grouping, keep the precomputed `length` column the sampler reads."""
    from sweepflow.tasks.tokenize import load_tokenized

    split = load_tokenized(path)["train"]
    return split if tuned else split.remove_columns(["length"])


def run_hf_default(overrides: list[str], clock: StepClock) -> dict[str, Any]:
    """transformers.Trainer with its defaults (fp32, random order), DataCollatorWithPadding."""
    return _hf_trainer(overrides, clock)


def run_hf_tuned(overrides: list[str], clock: StepClock) -> dict[str, Any]:
    """transformers.Trainer with bf16=True and length grouping."""
    return _hf_trainer(overrides, clock, bf16=True, train_sampling_strategy="group_by_length")


def run_bare(overrides: list[str], clock: StepClock) -> dict[str, Any]:
    """A plain PyTorch loop: shuffled DataLoader, dynamic padding, AdamW, bf16 autocast."""
    from sweepflow.tasks.tokenize import load_tokenizer
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    prepared = prepare_from(overrides)
    model = _hf_model(prepared.model_path, clock).train()
    loader = DataLoader(_train_split(prepared.path), batch_size=BATCH_SIZE, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED),
                        collate_fn=DataCollatorWithPadding(load_tokenizer(prepared.model_path)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    steps = total_steps(prepared, clock)
    while len(clock.ends) < steps:
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            clock.step_end()
            if len(clock.ends) == steps:
                break
    return {"precision": "bf16 autocast", "optimizer": "torch.optim.AdamW"}


CONTENDERS: dict[str, Callable[[list[str], StepClock], dict[str, Any]]] = {
    "sweepflow": run_sweepflow,
    "hf_default": run_hf_default,
    "hf_tuned": run_hf_tuned,
    "bare_torch": run_bare,
}


def total_steps(prepared: Any, clock: StepClock) -> int:
    """One epoch of timed steps after the warm-up steps."""
    return prepared.train_rows // BATCH_SIZE + clock.warmup


def prepare_from(overrides: list[str]) -> Any:
    """The bench already tokenized with these overrides: this is a cache hit."""
    values = dict(o.split("=", 1) for o in overrides)
    return prepare(int(values["data.max_train_samples"]), int(values["data.max_eval_samples"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    clock = StepClock(args.warmup)
    info = CONTENDERS[args.name](args.overrides, clock)
    write_json(args.out, {"name": args.name, "threads": torch.get_num_threads(), **info,
                          **clock.summary()})


if __name__ == "__main__":
    main()
