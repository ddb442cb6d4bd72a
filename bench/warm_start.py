"""Warm start on a grown data set (`python -m bench.warm_start`): what does enqueueing last
night's best params save on the next night?

Night 1 runs `sweepflow run` on the first `--rows` of a fixed shuffle of the bundled tweets;
night 2 runs on the same rows plus 50 % more (stable hash splits: every night-1 row keeps its
split). Night 2 is run three ways from copies of night 1's store:

- `warm`: the default (`sweep.warm_start=2`): the first two trials re-try night 1's best two;
- `continued`: the same study without warm start (TPE still sees night 1's trials);
- `fresh`: a new study for the new data (`sweep.continue_study=false`), as before warm start.

Per seed, the target is the best night-2 validation macro-F1 any arm reached, minus 0.5 pt;
each arm reports the trials, optimizer steps and trial seconds it spent until its best-so-far
was within the target, and its best after each trial. Trial seconds are wall time on whatever
else the machine does (arms run one after another per seed), so steps and trials are the
figures to compare; seconds are for scale. Results: bench/warm_start-results.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, bench_env, write_json

ARMS = {
    "warm": ["sweep.warm_start=2"],
    "continued": ["sweep.warm_start=0"],
    "fresh": ["sweep.warm_start=0", "sweep.continue_study=false"],
}
TOLERANCE = 0.005  # within 0.5 point of the best night-2 score any arm reached


def build_nights(folder: Path, rows: int) -> tuple[Path, Path]:
    """night1.csv: `rows` tweets of a fixed shuffle; night2.csv: the same plus rows // 2."""
    import pandas as pd
    from sweepflow.tasks.ingest import BUNDLED_ENCODING, bundled_data_path

    df = pd.read_csv(bundled_data_path(), encoding=BUNDLED_ENCODING)[["text", "sentiment"]]
    df = df.dropna().sample(frac=1.0, random_state=0)
    night1, night2 = folder / "night1.csv", folder / "night2.csv"
    # QUOTE_ALL: some tweets hold a bare carriage return, which pandas leaves unquoted.
    df.head(rows).to_csv(night1, index=False, quoting=csv.QUOTE_ALL)
    df.head(rows + rows // 2).to_csv(night2, index=False, quoting=csv.QUOTE_ALL)
    return night1, night2


def run_night(home: Path, data: Path, seed: int, trials: int, extra: list[str]) -> None:
    cmd = [str(Path(sys.executable).parent / "sweepflow"), "run", f"data.path={data}",
           f"seed={seed}", f"sweep.n_trials={trials}", "sweep.study_name=warm",
           "data.max_train_samples=null", "data.max_eval_samples=null",
           "registry.enabled=false", "compress.enabled=false", "drift.enabled=false", *extra]
    proc = subprocess.run(cmd, env=bench_env(home), cwd=home, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")


def night2_trials(home: Path) -> list[dict[str, Any]]:
    """Night 2's trials in order: those on the newest basis (the basis of the last trial)."""
    import optuna
    from sweepflow.tasks.sweep import BASIS_ATTR, WARM_ATTR

    storage = f"sqlite:///{home / 'store' / 'optuna.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    latest = max(summaries, key=lambda s: s.datetime_start or 0).study_name
    trials = optuna.load_study(study_name=latest, storage=storage).get_trials(deepcopy=False)
    key = trials[-1].user_attrs.get(BASIS_ATTR)
    out = []
    for t in trials:
        if t.user_attrs.get(BASIS_ATTR) != key or not t.state.is_finished():
            continue
        out.append({"number": t.number, "state": t.state.name, "value": t.value,
                    "steps": max(t.intermediate_values, default=0),
                    "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
                    "warm": WARM_ATTR in t.user_attrs, "params": t.params})
    return out


def reach(trials: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Trials, steps and seconds until the best-so-far complete value is >= target."""
    best, steps, seconds, curve = None, 0, 0.0, []
    reached = None
    for i, t in enumerate(trials, 1):
        steps, seconds = steps + t["steps"], seconds + t["seconds"]
        if t["state"] == "COMPLETE" and (best is None or t["value"] > best):
            best = t["value"]
        curve.append(best)
        if reached is None and best is not None and best >= target:
            reached = {"trials": i, "steps": steps, "seconds": round(seconds, 1)}
    return {"reached": reached, "best": best, "best_so_far": curve,
            "total_steps": steps, "total_seconds": round(seconds, 1)}


def one_seed(work: Path, nights: tuple[Path, Path], seed: int, trials: int) -> dict[str, Any]:
    base = work / f"seed-{seed}" / "night1"
    base.mkdir(parents=True)
    run_night(base, nights[0], seed, trials, [])
    arms: dict[str, list[dict[str, Any]]] = {}
    for arm, extra in ARMS.items():
        home = work / f"seed-{seed}" / arm
        shutil.copytree(base, home)
        run_night(home, nights[1], seed, trials, extra)
        arms[arm] = night2_trials(home)
    values = [t["value"] for ts in arms.values() for t in ts if t["state"] == "COMPLETE"]
    target = max(values) - TOLERANCE
    return {"target": target, "arms": {arm: {**reach(ts, target), "trials": ts}
                                       for arm, ts in arms.items()}}


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ARMS:
        rows = [r["arms"][arm] for r in per_seed.values()]
        hits = [r["reached"] for r in rows if r["reached"]]
        out[arm] = {"reached_target": f"{len(hits)}/{len(rows)}",
                    "mean_trials_to_target": _mean([h["trials"] for h in hits]),
                    "mean_steps_to_target": _mean([h["steps"] for h in hits]),
                    "mean_seconds_to_target": _mean([h["seconds"] for h in hits]),
                    "mean_first_trial": _mean([r["best_so_far"][0] for r in rows
                                               if r["best_so_far"][0] is not None]),
                    "mean_best": _mean([r["best"] for r in rows if r["best"] is not None])}
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="42,7,13")
    parser.add_argument("--rows", type=int, default=2000, help="night-1 rows (night 2: +50 %)")
    parser.add_argument("--trials", type=int, default=4, help="trials per night")
    parser.add_argument("--out", default=str(ROOT / "bench" / "warm_start-results.json"))
    args = parser.parse_args()
    os.environ.update(bench_env(Path(tempfile.gettempdir())))
    per_seed: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        work = Path(tmp)
        nights = build_nights(work, args.rows)
        for seed in (int(s) for s in args.seeds.split(",")):
            per_seed[seed] = one_seed(work, nights, seed, args.trials)
            write_json(args.out, {"settings": vars(args), "per_seed": per_seed,
                                  "summary": summarise(per_seed)})
    print(summarise(per_seed))


if __name__ == "__main__":
    main()
