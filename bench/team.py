"""`--only team`: the same 8-trial sweep three ways, in one run, on the same data and seed.

  embedded      SQLite study + SQLite MLflow, one process, 2 torch threads (the default)
  servers 1x2   PostgreSQL study + MLflow server (team stack), one process, 2 threads
  team 2x1      the same servers, 2 trial workers x 1 thread on a Prefect process work pool

Every contender evaluates the same 8 param sets (enqueued in its own fresh study before the
sweep, so the sampler plays no part and the best scores compare like for like); pruning is
off, so every trial trains the same steps. Timed: the sweep only (from the parent run's start
to its summary, Prefect worker start and the trial workers' imports included), not ingest,
tokenize or the stack's start.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.common import data_overrides, run_json
from sweepflow.netutil import free_port

PARAMS = [{"learning_rate": lr, "warmup_ratio": warmup, "weight_decay": 0.01}
          for lr in (5.0e-5, 8.0e-5, 1.3e-4, 2.0e-4) for warmup in (0.0, 0.1)]
CONTENDERS = {
    "embedded": ["train.num_threads=2"],
    "servers_1x2": ["train.num_threads=2"],
    "team_2x1": ["sweep.workers=2", "sweep.workers_per_host=2"],
    # one worker with one thread: what a second worker adds when it has a core of its own
    "servers_1x1": ["train.num_threads=1"],
}


def team(ctx: Any) -> dict[str, Any]:
    from sweepflow.stack import (
        StackError,
        drop_databases,
        ensure_databases,
        pg_server_url,
        started_stack,
    )

    try:
        ensure_databases(pg_server_url(), [])
    except StackError as err:
        ctx.log(f"team: skipped ({err})")
        return {"skipped": str(err)}
    prefix = f"sfbench_{uuid.uuid4().hex[:8]}"
    train, evals = (240, 120) if ctx.sizes.rounds == 1 else (1600, 500)
    base = [*data_overrides(train, evals), "train.max_epochs=1", "train.val_checks_per_epoch=2",
            "train.early_stopping_patience=5", "sweep.pruner=none",
            f"sweep.n_trials={len(PARAMS)}", "sweep.continue_study=true"]
    results: dict[str, Any] = {}
    try:
        with started_stack(ctx.home / "team-stack", prefix, mlflow_port=free_port(),
                           prefect_port=free_port()) as stack:
            env = {**ctx.env, "PREFECT_API_URL": stack.prefect_api,
                   "PREFECT_WORKER_QUERY_SECONDS": "1"}
            servers = [f"sweep.storage={stack.optuna_url}", f"tracking.uri={stack.mlflow_url}"]
            for name, extra in CONTENDERS.items():
                if name not in ctx.sizes.team_contenders:
                    continue
                overrides = [*base, *extra, *(servers if name != "embedded" else []),
                             f"sweep.study_name=bench-{name}",
                             f"tracking.experiment=bench-team-{name}"]
                _enqueue(overrides)
                ctx.log(f"team: {name} ({len(PARAMS)} trials)")
                results[name] = _measure(overrides, env)
    finally:
        drop_databases(pg_server_url(), [f"{prefix}_{k}" for k in ("optuna", "mlflow",
                                                                    "prefect")])
    return _compare(results, train, evals)


def _enqueue(overrides: list[str]) -> None:
    """The study of this contender, created now, holding the 8 param sets as WAITING trials."""
    import optuna
    from sweepflow.tasks.sweep import create_study

    from sweepflow.config import load_config
    from sweepflow.storage import open_storage

    config = load_config(overrides=overrides)
    ref = create_study(config)
    study = optuna.load_study(study_name=ref.name,
                              storage=open_storage(ref.storage, config.sweep))
    for params in PARAMS:
        study.enqueue_trial(params)


def _measure(overrides: list[str], env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    out = run_json(["bench.sweep_run", *overrides], env, timeout=3600)
    trials = sum(out["counts"].values())
    return {"sweep_seconds": out["seconds"], "process_seconds": time.perf_counter() - start,
            "trials": trials, "counts": out["counts"], "steps": out["steps"],
            "best_value": out["best_value"], "best_params": out["best_params"],
            "trials_per_hour": 3600 * trials / out["seconds"],
            "steps_per_s": out["steps"] / out["seconds"],
            "seconds_per_trial": out["seconds"] / trials}


def _compare(r: dict[str, Any], train: int, evals: int) -> dict[str, Any]:
    """Ratios of whatever contenders ran (`--quality team_contenders=a+b` runs a subset)."""
    out: dict[str, Any] = {"train_samples": train, "eval_samples": evals, "param_sets": PARAMS,
                           "results": r}
    two = r.get("team_2x1")
    for other, speedup, delta in (
            ("servers_1x2", "speedup_2x1_vs_1x2_servers", "best_delta_points_vs_servers"),
            ("embedded", "speedup_2x1_vs_embedded", "best_delta_points_vs_embedded"),
            ("servers_1x1", "speedup_2x1_vs_1x1", "best_delta_points_vs_1x1")):
        if two and other in r:
            out[speedup] = two["trials_per_hour"] / r[other]["trials_per_hour"]
            out[delta] = 100 * (two["best_value"] - r[other]["best_value"])
    if "servers_1x2" in r and "embedded" in r:
        out["server_overhead_seconds_per_trial"] = (r["servers_1x2"]["seconds_per_trial"]
                                                    - r["embedded"]["seconds_per_trial"])
    return out
