"""`make bench` / `python -m bench [--quick] [--only NAME[,NAME]] [--keep]`.

Sections: quality (time to the same quality), quality_long (the default's quality at a longer
budget), load (a trial beside a busy process), throughput (samples per second), overhead,
pruning, warm, tracking, team (needs PostgreSQL). Everything runs in a temporary
SWEEPFLOW_HOME (and PREFECT_HOME) with the Hugging Face Hub offline; results are printed and
written to bench/results.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import OFFLINE_ENV, ROOT, apply_env, bench_env, write_json

SECTIONS = ("quality", "load", "throughput", "overhead", "pruning", "warm", "tracking",
            "quality_long", "team", "predict", "checks")
NEEDS_PREFECT = {"overhead", "pruning"}

os.environ.update(OFFLINE_ENV)  # before transformers or datasets are imported


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke version")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, help="throughput/overhead rounds (best counts)")
    parser.add_argument("--quality", default="",
                        help="quality sizes, e.g. train=1024,eval=500,test_fraction=0.05,"
                             "checkpoints=4,parallel=3 (see bench/sections.py Sizes)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def quality_sizes(text: str) -> dict[str, Any]:
    """--quality train=1024,eval=500,load_rounds=1,long_contenders=sweepflow+reference,...
    -> Sizes fields quality_train=1024, quality_eval=500, load_rounds=1, ... (long_* and
    load_* keep their names; contenders are joined by "+")."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, value = (part.strip() for part in item.split("=", 1))
        name = key if key.startswith(("long_", "load_", "team_", "checks_")) \
            else f"quality_{key}"
        if "+" in value or name.endswith(("contenders", "sets", "seeds")):  # a+b
            out[name] = tuple(int(v) if v.isdigit() else v for v in value.split("+") if v)
        else:
            out[name] = float(value) if "." in value else int(value)
    return out


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_before": _load()}


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_sections(args: argparse.Namespace, ctx: Any, console: Any) -> dict[str, Any]:
    from bench import sections

    results: dict[str, Any] = {}
    for name in SECTIONS:
        if name not in args.only:
            continue
        console.rule(f"[bold]{name}")
        start, stamp = time.perf_counter(), {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                             "load_before": _load()}
        if name == "tracking":
            results[name] = sections.tracking_cost(ctx, results.get("throughput"))
        elif name == "predict":  # 10,000 texts, against MLflow's transformers pyfunc
            from bench.predict_speed import measure

            results[name] = measure(500 if ctx.sizes is sections.QUICK else 10_000, 50)
        elif name == "team":  # its own stack: PostgreSQL, MLflow and Prefect servers
            from bench.team import team

            results[name] = team(ctx)
        else:
            results[name] = getattr(sections, name)(ctx)
        results[name]["section_seconds"] = time.perf_counter() - start
        results[name]["measured"] = {**stamp, "load_after": _load()}
        console.log(f"{name} done in {results[name]['section_seconds']:.0f} s")
    return results


def main() -> None:
    args = parse_args()
    home = Path(tempfile.mkdtemp(prefix="sweepflow-bench-"))
    env = bench_env(home)
    apply_env(env)
    from dataclasses import replace

    from rich.console import Console

    from bench import sections
    from bench.prefect_server import prefect_server
    from bench.report import print_report, targets

    console = Console(width=None if sys.stdout.isatty() else 140)
    sizes = sections.QUICK if args.quick else sections.FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds, overhead_rounds=args.rounds)
    sizes = replace(sizes, **quality_sizes(args.quality))
    ctx = sections.Context(home, env, sizes, log=console.log)
    meta = {**machine(), "quick": args.quick, "sections": args.only, "store": str(home),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.perf_counter()
    try:
        with ExitStack() as stack:
            if NEEDS_PREFECT & set(args.only):
                ctx.prefect = stack.enter_context(prefect_server(env, home / "prefect.log"))
                env["PREFECT_API_URL"] = ctx.prefect.api_url
                console.log(f"Prefect server {ctx.prefect.api_url} (started in "
                            f"{ctx.prefect.startup_seconds:.1f} s, not timed)")
            results = run_sections(args, ctx, console)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    meta.update(seconds=time.perf_counter() - start, load_after=_load())
    results["meta"] = meta
    results.update(_earlier(args.out, results))
    results["targets"] = [{**t.__dict__, "met": t.met} for t in targets(results)]
    write_json(args.out, results)
    print_report(results, console)
    console.print(f"results: {args.out}" + (f"; store kept in {home}" if args.keep else ""))


def _earlier(path: str, results: dict[str, Any]) -> dict[str, Any]:
    """Sections of an earlier run in `path` that this run did not measure, kept with that
    run's meta (each section then says when it was measured)."""
    import json

    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    kept = {k: v for k, v in old.items()  # sweep_level: bench/sweep_level.py's reference
            if k in (*SECTIONS, "sweep_level") and k not in results and isinstance(v, dict)}
    for value in kept.values():
        value.setdefault("measured", {k: old.get("meta", {}).get(k)
                                      for k in ("date", "load_before", "load_after")})
    return kept


if __name__ == "__main__":
    main()
