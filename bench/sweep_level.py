"""Sweep level (issue 25, points 1, 2 and 4): how soon a whole sweep hands over a model within
0.5 point (test macro-F1) of the best model its search space holds.

    python -m bench.sweep_level [--quick] [--only reference,contenders] [--seeds 42,7,13]
        [--train 4096] [--trials 12] [--cap-minutes 45] [--contenders a,b] [--redo PART]
        [--check-set airline2|posts]

reference: a grid over sweepflow's default search space (conf/base.yaml `sweep.space`: 4
learning rates log-spaced x 3 weight decays x 2 warm-ups = 24 configs), every config trained
fully by tasks/train.py `fit` (a trial without pruning, best weights by validation) for each
seed and scored on the test split; the reference optimum is the best config's mean test
macro-F1 over the seeds.

contenders (bench/sweep_contenders.py, a fresh process each): sweepflow's default sweep, HF
Trainer hyperparameter_search (Optuna backend), Ray Tune with ASHA, Optuna alone with
optuna-integration's Lightning pruning callback, random search without pruning. Same space,
data (one tokenized dataset), trial budget and wall-clock cap; per sweep seed, the contender
order rotated per seed. A trial that ends after the cap does not count.

Results are merged into bench/sweep_level-results.json (--quick: bench/sweep_level-quick.json):
a part stored with the same setup is reused (the reference is measured once; a contender's
seed only when missing), unless named in --redo. The plot (best-so-far test macro-F1 against
wall time) is written beside it as .png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import MAX_LENGTH, OFFLINE_ENV, ROOT, apply_env, bench_env, write_json
from bench.sweep_contenders import NAMES, PEERS

PARTS = ("reference", "contenders")
FAILED_F1 = 0.45  # bench/ttq.py: a single-class model scores 0.2-0.33 on 3 classes
SAME_QUALITY = 0.005  # within 0.5 point of the reference optimum
NEEDS_PREFECT = set(NAMES) - set(PEERS)  # sweepflow's own pipeline, whatever its settings
SHARED = ROOT / "bench" / "results.json"  # the stored reference optimum (issue 25, point 1)

os.environ.update(OFFLINE_ENV)  # before transformers or datasets are imported


@dataclass(frozen=True)
class Setup:
    """What one measurement is: the same setup is reused from the results file."""

    train: int
    eval: int
    test_fraction: float
    data_seed: int
    epochs: int
    seeds: tuple[int, ...]
    trials: int
    cap_seconds: float
    lr_points: int
    configs: int  # reference configs (0 = the whole grid)
    check_set: str | None = None  # bench/checksets.py name; None = the bundled tweets
    check_path: str = ""  # its file, built in the run's temporary folder
    space: tuple[str, ...] = ()  # sweep.space overrides: another search space for every part

    def data(self) -> list[str]:
        """The overrides every child gets: the data, tokenized once by the parent."""
        if self.check_set:  # the check set's file, columns and max_length; the sizes here
            from bench import checksets

            check = checksets.CHECK_SETS[self.check_set]
            return [*self.space, *checksets.overrides(check, Path(self.check_path), self.eval),
                    f"seed={self.data_seed}", f"data.max_train_samples={self.train}",
                    f"data.test_fraction={self.test_fraction}",
                    f"train.max_epochs={self.epochs}",
                    f"tracking.experiment=bench-sweep-level-{self.check_set}"]
        return [*self.space, f"seed={self.data_seed}", f"data.max_train_samples={self.train}",
                f"data.max_eval_samples={self.eval}", f"data.test_fraction={self.test_fraction}",
                f"tokenize.max_length={MAX_LENGTH}", "train.batch_size=32",
                f"train.max_epochs={self.epochs}", "tracking.experiment=bench-sweep-level"]

    def key(self, part: str) -> dict[str, Any]:
        data = {"train": self.train, "eval": self.eval, "test_fraction": self.test_fraction,
                "data_seed": self.data_seed, "epochs": self.epochs,
                **({"check_set": self.check_set} if self.check_set else {}),
                **({"space": list(self.space)} if self.space else {})}
        if part == "reference":
            return {**data, "seeds": list(self.seeds), "lr_points": self.lr_points,
                    "configs": self.configs}
        return {**data, "trials": self.trials, "cap_seconds": self.cap_seconds}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep_level",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 256 texts, 2 configs, 1 seed, 2 trials")
    parser.add_argument("--only", default=",".join(PARTS), help="reference,contenders")
    parser.add_argument("--contenders", default=",".join(NAMES))
    parser.add_argument("--redo", default="", help="parts or contenders to measure again")
    parser.add_argument("--seeds", help="sweep and reference seeds (default 42,7,13)")
    parser.add_argument("--train", type=int, help="training texts (default 4096)")
    parser.add_argument("--eval", type=int, help="validation texts (default 1000)")
    parser.add_argument("--test-fraction", type=float, help="test split share (default 0.2)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--trials", type=int, help="trials per sweep (default 12)")
    parser.add_argument("--cap-minutes", type=float, help="wall-clock cap per sweep (45)")
    parser.add_argument("--lr-points", type=int, default=4, help="reference learning rates")
    parser.add_argument("--configs", type=int, help="reference configs, evenly picked (all)")
    parser.add_argument("--check-set", choices=("airline2", "posts"),
                        help="a check set (bench/checksets.py) instead of the bundled tweets; "
                        "its reference stays in --out, not in bench/results.json")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=VALUE",
                        help="another search space for the reference and every contender: "
                        "'sweep.space={learning_rate: {type: float, low: 1.0e-5, ...}, ...}' "
                        "(a space given replaces the whole default one); its reference stays "
                        "in --out, not in bench/results.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    parser.add_argument("--out", help="results file")
    args = parser.parse_args()
    for name in ("only", "contenders", "redo"):
        setattr(args, name, [s.strip() for s in getattr(args, name).split(",") if s.strip()])
    unknown = (set(args.only) - set(PARTS)) | (set(args.contenders) - set(NAMES))
    if unknown:
        parser.error(f"unknown {sorted(unknown)}; parts {PARTS}, contenders {NAMES}")
    return args


def make_setup(args: argparse.Namespace) -> Setup:
    quick = args.quick
    seeds = args.seeds or ("42" if quick else "42,7,13")
    return Setup(train=args.train or (256 if quick else 4096),
                 eval=args.eval or (128 if quick else 1000),
                 test_fraction=args.test_fraction or (0.02 if quick else 0.2),
                 data_seed=42, epochs=args.epochs,
                 seeds=tuple(int(s) for s in seeds.split(",")),
                 trials=args.trials or (2 if quick else 12),
                 cap_seconds=60 * (args.cap_minutes or (15 if quick else 45)),
                 lr_points=args.lr_points, configs=args.configs or (2 if quick else 0),
                 check_set=args.check_set, space=tuple(args.space))


# -- the reference grid ---------------------------------------------------------------------

def grid_configs(space: dict[str, Any], lr_points: int, float_points: int = 3
                 ) -> list[dict[str, Any]]:
    """Every combination of: the learning rate at `lr_points` values, other floats at
    `float_points` values (log-spaced where the space is log), ints at every step up to that
    many values, categoricals at every choice."""
    import itertools

    import numpy as np

    from sweepflow.config import CategoricalParam, IntParam

    axes = {}
    for name, p in space.items():
        n = lr_points if name == "learning_rate" else float_points
        if isinstance(p, CategoricalParam):
            axes[name] = list(p.choices)
        elif isinstance(p, IntParam):
            axes[name] = sorted({int(round(v)) for v in np.linspace(p.low, p.high, n)})
        else:
            values = np.geomspace(p.low, p.high, n) if p.log else np.linspace(p.low, p.high, n)
            axes[name] = [float(f"{v:.4g}") for v in values]
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def pick(configs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n configs spread evenly over the grid (n = 0: all)."""
    if not n or n >= len(configs):
        return configs
    return [configs[round(i * (len(configs) - 1) / max(n - 1, 1))] for i in range(n)]


