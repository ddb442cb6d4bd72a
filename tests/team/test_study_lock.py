"""The study lock on a real PostgreSQL database: one holder at a time among many waiters,
at most LOCK_QUEUE of them waiting inside PostgreSQL (each on a connection), the rest on
none."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from sweepflow import storage
from sweepflow.stack import database_url, pg_server_url
from tests.team.conftest import _connect, postgres_problem

pytestmark = pytest.mark.postgres


def test_one_holder_and_a_short_queue_among_many_waiters():
    problem = postgres_problem()
    if problem:
        pytest.skip(f"needs PostgreSQL: {problem}")
    app = f"sf-lock-{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url(pg_server_url(), "postgres")
                           + f"?application_name={app}", poolclass=NullPool)
    key = storage._lock_key(app)  # noqa: SLF001 - a key of this test only
    inside, most_inside, most_waiting, turns = [0], [0], [0], []
    stop = threading.Event()

    def worker(n: int) -> None:
        for _ in range(4):
            with storage.advisory_lock(engine, key):
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
                time.sleep(0.02)
                turns.append(n)
                inside[0] -= 1

    def watch() -> None:  # waiters inside PostgreSQL: sessions of this test blocked on a lock
        conn = _connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.wait(0.005):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                            " AND wait_event_type = 'Lock'", (app,))
                most_waiting[0] = max(most_waiting[0], cur.fetchone()[0])
        conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stop.set()
    watcher.join()
    engine.dispose()
    assert not any(t.is_alive() for t in threads)
    assert sorted(turns) == sorted(list(range(12)) * 4)
    assert most_inside[0] == 1
    assert 1 <= most_waiting[0] <= storage.LOCK_QUEUE
