"""One sweep subflow (flows.sweep.sweep_flow) inside a parent MLflow run, as the pipeline
runs it but without evaluate: the pruning comparison needs the sweep alone.

    python -m bench.sweep_run --out result.json key=value...
"""

from __future__ import annotations

import argparse
import resource
import time

from bench.common import write_json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()

    from sweepflow.flows.sweep import sweep_flow
    from sweepflow.flows.team import local_workers
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.sweep import create_study
    from sweepflow.tasks.tokenize import tokenize

    from sweepflow.config import load_config
    from sweepflow.tracking import Tracker

    config = load_config(overrides=args.overrides)
    tokens = tokenize(config, ingest(config))
    study = create_study(config)
    start = time.perf_counter()
    # sweep.workers > 1: the Prefect worker starts here, as `sweepflow run` starts it.
    with local_workers(config), Tracker.open(config).start_run(
            f"sweep-{study.name}", {"optuna.study": study.name}) as tracker:
        result = sweep_flow(config, tokens, study, tracker)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    write_json(args.out, {"run_id": tracker.run_id, "seconds": time.perf_counter() - start,
                          "peak_rss_gb": peak_kib / 2**20, **result.model_dump(mode="json")})


if __name__ == "__main__":
    main()
