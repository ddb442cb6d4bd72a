"""`make bench` / `python -m bench [--quick] [--only NAME[,NAME]] [--keep]`.

Sections: throughput, overhead, pruning, warm, tracking, team (needs PostgreSQL). Everything
runs in a temporary SWEEPFLOW_HOME (and PREFECT_HOME) with the Hugging Face Hub offline;
results are printed and written to bench/results.json.
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

SECTIONS = ("throughput", "overhead", "pruning", "warm", "tracking", "team")
NEEDS_PREFECT = {"overhead", "pruning"}

os.environ.update(OFFLINE_ENV)  # before transformers or datasets are imported


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke version")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, help="throughput/overhead rounds (best counts)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


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
        start = time.perf_counter()
        if name == "tracking":
            results[name] = sections.tracking_cost(ctx, results.get("throughput"))
        elif name == "team":  # its own stack: PostgreSQL, MLflow and Prefect servers
            from bench.team import team

            results[name] = team(ctx)
        else:
            results[name] = getattr(sections, name)(ctx)
        results[name]["section_seconds"] = time.perf_counter() - start
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
    results["targets"] = [{**t.__dict__, "met": t.met} for t in targets(results)]
    write_json(args.out, results)
    print_report(results, console)
    console.print(f"results: {args.out}" + (f"; store kept in {home}" if args.keep else ""))


if __name__ == "__main__":
    main()