def label(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def reference(run: Run, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The grid, one child per config (every seed in it); results saved after each config,
    so a run stopped half-way resumes where it stopped."""
    from sweepflow.config import load_config

    key = run.setup.key("reference")
    configs = pick(grid_configs(load_config(overrides=list(run.setup.space)).sweep.space,
                                run.setup.lr_points),
                   run.setup.configs)
    shared = stored_reference()
    if (stored is None or stored.get("setup") != key) and shared.get("setup") == key:
        stored = shared  # bench/results.json holds the last measured reference (point 1)
    same = stored is not None and stored.get("setup") == key and "reference" not in run.redo
    if same and stored.get("complete"):
        run.log(f"reference: reused ({stored['best']['label']}: "
                f"{stored['best_mean_f1']:.4f}, measured {stored['measured']['date']})")
        return stored
    done = dict(stored.get("runs", {})) if same else {}
    for i, params in enumerate(configs):
        name = label(params)
        if name in done:
            continue
        done[name] = run.child(["reference", "--params", json.dumps(params), "--seeds",
                                ",".join(map(str, run.setup.seeds))], f"reference-{i}",
                               timeout=7200)
        f1s = [r["test_f1"] for r in done[name].get("runs", [])]
        run.log(f"reference {i + 1}/{len(configs)} {name}: test F1 "
                + (" ".join(f"{f:.4f}" for f in f1s) or done[name].get("error", "")[-200:]))
        run.save("reference", summarise_reference(key, done, len(done) == len(configs)))
    result = summarise_reference(key, done, True)
    if not run.setup.check_set and not run.setup.space:
        store_reference(result, run.out)
    return result


def _same_grid(reference: dict[str, Any], setup: Setup) -> bool:
    """A reference measured on this data and grid, whatever the sweep seeds of this run
    (the reference's own training seeds are in its setup)."""
    def grid(key: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in key.items() if k != "seeds"}
    return bool(reference) and grid(reference["setup"]) == grid(setup.key("reference"))


def _shared_results() -> dict[str, Any]:
    try:
        return json.loads(SHARED.read_text())
    except (OSError, ValueError):
        return {}


def stored_reference() -> dict[str, Any]:
    return (_shared_results().get("sweep_level") or {}).get("reference") or {}


def store_reference(reference: dict[str, Any], out: Path) -> None:
    """The complete reference also goes to bench/results.json `sweep_level`, where any later
    run with the same setup finds it (whatever its --out)."""
    results = _shared_results()
    results["sweep_level"] = {"reference": reference, "contenders_in": out.name}
    write_json(SHARED, results)


def summarise_reference(key: dict[str, Any], done: dict[str, Any], complete: bool
                        ) -> dict[str, Any]:
    rows = {}
    for name, r in done.items():
        if "runs" not in r:
            rows[name] = {"error": r.get("error", "")[-500:]}
            continue
        f1s = [x["test_f1"] for x in r["runs"]]
        rows[name] = {"params": r["params"], "test_f1": f1s, "mean_f1": statistics.fmean(f1s),
                      "sd_f1": statistics.stdev(f1s) if len(f1s) > 1 else 0.0,
                      "mean_val_f1": statistics.fmean(x["val_f1"] for x in r["runs"])}
    ok = {n: r for n, r in rows.items() if "mean_f1" in r}
    best = max(ok, key=lambda n: ok[n]["mean_f1"]) if ok else None
    trainings = [x for r in done.values() for x in r.get("runs", [])]
    return {"setup": key, "complete": complete, "configs": rows,
            "best": {"label": best, **ok[best]} if best else None,
            "best_mean_f1": ok[best]["mean_f1"] if best else None,
            "cost": {"trainings": len(trainings),
                     "seconds": sum(x["seconds"] for x in trainings),
                     "fit_seconds": sum(x["fit_seconds"] for x in trainings),
                     "steps": sum(x["steps"] for x in trainings)},
            "runs": done, "measured": stamp()}


# -- the contenders -------------------------------------------------------------------------

def contenders(run: Run, stored: dict[str, Any] | None) -> dict[str, Any]:
    """Each seed's contenders in turn, the order rotated per seed; saved after each sweep."""
    key = run.setup.key("contenders")
    runs: dict[str, dict[str, Any]] = {}
    if stored is not None and stored.get("setup") == key and "contenders" not in run.redo:
        runs = {n: dict(by_seed) for n, by_seed in stored.get("runs", {}).items()}
    names = run.names
    for i, seed in enumerate(run.setup.seeds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if str(seed) in runs.get(name, {}) and name not in run.redo:
                continue
            result = run.child([name, "--seed", str(seed), "--trials", str(run.setup.trials),
                                "--cap", str(run.setup.cap_seconds)], f"{name}-{seed}",
                               timeout=run.setup.cap_seconds + 3600)
            runs.setdefault(name, {})[str(seed)] = result
            run.log(f"{name} seed {seed}: " + describe(result))
            run.save("contenders", {"setup": key, "runs": runs, "measured": stamp()})
    return {"setup": key, "runs": runs, "measured": stamp()}


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED: " + result["error"].strip().splitlines()[-1][:300]
    last = result["trials"][-1] if result["trials"] else {}
    f1 = last.get("test_f1")
    return (f"{len(result['trials'])} trials, {result['steps']} steps, "
            f"{result['seconds']:.0f} s, chosen test F1 "
            + ("-" if f1 is None else f"{f1:.4f}"))


def outcome(result: dict[str, Any], target: float | None, cap: float) -> dict[str, Any]:
    """One sweep: when its chosen model first reached the target (seconds, steps, trials),
    the chosen model at the end of the sweep (within the cap), trials and steps spent."""
    if "error" in result:
        return {"failed": True, "error": result["error"].strip()[-500:]}
    trials = [t for t in result["trials"] if t["end_seconds"] <= cap]
    steps, reached = 0, None
    for n, t in enumerate(trials, 1):
        steps += t["steps"]
        if reached is None and target is not None and (t["test_f1"] or 0.0) >= target:
            reached = {"seconds": t["end_seconds"], "steps": steps, "trials": n}
    found = trials[-1]["test_f1"] if trials else None
    states = [t["state"] for t in trials]
    return {"reached": reached, "found_f1": found, "trials": len(trials), "steps": steps,
            "seconds": min(result["seconds"], cap),
            "states": {s: states.count(s) for s in sorted(set(states))},
            "over_cap": len(result["trials"]) - len(trials),
            "failed": found is None or found < FAILED_F1}


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample sd and range of one figure over the sweep seeds."""
    if not values:
        return {"mean": None, "sd": None, "range": None}
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "range": [min(values), max(values)]}


def summarise(runs: dict[str, dict[str, Any]], ref_best: float | None, cap: float
              ) -> dict[str, Any]:
    """Per contender over the seeds: time, trials and optimizer steps to the target (the
    trials and steps do not depend on the machine's load; a seed that did not reach it counts
    its whole sweep, and the figures are then lower bounds), the found quality, trials and
    steps spent, each as mean, sd and range; and each one's time against sweepflow's.
    A seed that crashed or whose chosen model did not learn is failed (listed); a crashed one
    has no figures to count."""
    target = None if ref_best is None else ref_best - SAME_QUALITY
    out: dict[str, Any] = {"target_f1": target, "reference_optimum_f1": ref_best}
    for name, by_seed in runs.items():
        seeds = {s: outcome(r, target, cap) for s, r in by_seed.items()}
        ok = [o for o in seeds.values() if "error" not in o]
        found = [o["found_f1"] for o in ok if o["found_f1"] is not None]

        def to_target(key: str, total: str, ok: list[dict[str, Any]] = ok) -> dict[str, Any]:
            return spread([(o["reached"] or {}).get(key, o[total]) for o in ok])

        time_, trials_, steps_ = (to_target("seconds", "seconds"),
                                  to_target("trials", "trials"), to_target("steps", "steps"))
        found_ = spread(found)
        out[name] = {
            "seeds": seeds, "failed": any(o["failed"] for o in seeds.values()),
            "failed_seeds": [s for s, o in seeds.items() if o["failed"]],
            "reached": f"{sum(o['reached'] is not None for o in ok)}/{len(seeds)}",
            "lower_bound": any(o["reached"] is None for o in ok),
            "seconds_to_target": time_, "trials_to_target": trials_,
            "steps_to_target": steps_,
            "mean_seconds_to_target": time_["mean"], "mean_trials_to_target": trials_["mean"],
            "mean_steps_to_target": steps_["mean"],
            "found_f1": found_["mean"], "found_sd": found_["sd"],
            "found_range": found_["range"],
            "mean_trials": spread([o["trials"] for o in ok])["mean"],
            "mean_steps": spread([o["steps"] for o in ok])["mean"],
            "mean_sweep_seconds": spread([o["seconds"] for o in ok])["mean"]}
    for key in ("seconds", "steps"):
        mine = out.get("sweepflow", {}).get(f"mean_{key}_to_target")
        for name in runs:
            other = out[name][f"mean_{key}_to_target"]
            out[name][f"{'time' if key == 'seconds' else key}_vs_sweepflow"] = (
                other / mine if mine and other is not None else None)
    return out


# -- the plot -------------------------------------------------------------------------------

def plot(runs: dict[str, dict[str, Any]], ref_best: float | None, cap: float, path: Path,
         title: str) -> None:
    """Best-so-far test macro-F1 (the chosen model's) against wall time: per contender the
    mean over the seeds (where every seed has a chosen model) and the min-max band."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, by_seed in runs.items():
        curves = [[(t["end_seconds"], t["test_f1"]) for t in r["trials"]
                   if t["test_f1"] is not None and t["end_seconds"] <= cap]
                  for r in by_seed.values() if "trials" in r]
        curves = [c for c in curves if c]
        if not curves:
            continue
        grid = np.linspace(0, max(c[-1][0] for c in curves), 500)
        values = np.array([_steps(c, grid) for c in curves])
        every = ~np.isnan(values).any(axis=0)
        mean = np.where(every, np.nan_to_num(values).mean(axis=0), np.nan)
        line = ax.plot(grid / 60, mean, label=f"{name} ({len(curves)} seeds)")[0]
        ax.fill_between(grid / 60, np.where(every, np.nan_to_num(values).min(axis=0), np.nan),
                        np.where(every, np.nan_to_num(values).max(axis=0), np.nan),
                        color=line.get_color(), alpha=0.15, linewidth=0)
    if ref_best is not None:
        ax.axhline(ref_best, color="black", linestyle="--", linewidth=1,
                   label=f"reference optimum {ref_best:.4f}")
        ax.axhline(ref_best - SAME_QUALITY, color="black", linestyle=":", linewidth=1,
                   label="within 0.5 point")
    ax.set_xlabel("sweep wall time (minutes)")
    ax.set_ylabel("chosen model's test macro-F1")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _steps(curve: list[tuple[float, float]], grid: Any) -> Any:
    """A step function: the value of the last point at or before each grid time (NaN before
    the first)."""
    import numpy as np

    ends = np.array([c[0] for c in curve])
    vals = np.array([c[1] for c in curve], dtype=float)
    idx = np.searchsorted(ends, grid, side="right") - 1
    return np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.nan)


# -- running --------------------------------------------------------------------------------

def stamp() -> dict[str, str]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


@dataclass
class Run:
    """One invocation: its setup, environment, temporary folder and results file."""

    setup: Setup
    env: dict[str, str]
    home: Path
    out: Path
    names: list[str]
    redo: list[str]
    results: dict[str, Any]
    log: Any

    def child(self, args: list[str], name: str, timeout: float) -> dict[str, Any]:
        """`python -m bench.sweep_contenders ...` in its own process group (a sweep's Ray or
        Prefect processes go with it); its output to a log file. A failure is returned as
        {"error": ...} with the log's tail."""
        work = self.home / "work" / name
        out, log = self.home / f"{name}.json", self.home / f"{name}.log"
        cmd = [sys.executable, "-m", "bench.sweep_contenders", *args, "--work", str(work),
               "--out", str(out), *self.setup.data()]
        with log.open("w") as sink:
            proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = f"killed after {timeout:.0f} s"
            finally:
                _kill_group(proc)
        shutil.rmtree(work, ignore_errors=True)
        if code != 0 or not out.is_file():
            return {"error": f"exit {code}: {log.read_text(errors='replace')[-3000:]}"}
        return json.loads(out.read_text())

    def save(self, part: str, value: dict[str, Any]) -> None:
        self.results[part] = value
        write_json(self.out, self.results)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "lightning", "optuna", "optuna-integration", "ray",
                 "prefect", "mlflow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    args = parse_args()
    setup = make_setup(args)
    out = Path(args.out or ROOT / "bench" / ("sweep_level-quick.json" if args.quick
                                            else "sweep_level-results.json"))
    home = Path(tempfile.mkdtemp(prefix="sweepflow-sweeplevel-"))
    if setup.check_set:
        from bench import checksets

        setup = replace(setup, check_path=str(checksets.build(setup.check_set,
                                                               home / "checksets")))
    env = bench_env(home, RAY_USAGE_STATS_ENABLED="0")
    apply_env(env)
    import matplotlib

    matplotlib.use("Agg")
    from rich.console import Console

    from bench.__main__ import machine
    from bench.ttq import prepare_seed

    console = Console(width=None if sys.stdout.isatty() else 140)
    try:
        results = json.loads(out.read_text())
    except (OSError, ValueError):
        results = {}
    shared = stored_reference()
    if "reference" not in results and _same_grid(shared, setup):
        results["reference"] = shared  # the target of a contenders-only run
    run = Run(setup, env, home, out, [n for n in NAMES if n in args.contenders], args.redo,
              results, console.log)
    try:
        sizes = prepare_seed(setup.data())  # ingest + tokenize once: the children find it
        console.log(f"data: {sizes} (seed {setup.data_seed}); store {home}")
        measure(run, args.only)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    report(run, {**machine(), "versions": versions(), "quick": args.quick, "splits": sizes})


def measure(run: Run, parts: list[str]) -> None:
    from bench.prefect_server import prefect_server

    with ExitStack() as stack:
        if "reference" in parts:
            run.save("reference", reference(run, run.results.get("reference")))
        if "contenders" in parts:
            if NEEDS_PREFECT & set(run.names):  # started once, not timed (bench/prefect_server)
                server = stack.enter_context(prefect_server(run.env, run.home / "prefect.log"))
                run.env["PREFECT_API_URL"] = server.api_url
            run.save("contenders", contenders(run, run.results.get("contenders")))


def report(run: Run, meta: dict[str, Any]) -> None:
    """Summary (merged results), plot, and a short table on the console."""
    ref = run.results.get("reference") or {}
    ref_best = ref.get("best_mean_f1")
    runs = (run.results.get("contenders") or {}).get("runs", {})
    cap = (run.results.get("contenders") or {}).get("setup", {}).get("cap_seconds", 1e12)
    run.results["summary"] = summarise(runs, ref_best, cap)
    run.results["meta"] = meta
    png = run.out.with_suffix(".png")
    if runs:
        s = run.setup
        plot(runs, ref_best, cap, png,
             f"{s.train} {s.check_set or 'tweets'} x {s.epochs} epoch, {s.trials} trials per "
             f"sweep, cap "
             f"{cap / 60:.0f} min; mean over sweep seeds, band = min-max; {meta['cpu']} "
             f"({meta['cores']} cores), {time.strftime('%Y-%m-%d')}")
        run.results["plot"] = png.name
    write_json(run.out, run.results)
    if ref_best is not None:
        run.log(f"reference optimum {ref_best:.4f} ({ref['best']['label']}); cost "
                f"{ref['cost']['seconds'] / 60:.1f} min, {ref['cost']['steps']} steps")
    for name, s in run.results["summary"].items():
        if isinstance(s, dict) and "reached" in s:
            t = s["mean_seconds_to_target"]
            bound = ">=" if s["lower_bound"] else ""
            run.log(f"{name:10} reached {s['reached']}, "
                    + ("-" if t is None else f"{bound}{t:.0f} s, "
                       f"{bound}{s['mean_trials_to_target']:.1f} trials, "
                       f"{bound}{s['mean_steps_to_target']:.0f} steps")
                    + f", found {s['found_f1'] or 0:.4f}, "
                    + (f"FAILED seeds {s['failed_seeds']}" if s["failed"] else "ok"))
    run.log(f"results: {run.out}" + (f", plot {png}" if runs else ""))


if __name__ == "__main__":
    main()
