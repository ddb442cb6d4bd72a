"""Bench sections `quality`, `quality_long` and `load`: time to the same quality, not samples
per second.

quality: every contender trains the same recipe on the same data, per seed its own split
(shared by all contenders), each run a fresh process (bench/quality.py), seeds in turn and the
contender order rotated per seed. The reference is fp32 + shuffled batches + stock dropout
(what HF Trainer's defaults do, inside sweepflow's own loop). Quality is test macro-F1 at the
end (mean and spread over the seeds). Time to quality is read from validation macro-F1 at the
checkpoints (the test split is too big to predict at every checkpoint on 2 cores): a
contender reaches the reference quality at the first checkpoint where its mean validation
macro-F1 over the seeds is at least the reference's mean final one (strict), or at least that
minus 0.5 point (the issue's "same quality"); its time to quality is the median over the
seeds of the training seconds up to that checkpoint. A contender whose test macro-F1 is below
FAILED_F1 on any seed did not learn and is reported as FAILED, never as fastest.

load: the default contender's trial alone and with one niced busy process beside it (ABBA).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import MAX_LENGTH, run_json, write_json

FAILED_F1 = 0.45  # one class predicted gives ~0.2-0.33 macro-F1 on 3 classes; TF-IDF ~0.6
SAME_QUALITY = 0.005  # the "same quality": within 0.5 point of macro-F1


def contender_env(env: dict[str, str], passive: bool = False) -> dict[str, str]:
    """Every contender runs with OpenMP's own wait policy, as sweepflow's CLI does on a
    machine that is not already full (sweepflow/console.py), so the comparison is of the
    training; `passive` gives OMP_WAIT_POLICY=PASSIVE instead. (The quality figures of
    2026-12-03 were measured with PASSIVE for every contender.)"""
    own = {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"}
    return {**own, "OMP_WAIT_POLICY": "PASSIVE"} if passive else own


def overrides_for(sizes: Any, seed: int, train: int, epochs: int) -> list[str]:
    return [f"seed={seed}", f"data.max_train_samples={train}",
            f"data.max_eval_samples={sizes.quality_eval}",
            f"data.test_fraction={sizes.quality_test_fraction}",
            f"tokenize.max_length={MAX_LENGTH}", "train.batch_size=32",
            f"train.max_epochs={epochs}"]


def prepare_seed(overrides: list[str]) -> dict[str, int]:
    """Ingest + tokenize in the parent (each child then finds the caches)."""
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize

    from sweepflow.config import load_config

    config = load_config(overrides=overrides)
    return dict(tokenize(config, ingest(config)).data.sizes)


def run_contenders(ctx: Any, names: tuple[str, ...], train: int, epochs: int,
                   checkpoints: int, data: list[str] | None = None) -> dict[str, Any]:
    """Each seed's contenders in turn (order rotated per seed); `quality_parallel` seeds at
    a time. `data`: overrides that replace the bundled tweets (a check set)."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = ctx.sizes.quality_seeds
    env = contender_env(ctx.env)
    overrides = {seed: overrides_for(ctx.sizes, seed, train, epochs) + (data or [])
                 for seed in seeds}
    sizes = {seed: prepare_seed(overrides[seed]) for seed in seeds}

    def lane(i: int) -> dict[str, Any]:
        seed, out = seeds[i], {}
        for name in names[i % len(names):] + names[:i % len(names)]:
            out[name] = run_json(["bench.quality", name, "--seed", str(seed), "--checkpoints",
                                  str(checkpoints), *overrides[seed]], env, timeout=7200)
            ctx.log(f"quality ({train} texts, {epochs} epoch(s)) seed {seed}: {name}: test "
                    f"F1 {out[name]['test_f1']:.4f}, {out[name]['train_seconds']:.0f} s")
        return out

    with ThreadPoolExecutor(ctx.sizes.quality_parallel) as pool:
        lanes = list(pool.map(lane, range(len(seeds))))
    runs = {n: {seed: lanes[i][n] for i, seed in enumerate(seeds)} for n in names}
    write_json(ctx.home / f"quality-{train}x{epochs}-{len(data or [])}.json", runs)
    return {"train_samples": train, "epochs": epochs, "seeds": list(seeds),
            "checkpoints": checkpoints, "split_sizes": sizes,
            "omp_wait_policy": env.get("OMP_WAIT_POLICY", "OpenMP's own"),
            "parallel_seeds": ctx.sizes.quality_parallel, "runs": runs, **summarise(runs)}


def _mean_curve(by_seed: dict[int, Any]) -> list[tuple[float, float, int]]:
    """Per checkpoint: mean test F1 over seeds, median training seconds, step."""
    per_seed = [r["points"] for r in by_seed.values()]
    n = min(len(p) for p in per_seed)
    return [(statistics.fmean(p[j]["val_f1"] for p in per_seed),
             statistics.median(p[j]["seconds"] for p in per_seed), per_seed[0][j]["step"])
            for j in range(n)]


def time_to(curve: list[tuple[float, float, int]], target: float) -> dict[str, Any] | None:
    for j, (f1, seconds, step) in enumerate(curve):
        if f1 >= target:
            return {"seconds": seconds, "step": step, "checkpoint": j + 1, "mean_f1": f1}
    return None


