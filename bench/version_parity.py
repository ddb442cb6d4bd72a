"""A single-text, single-label trial's training time on two checkouts, interleaved.

`python -m bench.version_parity OLD_ROOT NEW_ROOT --repeats 3 [--set KEY=VALUE ...]`: each
repeat fits the same trial (bundled tweets, 640 training rows, 1 epoch, batch 32, max_length
64) once per checkout, each in its own process and store, old and new alternating, and
reports training rows/s and real tokens/s (medians and best of each side) and the ingest +
tokenize seconds. The checkouts' code is imported
from a package folder of symlinks (sweepflow, tasks, flows, conf), so one .venv serves both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The batch order and dropout are set on both sides: c9e67b4's defaults were bucketed batches and
# cheap dropout, main's (since issue 25) are shuffled batches and stock dropout.
OVERRIDES = ["tokenize.max_length=64", "data.max_train_samples=640",
             "data.max_eval_samples=200", "train.max_epochs=1", "train.val_checks_per_epoch=1",
             "train.batching=shuffle", "train.fast_dropout=false"]


def package_folder(root: Path, into: Path) -> Path:
    """A folder holding `sweepflow/` laid out as installed, its parts symlinked from `root`."""
    pkg = into / "sweepflow"
    pkg.mkdir(parents=True)
    for entry in (root / "sweepflow").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for part in ("tasks", "flows", "conf"):
        (pkg / part).symlink_to(root / part)
    return into


def child(overrides: list[str]) -> None:
    """Fit once with the checkout on sys.path; print the fit's time as JSON."""
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import load_tokenized, tokenize
    from sweepflow.tasks.train import fit

    import sweepflow
    from sweepflow.config import load_config

    print(f"sweepflow from {Path(sweepflow.__file__).resolve().parent.parent}", file=sys.stderr)

    config = load_config(overrides=overrides)
    prep = time.perf_counter()
    tokens = tokenize(config, ingest(config))
    prep = time.perf_counter() - prep
    train = load_tokenized(tokens.path)["train"]
    real_tokens = sum(len(ids) for ids in train["input_ids"])
    start = time.perf_counter()
    _, fitted = fit(tokens, config.train, config.seed, "val/f1_macro", "max", progress=False)
    print(json.dumps({"wall": time.perf_counter() - start, "fit_seconds": fitted.seconds,
                      "steps": fitted.steps, "samples": fitted.samples,
                      "best": fitted.best_value, "train_tokens": real_tokens,
                      "ingest_tokenize_seconds": prep}))


def run(root: Path, tmp: Path, tag: str, overrides: list[str]) -> dict:
    """One fit in a fresh process: this file run as a script from `tmp`, so the only
    `sweepflow` on sys.path is the checkout's package folder (not the .venv's editable one)."""
    from bench.common import OFFLINE_ENV

    path = package_folder(root, tmp / f"pkg-{tag}")
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(path),
           "SWEEPFLOW_HOME": str(tmp / f"store-{tag}")}
    out = subprocess.run([sys.executable, __file__, "--child", "--set", *overrides], env=env,
                         cwd=tmp, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{tag} fit failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.version_parity")
    parser.add_argument("old", nargs="?")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides, both sides")
    parser.add_argument("--out", default="bench/version_parity-results.json")
    args = parser.parse_args()
    if args.child:  # the parent passes the whole list
        return child(args.set)
    overrides = OVERRIDES + args.set
    from bench.common import write_json
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.repeats):
        for tag, root in (("old", args.old), ("new", args.new))[:: 1 if i % 2 == 0 else -1]:
            with tempfile.TemporaryDirectory(prefix="sweepflow-parity-") as tmp:
                results[tag].append(run(Path(root), Path(tmp), tag, overrides))
            r = results[tag][-1]
            print(f"{tag} repeat {i}: fit {r['fit_seconds']:.1f} s, {r['steps']} steps, "
                  f"{r['samples'] / r['fit_seconds']:.1f} rows/s, load {r['load']:.1f}",
                  flush=True)
    def per_side(value, agg=statistics.median) -> dict[str, float]:
        return {t: agg(value(r) for r in rs) for t, rs in results.items()}

    # medians: one repeat disturbed by another process should not decide the ratio
    rate = per_side(lambda r: r["samples"] / r["fit_seconds"])
    token_rate = per_side(lambda r: r["train_tokens"] / r["fit_seconds"])
    prep = per_side(lambda r: r["ingest_tokenize_seconds"])
    best = per_side(lambda r: r["samples"] / r["fit_seconds"], max)
    ratio = rate["new"] / rate["old"]
    token_ratio = token_rate["new"] / token_rate["old"]
    print(f"new/old training rows per second: {ratio:.3f}; "
          f"real tokens per second: {token_ratio:.3f} (medians); ingest + tokenize "
          f"{prep['old']:.1f} s old, {prep['new']:.1f} s new; best of each: "
          f"{best['new'] / best['old']:.3f}")
    write_json(Path(args.out), {"old": args.old, "new": args.new, "overrides": overrides,
                                "results": results, "ratio_new_over_old": ratio,
                                "token_ratio_new_over_old": token_ratio,
                                "best_ratio_new_over_old": best["new"] / best["old"],
                                "ingest_tokenize_seconds": prep})


if __name__ == "__main__":
    main()
