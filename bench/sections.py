"""The bench sections. Each measures its contenders in this one run, on this machine, and
returns a JSON-able dict; every figure that has a target is a ratio or an absolute time."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT, data_overrides, model_shape, prepare, run_json
from bench.flops import matmul_peak, model_flops
from bench.prefect_server import PrefectServer

CONTENDERS = ("sweepflow", "hf_default", "hf_tuned", "bare_torch")


@dataclass(frozen=True)
class Sizes:
    """How big each section is: --quick shrinks everything to a smoke test."""

    rounds: int  # throughput rounds
    overhead_rounds: int
    train: int
    eval: int
    warmup: int
    overhead_train: int
    overhead_eval: int
    overhead_extra: tuple[str, ...]
    prune_trials: int
    prune_train: int
    prune_eval: int
    prune_epochs: int
    prune_val_checks: int
    prune_seeds: tuple[int, ...]
    # time to quality (bench/ttq.py): texts, seeds, checkpoints, contenders, long budget, load
    quality_train: int = 4096
    quality_eval: int = 1000  # validation rows (time to quality is read from these)
    quality_test_fraction: float = 0.2  # the default experiment's 7,447 test tweets
    quality_parallel: int = 1  # seeds run side by side (each seed's contenders in turn)
    quality_seeds: tuple[int, ...] = (42, 7, 13)
    quality_checkpoints: int = 8
    quality_contenders: tuple[str, ...] = ("sweepflow", "reference", "hf_default", "hf_tuned")
    long_train: int = 8000
    long_epochs: int = 2
    long_contenders: tuple[str, ...] = ("sweepflow", "reference")
    team_contenders: tuple[str, ...] = ("embedded", "servers_1x2", "team_2x1", "servers_1x1")
    load_rounds: int = 2
    # issue 25 point 3: the trial-level default on check sets of other shapes
    checks_sets: tuple[str, ...] = ("airline2", "posts")
    checks_contenders: tuple[str, ...] = ("speed", "reference", "speed_shuffle",
                                          "speed_stock_dropout", "bf16_only")
    checks_eval: int = 500
    checks_checkpoints: int = 4
    checks_train: int = 0  # training rows; 0 = each check set's own (bench/checksets.py)
    checks_epochs: int = 1  # the long budget: e.g. 3


# The overhead section runs the default experiment's data and schedule (8,000 tweets, one
# epoch, 3 validations, the 7,447-tweet test split) as one trial: a fixed cost of ~10 s
# is measured against the training a user actually runs, not against a toy.
FULL = Sizes(rounds=3, overhead_rounds=3, train=1024, eval=128, warmup=3,
             overhead_train=8000, overhead_eval=1000, overhead_extra=(),
             prune_trials=12, prune_train=800, prune_eval=500, prune_epochs=2,
             prune_val_checks=4, prune_seeds=(42, 7, 13))
QUICK = Sizes(rounds=1, overhead_rounds=1, train=256, eval=128, warmup=2,
              overhead_train=200, overhead_eval=100, overhead_extra=("data.test_fraction=0.03",),
              prune_trials=4, prune_train=160, prune_eval=100, prune_epochs=1,
              prune_val_checks=2, prune_seeds=(42,), quality_train=256,
              quality_seeds=(42, 7), quality_checkpoints=2, long_train=256, long_epochs=2,
              load_rounds=1, checks_train=256, checks_eval=100, checks_checkpoints=2)


@dataclass
class Context:
    home: Path
    env: dict[str, str]
    sizes: Sizes
    prefect: PrefectServer | None = None
    log: Any = print


# -- 1. throughput ---------------------------------------------------------------------------

def throughput(ctx: Context) -> dict[str, Any]:
    """Contenders interleaved over rounds (order rotated), each in a fresh process; the best
    round per contender counts, since other load on the machine only ever slows a round."""
    s = ctx.sizes
    prepared = prepare(s.train, s.eval)
    shape = model_shape(prepared.model_path)
    peaks = [matmul_peak(dtype) for dtype in _dtypes()]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for r in range(s.rounds):
        for name in CONTENDERS[r % len(CONTENDERS):] + CONTENDERS[:r % len(CONTENDERS)]:
            ctx.log(f"throughput round {r + 1}/{s.rounds}: {name}")
            runs[name].append(run_json(["bench.throughput", name, "--warmup", str(s.warmup),
                                        *prepared.overrides], ctx.env, timeout=1200))
    peaks += [matmul_peak(dtype) for dtype in _dtypes()]
    peak = {p.dtype: max(q.gflops for q in peaks if q.dtype == p.dtype) for p in peaks}
    best = {n: max(rs, key=lambda r: r["real_tokens_per_s"]) for n, rs in runs.items()}
    for result in best.values():
        flops = model_flops(shape["non_embedding_params"], shape["layers"], shape["hidden"],
                            result["real_tokens"], result["sum_sq_lengths"])
        result["model_gflops_per_s"] = flops / result["seconds"] / 1e9
        dtype = "float32" if result["precision"] == "fp32" else "bfloat16"
        result["peak_share"] = result["model_gflops_per_s"] / peak[dtype]
    median = {n: statistics.median(r["real_tokens_per_s"] for r in rs) for n, rs in runs.items()}
    sf = best["sweepflow"]["real_tokens_per_s"]
    return {"train_samples": prepared.train_rows, "batch_size": 32, "max_length": 64,
            "model": shape, "matmul_peak_gflops": peak, "best": best, "rounds": runs,
            "median_real_tokens_per_s": median,
            "ratio_vs": {n: sf / best[n]["real_tokens_per_s"] for n in CONTENDERS[1:]},
            "median_ratio_vs": {n: median["sweepflow"] / median[n] for n in CONTENDERS[1:]}}


def _dtypes() -> tuple[Any, ...]:
    import torch

    return (torch.bfloat16, torch.float32)


# -- time to quality, under load (bench/ttq.py) ------------------------------------------------

def quality(ctx: Context) -> dict[str, Any]:
    from bench import ttq

    return ttq.quality(ctx)


def quality_long(ctx: Context) -> dict[str, Any]:
    from bench import ttq

    return ttq.quality_long(ctx)


def load(ctx: Context) -> dict[str, Any]:
    from bench import ttq

    return ttq.load(ctx)


def checks(ctx: Context) -> dict[str, Any]:
    from bench import ttq

    return ttq.checks(ctx)


# -- 2. overhead -----------------------------------------------------------------------------

def overhead(ctx: Context) -> dict[str, Any]:
    """`sweepflow run` (one trial, fixed params) against bench/bare_lightning.py on the same
    tokenized data; both start as fresh processes, data already tokenized and the TF-IDF
    baseline already fitted (both cached per data), the store's schemas already created
    (one-time costs reported apart)."""
    s = ctx.sizes
    overrides = [*data_overrides(s.overhead_train, s.overhead_eval), *s.overhead_extra,
                 "train.max_epochs=1", "train.val_checks_per_epoch=3", "sweep.n_trials=1",
                 "sweep.space={}", "tracking.experiment=bench-overhead"]
    prepared = _prepare_with(overrides)
    store_init = _init_store(overrides)
    baseline_fit = _warm_baseline(overrides)
    sweepflow_cmd = [str(Path(sys.executable).parent / "sweepflow"), "run", *overrides]
    bare_cmd = [sys.executable, "-m", "bench.bare_lightning", "--data", prepared.path,
                "--model", prepared.model_path, *overrides]  # the same train.* as the run
    walls: dict[str, list[float]] = {"sweepflow": [], "bare": []}
    phases: dict[str, list[dict[str, float]]] = {"sweepflow": [], "bare": []}
    for r in range(s.overhead_rounds):
        for name in (("bare", "sweepflow") if r % 2 == 0 else ("sweepflow", "bare")):
            ctx.log(f"overhead round {r + 1}/{s.overhead_rounds}: {name}")
            if name == "bare":
                bare, wall = _timed_json(bare_cmd, ctx)
                phases[name].append(bare)
            else:
                started = time.time()
                wall = _timed(sweepflow_cmd, ctx)
                phases[name].append(_sweepflow_phases(overrides, started, wall))
            walls[name].append(wall)
    best = {k: min(v) for k, v in walls.items()}
    return {"overrides": overrides, "walls": walls, "best": best,
            "bare": phases["bare"][walls["bare"].index(best["bare"])],
            "sweepflow": phases["sweepflow"][walls["sweepflow"].index(best["sweepflow"])],
            "phases_by_round": phases,  # where each round's time went, to locate the spread
            "ratio": best["sweepflow"] / best["bare"],
            "median_ratio": (statistics.median(walls["sweepflow"])
                             / statistics.median(walls["bare"])),
            "extra_seconds": best["sweepflow"] - best["bare"],
            "store_init_seconds": store_init, "baseline_fit_seconds": baseline_fit,
            "prefect_api": ctx.prefect.api_url if ctx.prefect else None,
            "prefect_startup_seconds": ctx.prefect.startup_seconds if ctx.prefect else None}


def _init_store(overrides: list[str]) -> float:
    """Create the MLflow and Optuna schemas (and the experiment) before the timed runs, as
    any earlier run in a store has: the rounds measure what every run costs, not what the
    first run in a new store pays once. Returns that one-time cost (imports excluded)."""
    import optuna
    from sweepflow.tasks.sweep import study_storage

    from sweepflow import tracking
    from sweepflow.config import load_config

    start = time.perf_counter()
    tracking.setup(load_config(overrides=overrides))
    optuna.storages.RDBStorage(study_storage())
    return time.perf_counter() - start


def _warm_baseline(overrides: list[str]) -> float:
    """Fit the TF-IDF baseline once, as any earlier run on the same data has: like the
    tokenized data, its test predictions are cached per data. Returns that one-time cost."""
    from sweepflow.tasks.evaluate import baseline_cache, cached_baseline
    from sweepflow.tasks.ingest import ingest, load_ingested

    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    data = ingest(config)
    start = time.perf_counter()
    cached_baseline(load_ingested(data), data, config.seed, baseline_cache(config))
    return time.perf_counter() - start


def _sweepflow_phases(overrides: list[str], started: float, wall: float) -> dict[str, float]:
    """Where `sweepflow run` spent its time, from the MLflow runs it left: before the parent
    run opened (imports, Prefect flow start, cached ingest/tokenize), the trial run, the rest
    of the parent run (lineage, sweep report, evaluate, register) and after it closed."""
    from sweepflow import tracking
    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    exp = client.get_experiment_by_name(config.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], f"attributes.start_time >= "
                              f"{int(started * 1000)}", order_by=["attributes.start_time"])
    parent = next(r for r in runs if tracking.PARENT_TAG not in r.data.tags)
    trial = next(r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id)
    p0, p1 = parent.info.start_time / 1000, parent.info.end_time / 1000
    t0, t1 = trial.info.start_time / 1000, trial.info.end_time / 1000
    return {"before_parent_run_seconds": p0 - started, "trial_run_seconds": t1 - t0,
            "rest_of_parent_run_seconds": (p1 - p0) - (t1 - t0),
            "after_parent_run_seconds": started + wall - p1}


def _prepare_with(overrides: list[str]) -> Any:
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize

    from bench.common import Prepared
    from sweepflow.config import load_config

    tokens = tokenize(config := load_config(overrides=overrides), ingest(config))
    return Prepared(tokens.model_dump_json(), tokens.path, tokens.model_path,
                    tokens.data.sizes["train"], tuple(overrides))


def _timed(cmd: list[str], ctx: Context) -> float:
    start = time.perf_counter()
    log = ctx.home / f"{Path(cmd[0]).name}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.run(cmd, env=ctx.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def _timed_json(cmd: list[str], ctx: Context) -> tuple[dict[str, Any], float]:
    import json

    out = ctx.home / f"bare-{time.monotonic_ns()}.json"
    wall = _timed([*cmd, "--out", str(out)], ctx)
    return json.loads(out.read_text()), wall


# -- 3. pruning ------------------------------------------------------------------------------

def pruning(ctx: Context) -> dict[str, Any]:
    """The same sweep (same seed, sampler, data) with the default pruner and without, for
    each seed of `prune_seeds`: with TPE, pruning changes which trials are proposed next, so
    one pair of sweeps is a sample of one. Targets use the pooled steps and the worst seed."""
    from sweepflow.config import load_config

    out: dict[str, Any] = {"seeds": {}}
    for seed in ctx.sizes.prune_seeds:
        out["seeds"][str(seed)] = _pruning_pair(ctx, seed)
    pairs = list(out["seeds"].values())
    out["pruner"] = {k: v for k, v in load_config().sweep.model_dump().items()
                     if k.startswith("pruner")}  # the pairs override no pruner setting
    out["steps_ratio"] = (sum(p["pruned"]["optimizer_steps"] for p in pairs)
                          / sum(p["none"]["optimizer_steps"] for p in pairs))
    out["wall_ratio"] = (sum(p["pruned"]["wall_seconds"] for p in pairs)
                         / sum(p["none"]["wall_seconds"] for p in pairs))
    out["best_delta_points"] = min(p["best_delta_points"] for p in pairs)
    return out


def _pruning_pair(ctx: Context, seed: int) -> dict[str, Any]:
    s = ctx.sizes
    base = [*data_overrides(s.prune_train, s.prune_eval), f"train.max_epochs={s.prune_epochs}",
            f"train.val_checks_per_epoch={s.prune_val_checks}", f"seed={seed}",
            f"sweep.n_trials={s.prune_trials}", "tracking.experiment=bench-pruning"]
    _prepare_with(base)
    out: dict[str, Any] = {"overrides": base}
    for name, extra in (("pruned", []), ("none", ["sweep.pruner=none"])):
        ctx.log(f"pruning: {s.prune_trials}-trial sweep, seed {seed}, {name}")
        overrides = [*base, *extra, f"sweep.study_name=bench-{seed}-{name}"]
        start = time.perf_counter()
        result = run_json(["bench.sweep_run", *overrides], ctx.env, timeout=3600)
        out[name] = {**_sweep_from_mlflow(overrides, result["run_id"]),
                     "wall_seconds": time.perf_counter() - start,
                     "peak_rss_gb": result["peak_rss_gb"]}
    m, n = out["pruned"], out["none"]
    out["steps_ratio"] = m["optimizer_steps"] / n["optimizer_steps"]
    out["wall_ratio"] = m["wall_seconds"] / n["wall_seconds"]
    out["best_delta_points"] = 100 * (m["best_value"] - n["best_value"])
    out["replay"] = replay_pruning(base, n)
    return out


# The pruner settings the replay tries, each with both signals (sweep.metric, -val/loss).
REPLAY_HALVING = ((0.12, 2), (0.25, 2), (0.25, 3), (0.33, 3))  # (first rung share, factor)
REPLAY_PERCENTILE = ((50.0, 4, 0.0), (65.0, 2, 0.25), (65.0, 4, 0.25))  # (kept, startup, warm-up)


def replay_pruning(overrides: list[str], unpruned: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Replay the unpruned sweep's learning curves (val/loss and sweep.metric at every
    validation, from MLflow) through the pruners sweepflow builds (`make_pruner`) for other
    settings, holding each trial as `StepPruning` does: steps ratio and best-value change in
    points. An approximation: in a real pruned sweep the sampler would then propose other
    trials."""
    import optuna

    from sweepflow import tracking
    from sweepflow.config import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per replayed setting
    config = load_config(overrides=overrides)
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    curves = {}
    for number, run_id in unpruned["run_by_trial"].items():
        metric = {m.step: m.value for m in client.get_metric_history(run_id, config.sweep.metric)}
        loss = {m.step: -m.value for m in client.get_metric_history(run_id, "val/loss")}
        curves[int(number)] = {"metric": metric, "loss": loss,
                               "steps": unpruned["steps_by_trial"][number]}
    full = max(c["steps"] for c in curves.values())
    best = max(max(c["metric"].values()) for c in curves.values())
    settings = {f"halving first={share:.2f} factor={factor}":
                {"pruner": "halving", "pruner_warmup": share, "pruner_reduction_factor": factor}
                for share, factor in REPLAY_HALVING}
    settings |= {f"percentile p={p:.0f} startup={startup} warmup={warm:.2f}":
                 {"pruner": "percentile", "pruner_percentile": p,
                  "pruner_startup_trials": startup, "pruner_warmup": warm}
                 for p, startup, warm in REPLAY_PERCENTILE}
    out = {}
    for signal in ("loss", "metric"):
        for name, update in settings.items():
            sweep = config.sweep.model_copy(update={**update, "pruner_warmup_steps": 0})
            spent, kept = _replay(curves, signal, sweep, full)
            out[f"{name} signal={signal}"] = {
                "steps_ratio": spent / sum(c["steps"] for c in curves.values()),
                "best_delta_points": 100 * (kept - best)}
    return out


