"""Where a sweepflow training step spends its time: torch.profiler over the steps of
tasks.train.fit on the bench's data (batch 32, max_length 64), grouped by operator.

    python -m bench.profile_step [--train 512] [--top 25]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import bench_env

ACTIVE_STEPS = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--shapes", action="store_true", help="group by input shapes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweepflow-profile-") as home:
        os.environ.update(bench_env(Path(home)))  # offline, store in home
        profile_fit(args.train, args.top, args.shapes)


def profile_fit(train_samples: int, top: int, shapes: bool) -> None:
    """Profile steps 4-11 of one fit() on `train_samples` tweets and print the top ops."""
    import lightning.pytorch as pl
    import torch
    from sweepflow.tasks.tokenize import TokenizedData
    from sweepflow.tasks.train import fit
    from torch.profiler import ProfilerActivity, profile, schedule

    from bench.common import prepare
    from sweepflow.config import load_config

    prepared = prepare(train_samples, 64)
    tokens = TokenizedData.model_validate_json(prepared.tokens_json)
    config = load_config(overrides=list(prepared.overrides))
    cfg = config.train.model_copy(update={"max_epochs": 1, "val_checks_per_epoch": 1})
    prof = profile(activities=[ProfilerActivity.CPU],
                   schedule=schedule(wait=1, warmup=2, active=ACTIVE_STEPS, repeat=1),
                   record_shapes=shapes)

    class Step(pl.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            prof.step()

    with prof:
        fit(tokens, cfg, config.seed, config.sweep.metric, "max", [Step()], None,
            progress=False)
    print(f"torch threads {torch.get_num_threads()}, {ACTIVE_STEPS} profiled steps")
    table = prof.key_averages(group_by_input_shape=shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=top))


if __name__ == "__main__":
    main()
