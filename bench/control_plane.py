"""The team control plane under many workers, without training:
`python -m bench.control_plane [--clients 8,32,100] [--seconds 40]` (needs PostgreSQL).

Starts the real stack (PostgreSQL databases in a private cluster with the default 100
connections, MLflow and Prefect servers; `sweepflow.stack`) and drives the
trial worker's protocol from N concurrent lightweight clients (threads in a few processes,
each client with its own storage object, as separate worker processes have): reap stale
trials and ask under the study lock, owner/basis attributes and 3 suggested params, a
heartbeat, an MLflow child run with its params, 3 validation reports and metrics, the model
hand-off (a small file published by rename) and tell under the study lock. Reports per level:
per-trial coordination latency p50/p95, trials per second sustained (`--pace 0`, clients
back to back: the capacity; `--pace S`: each client "trains" S seconds on average between
trials, an offered load of clients / S trials per second), connection errors, and
the peak connections per database (pg_stat_activity sampled every 0.25 s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import ROOT

PROCESSES = 4


def _client(url: str, study: str, mlflow_uri: str, exp_id: str, shared: Path, stop_at: float,
            pace: float, out: list) -> None:
    """One worker's protocol in a loop until `stop_at`; appends (seconds, error) per trial.
    `pace`: mean seconds of "training" between trials (0: back to back, the capacity)."""
    import random

    import optuna
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from sweepflow.tasks.team import next_step

    from sweepflow import storage as st

    rdb = optuna.storages.RDBStorage(url, engine_kwargs=dict(st.POOL), heartbeat_interval=30,
                                     grace_period=120)
    client = MlflowClient(mlflow_uri)
    if pace:  # the workers do not start in step
        time.sleep(max(0.0, min(random.uniform(0, pace), stop_at - time.time())))
    while time.time() < stop_at:
        start = time.perf_counter()
        try:
            study_obj = optuna.load_study(study_name=study, storage=rdb,
                                          sampler=optuna.samplers.RandomSampler())
            with st.study_lock(rdb, study):
                st.fail_stale_trials(study_obj)
            with st.study_lock(rdb, study):
                next_step(study_obj.get_trials(deepcopy=False), 10**9)
                trial = study_obj.ask()
            for key in ("owner", "basis", "data_digest", "sweepflow.worker"):
                trial.set_user_attr(key, "x")
            params = {"lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True),
                      "wd": trial.suggest_float("wd", 0.0, 0.1),
                      "warmup": trial.suggest_float("warmup", 0.0, 0.2)}
            rdb.record_heartbeat(trial._trial_id)  # noqa: SLF001
            run = client.create_run(exp_id, run_name=f"trial-{trial.number}",
                                    tags={"optuna.trial_number": str(trial.number)})
            rid = run.info.run_id
            client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
            now = int(time.time() * 1000)
            for step in range(3):
                trial.report(0.1 * step, step)
                client.log_batch(rid, metrics=[Metric("val/f1_macro", 0.1 * step, now, step),
                                               Metric("train/loss", 1.0 - 0.1 * step, now,
                                                      step)])
            with st.study_lock(rdb, study):
                if rdb.get_trial(trial._trial_id).state.name == "RUNNING":  # noqa: SLF001
                    tmp = shared / f".tmp-{uuid.uuid4().hex}"
                    tmp.write_text(json.dumps(params))
                    os.replace(tmp, shared / "best.json")
                    study_obj.tell(trial, 0.2)
            client.set_terminated(rid, "FINISHED")
            out.append((time.perf_counter() - start, None))
            if pace:  # "training", cut at the end of the window
                time.sleep(max(0.0, min(random.expovariate(1 / pace), stop_at - time.time())))
        except Exception as err:  # noqa: BLE001 - counted and reported
            out.append((time.perf_counter() - start, f"{type(err).__name__}: {err}"[:200]))
            time.sleep(1)


def _process(n_threads: int, args: tuple, queue: Any) -> None:
    import logging

    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run at" per run
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: list = []
    threads = [threading.Thread(target=_client, args=(*args, out)) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(out)


def _peaks(server: str, dbs: list[str], stop: threading.Event, peak: dict[str, int]) -> None:
    import psycopg2

    from sweepflow.stack import database_url

    conn = psycopg2.connect(database_url(server, "postgres"))
    conn.autocommit = True
    while not stop.wait(0.25):
        with conn.cursor() as cur:
            cur.execute("SELECT datname, count(*) FROM pg_stat_activity WHERE datname = ANY(%s)"
                        " GROUP BY datname", (dbs,))
            rows = cur.fetchall()
            for name, count in rows:
                peak[name] = max(peak.get(name, 0), count)
            peak["all"] = max(peak.get("all", 0), sum(c for _, c in rows))
    conn.close()


def level(stack: Any, server: str, study_server: str, clients: int, seconds: float,
          home: Path, pace: float = 0.0) -> dict:
    """One load level on a fresh study (reached through `study_server`: PgBouncer or the
    server itself); the clients start together and stop at one time."""
    import optuna
    from mlflow.tracking import MlflowClient

    from sweepflow.stack import database_url, drop_databases, ensure_databases

    db = f"sf_cp_{uuid.uuid4().hex[:10]}"
    ensure_databases(server, [db])
    url = database_url(study_server, db)
    study = f"cp-{clients}"
    optuna.create_study(study_name=study, storage=url, direction="maximize")
    exp_id = MlflowClient(stack.mlflow_url).create_experiment(f"cp-{uuid.uuid4().hex[:8]}")
    shared = home / study
    shared.mkdir()
    peak: dict[str, int] = {}
    stop = threading.Event()
    dbs = [db, stack.mlflow_db, stack.prefect_db]
    watcher = threading.Thread(target=_peaks, args=(server, dbs, stop, peak))
    watcher.start()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    stop_at = time.time() + 20 + seconds  # 20 s for the processes to start
    per = [clients // PROCESSES + (i < clients % PROCESSES) for i in range(PROCESSES)]
    procs = [ctx.Process(target=_process, args=(n, (url, study, stack.mlflow_url, exp_id,
                                                    shared, stop_at, pace), queue))
             for n in per if n]
    for proc in procs:
        proc.start()
    try:
        results = [r for _ in procs for r in queue.get()]
    finally:  # also on Ctrl-C: no client left behind
        for proc in procs:
            proc.join(timeout=60)
            if proc.exitcode is None:
                proc.kill()
    stop.set()
    watcher.join()
    drop_databases(server, [db])
    ok = sorted(s for s, e in results if e is None)
    errors = [e for _, e in results if e is not None]
    q = statistics.quantiles(ok, n=20) if len(ok) >= 2 else [float("nan")] * 19
    return {"clients": clients, "pace_s": pace, "pgbouncer": study_server != server,
            "trials": len(ok), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_s": round(statistics.median(ok), 3) if ok else None,
            "p95_s": round(q[18], 3), "trials_per_s": round(len(ok) / seconds, 2),
            "peak_connections": {"optuna": peak.get(db, 0),
                                 "mlflow": peak.get(stack.mlflow_db, 0),
                                 "prefect": peak.get(stack.prefect_db, 0),
                                 "all": peak.get("all", 0)}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="8,32,100")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--bouncer-pool", type=int, default=40,
                        help="PgBouncer's server connections for the study (0: no PgBouncer)")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="mean seconds between a client's trials (0: back to back)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "control_plane.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the cluster on kill
    from sweepflow.netutil import free_port
    from sweepflow.stack import started_stack
    from tests.team.pgcluster import pgbouncer, private_cluster

    rows = []
    # A private cluster with PostgreSQL's default 100 connections: the shared server's
    # connections stay free, and the peak is measured against the default limit.
    with tempfile.TemporaryDirectory() as tmp, private_cluster(100) as cluster:
        home = Path(tmp)
        with started_stack(home, "sf_cpb", mlflow_port=free_port(), prefect_port=free_port(),
                           server=cluster.url) as stack, \
                pgbouncer(cluster, args.bouncer_pool) as bouncer:
            for n in (int(c) for c in args.clients.split(",")):
                study_server = bouncer if args.bouncer_pool else cluster.url
                rows.append(level(stack, cluster.url, study_server, n, args.seconds, home,
                                  args.pace))
                print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    Path(args.out).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime()),
                                          "loadavg": load, "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
