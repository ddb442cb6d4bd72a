"""The Optuna storage of a sweep.

By default a SQLite file in the local store (one process, one trial at a time). With
`sweep.storage: postgresql://…` the study lives in PostgreSQL, shared by every worker on every
machine: an RDBStorage without a connection pool (a connection per operation, none held
between operations), a heartbeat per running trial, and Optuna's retry callback, so a trial whose
worker died is failed once its heartbeat is `grace_period` old and re-queued with the same
params. One storage object per process and URL.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from sweepflow.config import SweepConfig
from sweepflow.paths import store_dir
from sweepflow.usererrors import StoreError

log = logging.getLogger(__name__)

# No pool: a connection per operation, closed after it. A worker holds none between its
# operations (the database's 100 connections serve many more idle workers; measured in
# bench/control_plane.py) and at most 3 at once: the study lock's, a query's and the
# heartbeat thread's. A restarted server costs nothing stale to drop.
POOL = {"poolclass": NullPool}
CONNECTIONS_PER_PROCESS = 3


def storage_url(sweep: SweepConfig | None = None) -> str:
    """`sweep.storage`, else the SQLite file in the local store."""
    if sweep is not None and sweep.storage:
        return sweep.storage
    path = store_dir() / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def is_shared(url: str) -> bool:
    """A server database (PostgreSQL, MySQL) that many processes may share."""
    return not url.startswith("sqlite")


def open_storage(url: str, sweep: SweepConfig) -> str | RDBStorage:
    """The storage to hand to Optuna: the URL itself for SQLite (as Optuna opens it by
    default), the process' one pooled RDBStorage with heartbeats for a server database."""
    if not is_shared(url):
        return url
    return _rdb(url, sweep.heartbeat_interval, sweep.grace_period, sweep.max_retry)


@functools.lru_cache(maxsize=128)  # one URL per process; the bench: one per client
def _rdb(url: str, heartbeat_interval: int, grace_period: int, max_retry: int) -> RDBStorage:
    try:
        with schema_lock(url), warnings.catch_warnings():
            # heartbeat_interval is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, engine_kwargs={**POOL, **waiting_connect(url, grace_period)},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry))
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        shown = make_url(url).render_as_string(hide_password=True)
        raise StoreError(f"sweep.storage={shown}: cannot open the study database ({reason}); "
                         "create the database (`sweepflow stack` creates sweepflow_optuna) "
                         "or fix the URL") from None


# The server is away (restart, failover) or out of reach (a network partition), not the URL
# wrong: worth waiting for.
_AWAY = ("connection refused", "could not connect", "server closed the connection",
         "the database system is starting up", "the database system is shutting down",
         "the database system is in recovery mode", "no such file or directory",
         "terminating connection", "connection timed out", "no route to host",
         "network is unreachable", "timeout expired", "could not receive data",
         "could not send data", "connection reset", "ssl syscall error", "eof detected")

# A connection in the middle of a partition must fail, not hang for TCP's 15 minutes, and a
# server must drop a cut-off client's connections (and the study lock one of them may hold):
# keepalives every 5 s after 10 s idle, 3 unanswered = dead; unacknowledged data: 20 s.
# Seconds (libpq's connect parameters); a URL's own query parameters win.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
              "keepalives_count": "3", "tcp_user_timeout": "20000", "connect_timeout": "10"}