def _replay(curves: dict[int, dict[str, Any]], signal: str, sweep: Any, full: int
            ) -> tuple[int, float]:
    """Feed recorded trials, report by report, to the pruner of `sweep` in an in-memory
    study: the optimizer steps they would have used and the best value of those left to
    complete. As in StepPruning: no pruning before the warm-up nor at a trial's end."""
    import optuna
    from sweepflow.tasks.pruning import make_pruner, warmup_steps

    study = optuna.create_study(direction="maximize", pruner=make_pruner(sweep, full))
    spent, kept = 0, float("-inf")
    for _, curve in sorted(curves.items()):
        live = study.ask()
        final = max(curve["metric"].values())
        hold = warmup_steps(sweep, curve["steps"])
        for step, value in sorted(curve[signal].items()):
            live.report(value, step)
            if hold <= step < curve["steps"] and live.should_prune():
                study.tell(live, state=optuna.trial.TrialState.PRUNED)
                spent += step
                break
        else:
            study.tell(live, final)
            spent += curve["steps"]
            kept = max(kept, final)
    return spent, kept


def _sweep_from_mlflow(overrides: list[str], run_id: str) -> dict[str, Any]:
    """What the store says: the parent's sweep/* metrics and the children's optuna.* tags."""
    from sweepflow import tracking
    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{tracking.PARENT_TAG}` = '{run_id}'")
    states = [c.data.tags.get("optuna.state", "?") for c in children]
    steps = {int(c.data.tags["optuna.trial_number"]): int(c.data.tags.get("optuna.steps", 0))
             for c in children}
    run_ids = {int(c.data.tags["optuna.trial_number"]): c.info.run_id for c in children}
    metrics = parent.data.metrics
    return {"optimizer_steps": int(metrics["sweep/optimizer_steps"]),
            "child_steps": sum(steps.values()), "steps_by_trial": steps, "run_by_trial": run_ids,
            "best_value": metrics["sweep/best_value"], "trials": len(children),
            "states": {k: states.count(k) for k in sorted(set(states))}}


# -- 4. warm re-run --------------------------------------------------------------------------

def warm(ctx: Context) -> dict[str, Any]:
    """tasks.ingest.ingest + tasks.tokenize.tokenize twice on the default experiment's data;
    the second call finds both content-keyed caches."""
    import os

    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize

    from sweepflow.config import load_config

    config = load_config()
    times = []
    store = os.environ["SWEEPFLOW_HOME"]
    os.environ["SWEEPFLOW_HOME"] = str(ctx.home / "warm")  # cold: other sections cached it
    try:
        for _ in range(2):
            start = time.perf_counter()
            tokenize(config, ingest(config))
            times.append(time.perf_counter() - start)
    finally:
        os.environ["SWEEPFLOW_HOME"] = store
    return {"cold_seconds": times[0], "warm_seconds": times[1],
            "data": f"max_train_samples={config.data.max_train_samples}, "
                    f"max_eval_samples={config.data.max_eval_samples}"}


# -- 5. tracking -----------------------------------------------------------------------------

def tracking_cost(ctx: Context, throughput_result: dict[str, Any] | None) -> dict[str, Any]:
    """Lightning's MLFlowLogger (asynchronous) time per training step (from the sweepflow
    contender's fit) against one MlflowClient.log_metric round trip per step to the same
    kind of store."""
    s = ctx.sizes
    if throughput_result is None:
        prepared = prepare(s.train, s.eval)
        fitted = run_json(["bench.throughput", "sweepflow", "--warmup", str(s.warmup),
                           *prepared.overrides], ctx.env, timeout=1200)
    else:
        fitted = throughput_result["best"]["sweepflow"]
    naive = _naive_log_metric(50)
    buffered = fitted["mlflow_seconds"] / fitted["total_steps"]
    return {"buffered_seconds_per_step": buffered, "buffered_calls": fitted["mlflow_calls"],
            "steps": fitted["total_steps"], "naive_seconds_per_step": naive,
            "step_seconds": fitted["seconds_per_step"],
            "buffered_share_of_step": buffered / fitted["seconds_per_step"],
            "naive_share_of_step": naive / fitted["seconds_per_step"]}


def _naive_log_metric(n: int) -> float:
    from sweepflow import tracking
    from sweepflow.config import load_config

    config = load_config(overrides=["tracking.experiment=bench-tracking"])
    with tracking.managed_run(config, "naive-log-metric") as run_id:
        client = tracking.MlflowClient(tracking.tracking_uri(config))
        client.log_metric(run_id, "train/loss", 1.0, step=0)  # first-call setup
        start = time.perf_counter()
        for step in range(1, n + 1):
            client.log_metric(run_id, "train/loss", 1.0 / step, step=step)
        return (time.perf_counter() - start) / n
