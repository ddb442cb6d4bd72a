"""Shared bench pieces: an isolated environment, the one tokenized dataset every contender
reads, step timing that skips warm-up, and the model-FLOPs arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore",
}
MAX_LENGTH = 64
BATCH_SIZE = 32


def bench_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for the bench and its subprocesses: offline, store and Prefect under home."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(OFFLINE_ENV)
    env["SWEEPFLOW_HOME"] = str(home / "store")
    env["PREFECT_HOME"] = str(home / "prefect")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def apply_env(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)


@dataclass(frozen=True)
class Prepared:
    """The tokenized splits on disk (tasks.tokenize output) and their facts."""

    tokens_json: str  # TokenizedData as JSON, so a subprocess needs no config
    path: str
    model_path: str
    train_rows: int
    overrides: tuple[str, ...]


def data_overrides(train_samples: int, eval_samples: int) -> tuple[str, ...]:
    return (f"data.max_train_samples={train_samples}", f"data.max_eval_samples={eval_samples}",
            f"tokenize.max_length={MAX_LENGTH}", f"train.batch_size={BATCH_SIZE}")


def prepare(train_samples: int, eval_samples: int) -> Prepared:
    """Ingest and tokenize with the project's own functions: every contender sees these ids."""
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize

    from sweepflow.config import load_config

    overrides = data_overrides(train_samples, eval_samples)
    config = load_config(overrides=list(overrides))
    tokens = tokenize(config, ingest(config))
    return Prepared(tokens.model_dump_json(), tokens.path, tokens.model_path,
                    tokens.data.sizes["train"], overrides)


@dataclass
class StepClock:
    """Per-step wall and CPU timestamps and per-forward batch facts, filled by hooks in each
    contender. A step is fetch + collate + forward + backward + optimizer step.

    Contenders run `steps_per_epoch + warmup` steps and the last `steps_per_epoch` are timed:
    one epoch's worth of batches, which with length grouping (longest batch first) means the
    same batch lengths for every contender. Validation inside the window is paused out.
    """

    warmup: int
    ends: list[tuple[float, float]] = field(default_factory=list)  # wall, process CPU
    batches: list[tuple[int, int, int, int]] = field(default_factory=list)
    paused: list[tuple[float, float, float]] = field(default_factory=list)  # at, wall, cpu

    def forward_hook(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled():  # a training forward, not validation
            mask = kwargs["attention_mask"]
            lengths = mask.sum(1)
            self.batches.append((int(mask.shape[0]), int(lengths.sum()), int(mask.numel()),
                                 int((lengths * lengths).sum())))

    def step_end(self) -> None:
        self.ends.append((time.perf_counter(), time.process_time()))

    def pause(self) -> None:
        now = time.perf_counter()
        self.paused.append((now, now, time.process_time()))

    def resume(self) -> None:
        at, wall, cpu = self.paused.pop()
        self.paused.append((at, time.perf_counter() - wall, time.process_time() - cpu))

    def summary(self) -> dict[str, float]:
        """Throughput over the steps after warm-up."""
        w, n = self.warmup, len(self.ends)
        if n <= w or len(self.batches) != n:
            raise RuntimeError(f"{n} steps, {len(self.batches)} forwards, warm-up {w}")
        inside = [p for p in self.paused if p[0] > self.ends[w - 1][0]]
        paused_wall, paused_cpu = sum(p[1] for p in inside), sum(p[2] for p in inside)
        seconds = self.ends[-1][0] - self.ends[w - 1][0] - paused_wall
        cpu = self.ends[-1][1] - self.ends[w - 1][1] - paused_cpu
        samples, real, padded, sum_sq = (sum(b[i] for b in self.batches[w:]) for i in range(4))
        return {"steps": n - w, "seconds": seconds, "samples": samples, "real_tokens": real,
                "padded_tokens": padded, "sum_sq_lengths": sum_sq,
                "samples_per_s": samples / seconds, "real_tokens_per_s": real / seconds,
                "padding_share": 1 - real / padded, "seconds_per_step": seconds / (n - w),
                "cpu_share": cpu / seconds / torch.get_num_threads(),
                "paused_seconds": paused_wall}


def model_shape(model_path: str) -> dict[str, int]:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=3)
    embed = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n)
    total = sum(p.numel() for p in model.parameters())
    return {"params": total, "non_embedding_params": total - embed,
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size}


def run_json(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run `python -m ...args` with a --out file and return the JSON it wrote."""
    out = Path(env["SWEEPFLOW_HOME"]).parent / f"out-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