def out_of_reach(err: BaseException | None) -> str | None:
    """Whether `err`, or an error it was raised from (Optuna wraps SQLAlchemy's, which wraps
    the driver's), says the study database could not be reached: the driver's first line
    saying so, or None."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (SQLAlchemyError, OSError)) or type(err).__name__ in (
                "OperationalError", "InterfaceError"):
            line = str(getattr(err, "orig", None) or err).strip().splitlines()
            if line and any(s in str(err).lower() for s in _AWAY):
                return line[0][:300]
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def waiting_connect(url: str, budget: float) -> dict:
    """Engine kwargs whose connections wait for a PostgreSQL server that is away, retrying
    with backoff (0.5 s doubling to 8 s) for up to `budget` seconds (sweep.grace_period),
    one warning line per outage; a wrong URL, database or password fails at once. Connections
    use TCP keepalives (KEEPALIVES), so a partition fails an operation instead of hanging."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() != "psycopg2":
        return {}
    import psycopg2

    args = {**KEEPALIVES, **parsed.translate_connect_args(username="user", database="dbname"),
            **dict(parsed.query)}

    def connect() -> object:
        deadline, delay, warned = time.monotonic() + budget, 0.5, False
        while True:
            try:
                return psycopg2.connect(**args)
            except psycopg2.OperationalError as err:
                away = any(s in str(err).lower() for s in _AWAY)
                if not away or time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    log.warning("study database away (%s); retrying for up to %.0f s",
                                str(err).strip().splitlines()[0], budget)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    return {"creator": connect}


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables: processes that open a
    new database at the same moment would otherwise both run CREATE TABLE. Waiters hold no
    connection (advisory_lock), so 100 workers opening the study at once behind PgBouncer
    never take all its server connections while the holder needs one more."""
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with advisory_lock(engine, _lock_key("schema")):
            yield
    finally:
        engine.dispose()


@contextmanager
def heartbeat(storage: str | RDBStorage, study_name: str, number: int) -> Iterator[None]:
    """Record the trial's heartbeat every `heartbeat_interval` seconds while it runs (what
    `study.optimize` does for its own trials); nothing for SQLite."""
    if not isinstance(storage, RDBStorage) or storage.get_heartbeat_interval() is None:
        yield
        return
    interval = storage.get_heartbeat_interval()
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study_name), number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # noqa: BLE001 - the next beat retries (Optuna wraps
                # the database's errors in StorageInternalError, which would end the thread)
                log.warning("heartbeat of trial %d not recorded: %s", number,
                            str(err.__cause__ or err).strip().splitlines()[0])
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"sweepflow:{name}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def study_lock(storage: str | RDBStorage, study_name: str) -> Iterator[None]:
    """Serialise "look at the study, then create, ask or tell" across processes and machines:
    a PostgreSQL advisory lock keyed on the study name (released by the server if the holder
    dies). Nothing to do for SQLite, which has one process at a time."""
    if not isinstance(storage, RDBStorage) or storage.engine.dialect.name != "postgresql":
        yield
        return
    with advisory_lock(storage.engine, _lock_key(study_name)):
        yield


# Waiters that queue for a lock inside PostgreSQL (its lock queue is first come, first served,
# and hands the lock over the moment it is released), each holding one connection; the others
# wait holding none. 2: the lock never sits free while a worker waits for it, and behind
# PgBouncer (40 server connections) a held lock plus its queue pin 3 of them at most.
LOCK_QUEUE = 2


@contextmanager
def advisory_lock(engine: Engine, key: int) -> Iterator[None]:
    """Hold PostgreSQL advisory lock `key` on a connection of `engine`. Up to LOCK_QUEUE
    waiters wait in PostgreSQL's queue for the lock (first come, first served, no gap at
    hand-over); any others hold no connection: they try for the lock or a place in that
    queue, and if neither is free, close their connection and try again after a jittered
    backoff (up to 0.5 s), so 100 workers waiting for one lock do not take 100 of the
    server's connections (behind PgBouncer in session mode, all its server connections)."""
    conn = _take_lock(engine, key)
    try:
        yield
    finally:
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
        finally:
            conn.close()  # closing ends the lock too, should the unlock fail


def _take_lock(engine: Engine, key: int) -> Connection:
    """A connection holding advisory lock `key` (see advisory_lock)."""
    delay = 0.005
    while True:
        conn = engine.connect()
        try:
            if _try(conn, key) or any(_try(conn, place) and _queue(conn, key, place)
                                      for place in _queue_keys(key)):
                return conn
        except BaseException:
            conn.close()
            raise
        conn.close()
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.5)


def _try(conn: Connection, key: int) -> bool:
    got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
    conn.commit()
    return got


def _queue(conn: Connection, key: int, place: int) -> bool:
    """Holding a place in the queue (advisory lock `place`), wait in PostgreSQL's queue for
    `key`, a second at a time (so Ctrl-C and a lost server are noticed), then give the place
    up. True once `key` is held."""
    while True:
        try:
            conn.execute(text("SET LOCAL lock_timeout = '1s'"))
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            break
        except OperationalError as err:
            conn.rollback()  # session advisory locks outlive the rollback
            if getattr(err.orig, "pgcode", None) != "55P03":  # lock_not_available
                raise
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": place})
    conn.commit()
    return True


def _queue_keys(key: int) -> list[int]:
    return [_lock_key(f"queue:{key}:{i}") for i in range(LOCK_QUEUE)]


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's own reaping: RUNNING trials whose heartbeat is older than the grace period
    become FAIL, and the retry callback queues each again with the same params."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@functools.lru_cache(maxsize=128)  # one storage per process; the bench: one per client
def _trial_cache(opened: RDBStorage) -> optuna.storages.BaseStorage:
    return optuna.storages.get_storage(opened)


def trial_cache(opened: str | RDBStorage) -> optuna.storages.BaseStorage:
    """The storage behind Optuna's trial cache (what `study.optimize` reads through), kept
    for the process: each read fetches only the trials that are new or still unfinished, not
    the whole study. A SQLite URL: a new one each time, as before."""
    return optuna.storages.get_storage(opened) if isinstance(opened, str) else \
        _trial_cache(opened)