def summarise(runs: dict[str, dict[int, Any]]) -> dict[str, Any]:
    ref = statistics.fmean(r["test_f1"] for r in runs["reference"].values())
    ref_val = statistics.fmean(r["points"][-1]["val_f1"] for r in runs["reference"].values())
    out: dict[str, Any] = {}
    for name, by_seed in runs.items():
        f1s = [r["test_f1"] for r in by_seed.values()]
        curve = _mean_curve(by_seed)
        out[name] = {
            "test_f1": f1s, "mean_f1": statistics.fmean(f1s),
            "sd_f1": statistics.stdev(f1s) if len(f1s) > 1 else 0.0,
            "delta_vs_reference_points": 100 * (statistics.fmean(f1s) - ref),
            "failed": min(f1s) < FAILED_F1,
            "median_train_seconds": statistics.median(r["train_seconds"]
                                                      for r in by_seed.values()),
            "padding_share": statistics.fmean(r["padding_share"] for r in by_seed.values()),
            "curve": curve,
            "reach_same": time_to(curve, ref_val - SAME_QUALITY),
            "reach_strict": time_to(curve, ref_val),
        }
    ratios = {kind: _ratios(out, kind) for kind in ("reach_same", "reach_strict")}
    return {"reference_mean_f1": ref, "reference_mean_val_f1": ref_val, "summary": out,
            "ratio_vs": ratios}


def _ratios(out: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """sweepflow's time to quality against each other contender's: a contender that never
    reached the quality gives a lower bound (its whole training time)."""
    if "sweepflow" not in out:  # the check sets compare settings, not sweepflow vs HF
        return {}
    mine = out["sweepflow"][kind]
    ratios = {}
    for name, s in out.items():
        if name == "sweepflow" or mine is None or out["sweepflow"]["failed"]:
            continue
        other = s[kind]
        if s["failed"]:
            ratios[name] = {"ratio": None, "note": "FAILED (did not learn)"}
        elif other is None:
            ratios[name] = {"ratio": s["median_train_seconds"] / mine["seconds"],
                            "note": "not reached: lower bound from its whole training"}
        else:
            ratios[name] = {"ratio": other["seconds"] / mine["seconds"], "note": ""}
    return ratios


# -- sections --------------------------------------------------------------------------------

def quality(ctx: Any) -> dict[str, Any]:
    s = ctx.sizes
    return run_contenders(ctx, s.quality_contenders, s.quality_train, 1, s.quality_checkpoints)


def quality_long(ctx: Any) -> dict[str, Any]:
    s = ctx.sizes
    return run_contenders(ctx, s.long_contenders, s.long_train, s.long_epochs, 4)


def load(ctx: Any) -> dict[str, Any]:
    """The default trial (bench/quality.py `sweepflow`, seed 42, the quality data) alone,
    beside `nice -n 19 python -c 'while True: pass'`, and alone with OMP_WAIT_POLICY=PASSIVE
    (what the CLI sets on a full machine) instead of OpenMP's own policy, in the order alone,
    busy, passive, passive, busy, alone."""
    s = ctx.sizes
    seed = s.quality_seeds[0]
    overrides = overrides_for(s, seed, s.quality_train, 1)
    prepare_seed(overrides)
    kinds = ("alone", "busy", "passive", "passive", "busy", "alone")
    walls: dict[str, list[float]] = {"alone": [], "busy": [], "passive": []}
    for kind in kinds[:3 * s.load_rounds]:
        ctx.log(f"load: {kind}")
        busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"]
                                ) if kind == "busy" else None
        try:
            time.sleep(0.5 if busy else 0)
            r = run_json(["bench.quality", "sweepflow", "--seed", str(seed), "--checkpoints",
                          "1", *overrides], contender_env(ctx.env, kind == "passive"),
                         timeout=3600)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        walls[kind].append(r["train_seconds"])
    median = {k: statistics.median(v) for k, v in walls.items() if v}
    return {"train_samples": s.quality_train, "seed": seed, "walls": walls, "median": median,
            "ratio": median["busy"] / median["alone"],
            "passive_vs_own_idle": median["passive"] / median["alone"]}


def checks(ctx: Any) -> dict[str, Any]:
    """The trial-level speed settings against the reference recipe on the check sets
    (bench/checksets.py), one factor at a time, every seed; each set's results are written
    to the temporary folder as soon as it ends."""
    from bench import checksets

    s = ctx.sizes
    out: dict[str, Any] = {"contenders": list(s.checks_contenders)}
    for name in s.checks_sets:
        check = checksets.CHECK_SETS[name]
        path = checksets.build(name, ctx.home / "checksets")
        data = checksets.overrides(check, path, s.checks_eval)
        ctx.log(f"checks: {name}: {check.description}")
        start = time.perf_counter()
        out[name] = {"description": check.description, "max_length": check.max_length,
                     "epochs": s.checks_epochs,
                     **run_contenders(ctx, s.checks_contenders, s.checks_train or check.train,
                                      s.checks_epochs, s.checks_checkpoints, data),
                     "seconds": time.perf_counter() - start}
        write_json(ctx.home / f"checks-{name}.json", out[name])
    return out
