"""The team control plane under many workers, without training:
`python -m bench.control_plane [--clients 8,32,100] [--seconds 40] [--pace S] [--profile N]`
(needs PostgreSQL and Debian's pgbouncer).

Starts the real stack (PostgreSQL databases in a private cluster with the default 100
connections, MLflow and Prefect servers; `sweepflow.stack`) and drives a trial worker's
protocol from N concurrent lightweight clients (threads in a few processes, each client with
its own storage object, as separate worker processes have) through the product's own
functions: `take_next` (reap, count and ask under the study lock), the trial's attributes and
`suggest` on the default search space, the heartbeat thread, `Tracker.start_run` (an MLflow
child of the sweep's run, closed with its cost metrics), its params, 3 validations (Lightning's
MLFlowLogger batches, `trial.report` and `should_prune` as StepPruning does), and
`tell_result` (refuse a taken trial, keep the model if best, tell, drop the beaten ones, under
the study lock) with a small file as the model. Only `fit` is left out. Reports per level:
per-trial coordination latency p50/p95, trials per second sustained (`--pace 0`, clients
back to back: the capacity; `--pace S`: each client "trains" S seconds on average between
trials, an offered load of clients / S trials per second), connection errors, and the peak
connections per database (pg_stat_activity sampled every 0.25 s). `--profile N`: one client,
N trials, and per phase its seconds, study-database connections and statements, and MLflow
requests (bench/control_plane_profile.json).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import ROOT

# Client processes (the clients are threads in them; `--processes`). On 2 cores more
# processes only add load: 100 clients in 20 processes ran at load 17-22 and held the study
# lock longer (p50 0.36 s) than in 4 (load 8-10, p50 0.21 s; 0.02 s per holding alone).
PROCESSES = 4
KEY = "cp-basis"  # the training basis of every bench trial (no data: no digest to take)


def _config(url: str, mlflow_uri: str, experiment: str, shared: Path, client: int) -> Any:
    """The worker's config; each client its own storage URL (application_name differs), so
    its own storage object, as a separate worker process has."""
    from sweepflow.config import load_config

    sep = "&" if "?" in url else "?"
    return load_config(overrides=[f"sweep.storage={url}{sep}application_name=cp-{client}",
                                  f"tracking.uri={mlflow_uri}",
                                  f"tracking.experiment={experiment}",
                                  f"store.shared_dir={shared}"])


def _nothing(_: str) -> None:
    return None


def _timed_study_lock(record: Callable[[str, float], None]) -> Callable[[], None]:
    """Instrument this process' study lock (the bench's only): `record("lock_wait_s", s)`
    when a lock is taken and `record("lock_held_s", s)` when it is released. Returns the
    undo."""
    from contextlib import contextmanager

    from sweepflow import storage

    real = storage.study_lock

    @contextmanager
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        with real(*args, **kwargs):
            taken = time.perf_counter()
            record("lock_wait_s", taken - start)
            try:
                yield
            finally:
                record("lock_held_s", time.perf_counter() - taken)

    storage.study_lock = timed
    return lambda: setattr(storage, "study_lock", real)


def _trial(config: Any, tracker: Any, ref: Any, plan: Any, mark: Callable[[str], None]
           ) -> None:
    """One trial of a worker (tasks/team.py work, tasks/sweep.py _run_asked/_train_trial)
    with `fit` left out; `mark(phase)` is called as each phase starts."""
    from sweepflow.tasks.pruning import BASIS_ATTR
    from sweepflow.tasks.sweep import (
        DIGEST_ATTR,
        TrialResult,
        suggest,
        tell_result,
        trial_logger,
    )
    from sweepflow.tasks.team import SWEEP_TAG, WORKER_TAG, take_next, worker_name

    from sweepflow import owner, storage

    mark("take_next")
    shared = storage.open_storage(ref.storage, config.sweep)
    _, study, trial = take_next(config, tracker, ref, plan, shared, 100)
    mark("attrs+suggest")
    tags = {SWEEP_TAG: plan.sweep_id, WORKER_TAG: worker_name()}
    for key, value in tags.items():
        trial.set_user_attr(key, value)
    with storage.heartbeat(shared, ref.name, trial.number):
        trial.set_user_attr(owner.OWNER_ATTR, owner.me().attr())
        trial.set_user_attr(BASIS_ATTR, KEY)
        trial.set_user_attr(DIGEST_ATTR, "cp")
        params = suggest(trial, config.sweep)
        mark("mlflow_run+params")
        run_tags = {"optuna.study": ref.name, "optuna.trial_number": str(trial.number),
                    "data.digest": "cp", **tags}
        end_tags: dict[str, str] = {}
        with tracker.start_run(f"trial-{trial.number}", run_tags, end_tags) as run:
            run.log(params=params)
            mark("validations")
            logger = trial_logger(run)
            value = 0.0
            for step in (25, 50, 75):
                value = (trial.number * 7919 % 1000) / 1000 * step / 75
                logger.log_metrics({"val/f1_macro": value, "train/loss": 1 - value}, step)
                trial.report(value, step)
                trial.should_prune()
            logger.finalize("success")
            mark("tell")
            result = TrialResult(number=trial.number, state="complete", value=value,
                                 params=params, steps=75, seconds=0.0, run_id=run.run_id)
            tell_result(study, trial, result, KEY, ref.models, shared,
                        lambda tmp: (tmp / "model.json").write_text(json.dumps(params)))
            mark("close_run")
            end_tags.update({"optuna.state": "complete", "optuna.steps": "75"})
    mark("end")


def _client(url: str, ref_json: str, plan_json: str, mlflow_uri: str, experiment: str,
            shared: Path, index: int, window: Any, pace: float, out: list) -> None:
    """One worker's protocol in a loop until the window ends; appends (seconds, error, end
    time) per trial. `window`: (ready, go, stop_at): the client says it is ready (config
    loaded, MLflow reached) and starts when all are, so a loaded machine's slow start is not
    measured.
    `pace`: mean seconds of "training" between trials (0: back to back, the capacity)."""
    import random

    from sweepflow.tasks.sweep import StudyRef
    from sweepflow.tasks.team import TeamPlan

    from sweepflow import storage
    from sweepflow.tracking import Tracker

    config = _config(url, mlflow_uri, experiment, shared, index)
    ref = StudyRef.model_validate_json(ref_json).model_copy(
        update={"storage": config.sweep.storage})
    plan = TeamPlan.model_validate_json(plan_json)
    tracker = Tracker.open(config, plan.parent_run_id)
    storage.open_storage(ref.storage, config.sweep)  # once per worker process, not per trial
    ready, go, end = window
    ready.put(index)
    go.wait()
    stop_at = end.value
    if pace:  # the workers do not start in step
        time.sleep(max(0.0, min(random.uniform(0, pace), stop_at - time.time())))
    while time.time() < stop_at:
        start = time.perf_counter()
        try:
            _trial(config, tracker, ref, plan, _nothing)
            out.append((time.perf_counter() - start, None, time.time()))
            if pace:  # "training", cut at the end of the window
                time.sleep(max(0.0, min(random.expovariate(1 / pace), stop_at - time.time())))
        except Exception as err:  # noqa: BLE001 - counted and reported
            out.append((time.perf_counter() - start, f"{type(err).__name__}: {err}"[:200],
                        time.time()))
            time.sleep(1)


def _process(first: int, n_threads: int, args: tuple, queue: Any) -> None:
    import logging

    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run at" per run
    logging.getLogger("sweepflow").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, ref_json, plan_json, mlflow_uri, experiment, shared, window, pace = args
    out: list = []
    holds: list[float] = []
    _timed_study_lock(lambda what, s: holds.append(s) if what == "lock_held_s" else None)
    threads = [threading.Thread(target=_client, args=(
        url, ref_json, plan_json, mlflow_uri, experiment, shared, first + i, window, pace,
        out)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put((out, holds))


def _sweep(stack: Any, study_url: str, shared: Path) -> tuple[str, Any, Any, Any]:
    """A fresh experiment, study (create_study) and sweep run, as `sweepflow run` makes them:
    (experiment, StudyRef, TeamPlan, the parent's Tracker)."""
    from sweepflow.tasks.sweep import create_study
    from sweepflow.tasks.team import TeamPlan

    from sweepflow.tracking import Tracker

    experiment = f"cp-{uuid.uuid4().hex[:8]}"
    config = _config(study_url, stack.mlflow_url, experiment, shared, -1)
    config = config.model_copy(update={"sweep": config.sweep.model_copy(
        update={"storage": study_url})})
    ref = create_study(config, f"cp-{uuid.uuid4().hex[:6]}")
    tracker = Tracker.open(config)
    parent = tracker.client.create_run(tracker.experiment_id, run_name=f"sweep-{ref.name}")
    plan = TeamPlan(sweep_id=uuid.uuid4().hex, target=10**9, parent_run_id=parent.info.run_id)
    return experiment, ref, plan, tracker


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


def _fresh_study(stack: Any, server: str, study_server: str, home: Path
                 ) -> tuple[str, str, Path, tuple]:
    """A new study database (reached through `study_server`), its shared folder and the
    sweep made on it as `sweepflow run` makes it: (db, url, shared, _sweep(...))."""
    from sweepflow.stack import database_url, ensure_databases

    db = f"sf_cp_{uuid.uuid4().hex[:10]}"
    ensure_databases(server, [db])
    url = database_url(study_server, db)
    shared = home / db
    shared.mkdir()
    return db, url, shared, _sweep(stack, url, shared)


def level(stack: Any, server: str, study_server: str, clients: int, seconds: float,
          home: Path, pace: float = 0.0, processes: int = PROCESSES) -> dict:
    """One load level on a fresh study (reached through `study_server`: PgBouncer or the
    server itself); the clients start together and stop at one time."""
    from sweepflow.stack import drop_databases

    db, url, shared, (experiment, ref, plan, tracker) = _fresh_study(stack, server,
                                                                     study_server, home)
    peak: dict[str, int] = {}
    stop = threading.Event()
    dbs = [db, stack.mlflow_db, stack.prefect_db]
    watcher = threading.Thread(target=_peaks, args=(server, dbs, stop, peak))
    watcher.start()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    window = (ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0))
    per = [clients // processes + (i < clients % processes) for i in range(processes)]
    args = (url, ref.model_dump_json(), plan.model_dump_json(), stack.mlflow_url, experiment,
            shared, window, pace)
    procs = [ctx.Process(target=_process, args=(sum(per[:i]), n, args, queue))
             for i, n in enumerate(per) if n]
    for proc in procs:
        proc.start()
    for _ in range(clients):  # all set up, then the window opens for all at once
        window[0].get(timeout=900)
    window[2].value = time.time() + seconds
    window[1].set()
    load_before = os.getloadavg()[0]
    try:
        parts = [queue.get() for _ in procs]
        results = [r for out, _ in parts for r in out]
        holds = sorted(h for _, held in parts for h in held)
    finally:  # also on Ctrl-C: no client left behind
        for proc in procs:
            proc.join(timeout=60)
            if proc.exitcode is None:
                proc.kill()
    load_after = os.getloadavg()[0]
    stop.set()
    watcher.join()
    tracker.client.set_terminated(plan.parent_run_id, "FINISHED")
    drop_databases(server, [db])
    ok = sorted(s for s, e, _ in results if e is None)
    errors = [e for _, e, _ in results if e is not None]
    # The sustained rate: trials finished inside the window (those in flight at its end
    # finish after it and count for the latency only).
    inside = sum(e is None and end <= window[2].value for _, e, end in results)
    q = statistics.quantiles(ok, n=20) if len(ok) >= 2 else [float("nan")] * 19
    return {"clients": clients, "processes": len(procs), "pace_s": pace,
            "pgbouncer": study_server != server,
            "trials": len(ok), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_s": round(statistics.median(ok), 3) if ok else None,
            "p95_s": round(q[18], 3), "trials_in_window": inside,
            # The study lock: how long one holding lasted (ask and tell are one each per
            # trial), and the share of the run it was held (1.0: the lock is the bound).
            "lock_held_p50_p95_s": [round(statistics.median(holds), 4),
                                    round(holds[int(0.95 * (len(holds) - 1))], 4)]
            if holds else None,
            "lock_held_share": round(sum(holds) / (time.time() - window[2].value + seconds), 3),
            "trials_per_s": round(inside / seconds, 2),
            "load_1min_start_end": [round(load_before, 2), round(load_after, 2)],
            "peak_connections": {"optuna": peak.get(db, 0),
                                 "mlflow": peak.get(stack.mlflow_db, 0),
                                 "prefect": peak.get(stack.prefect_db, 0),
                                 "all": peak.get("all", 0)}}


def profile(stack: Any, server: str, study_server: str, trials: int, home: Path) -> dict:
    """One client, `trials` trials in this process: per phase, the mean seconds, study
    database connections and statements, and MLflow requests per trial."""
    import logging

    import requests
    from sqlalchemy import event
    from sweepflow.tasks.sweep import StudyRef
    from sweepflow.tasks.team import TeamPlan

    from sweepflow import storage
    from sweepflow.stack import drop_databases
    from sweepflow.tracking import Tracker

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    db, url, shared, (experiment, ref, plan, _) = _fresh_study(stack, server, study_server,
                                                               home)
    config = _config(url, stack.mlflow_url, experiment, shared, 0)
    ref = StudyRef.model_validate_json(ref.model_dump_json()).model_copy(
        update={"storage": config.sweep.storage})
    plan = TeamPlan.model_validate_json(plan.model_dump_json())
    tracker = Tracker.open(config, plan.parent_run_id)
    engine = storage.open_storage(ref.storage, config.sweep).engine
    now = {"phase": "setup", "t": time.perf_counter()}
    totals: dict[str, dict[str, float]] = {}

    def count(what: str, n: float = 1) -> None:
        row = totals.setdefault(now["phase"], {"seconds": 0.0, "connections": 0,
                                               "statements": 0, "mlflow_requests": 0,
                                               "lock_wait_s": 0.0, "lock_held_s": 0.0,
                                               "statements_locked": 0})
        row[what] += n

    def mark(phase: str) -> None:
        t = time.perf_counter()
        count("seconds", t - now["t"])
        now.update(phase=phase, t=t)

    def locked(what: str, seconds: float) -> None:
        count(what, seconds)
        now["locked"] = what == "lock_wait_s"  # taken: statements from here are under it

    def statement(*_: Any) -> None:
        count("statements")
        if now.get("locked"):
            count("statements_locked")

    event.listen(engine, "connect", lambda *_: count("connections"))
    event.listen(engine, "before_cursor_execute", statement)
    undo = _timed_study_lock(locked)
    send = requests.Session.send

    def counted(self: Any, request: Any, **kw: Any) -> Any:
        count("mlflow_requests")
        return send(self, request, **kw)

    requests.Session.send = counted  # instrumentation of this bench process only
    try:
        for _ in range(trials):
            _trial(config, tracker, ref, plan, mark)
            mark("between")
    finally:
        requests.Session.send = send
        undo()
    drop_databases(server, [db])
    return {name: {k: round(v / trials, 4) for k, v in row.items()}
            for name, row in totals.items() if name not in ("setup", "between", "end")}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="8,32,100")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--bouncer-pool", type=int, default=40,
                        help="PgBouncer's server connections for the study (0: no PgBouncer)")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="mean seconds between a client's trials (0: back to back)")
    parser.add_argument("--processes", type=int, default=PROCESSES,
                        help="client processes (the clients are threads in them)")
    parser.add_argument("--profile", type=int, default=0,
                        help="profile one client over this many trials instead")
    parser.add_argument("--out", default=None)
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
            study_server = bouncer if args.bouncer_pool else cluster.url
            if args.profile:
                profile(stack, cluster.url, study_server, 3, home)  # warm: imports, caches
                rows.append(profile(stack, cluster.url, study_server, args.profile, home))
                print(json.dumps(rows[-1], indent=1), flush=True)
            for n in (int(c) for c in args.clients.split(",") if not args.profile):
                rows.append(level(stack, cluster.url, study_server, n, args.seconds, home,
                                  args.pace, args.processes))
                print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    out = args.out or str(ROOT / "bench" / ("control_plane_profile.json" if args.profile
                                            else "control_plane.json"))
    Path(out).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime()),
                                          "loadavg": load, "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
