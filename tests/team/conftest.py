"""Team-mode fixtures: a real stack (PostgreSQL databases, an MLflow server with proxied
artifacts, a Prefect server on PostgreSQL) for the session, a fresh Optuna database per test,
and `sweepflow run` as a subprocess against them. Skipped when PostgreSQL is unreachable."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweepflow import stack
from sweepflow.stack import Stack, database_url, ensure_databases, pg_server_url, started_stack
from tests.conftest import make_frame
from tests.flows.servers import clean_env, free_port

BIN = Path(sys.executable).parent


def _connect(db: str = "postgres"):
    import psycopg2

    return psycopg2.connect(database_url(pg_server_url(), db), connect_timeout=5)


def postgres_problem() -> str | None:
    try:
        _connect().close()
    except Exception as err:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL unreachable at {pg_server_url()} ({str(err).strip()})"
    return None


def drop_databases(names: list[str]) -> None:
    stack.drop_databases(pg_server_url(), names)


def connections(db: str) -> int:
    conn = _connect()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,))
        n = cur.fetchone()[0]
    conn.close()
    return n


class ConnectionWatch:
    """Samples pg_stat_activity per database every half second; keeps the maxima."""

    def __init__(self, dbs: list[str]) -> None:
        self.peak = dict.fromkeys(dbs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for db in self.peak:
                self.peak[db] = max(self.peak[db], connections(db))

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    problem = postgres_problem()
    if problem:
        pytest.skip(f"team-mode tests need PostgreSQL: {problem}")
    prefix = f"sf_{uuid.uuid4().hex[:10]}"
    home = tmp_path_factory.mktemp("team-stack")
    try:
        with started_stack(home, prefix, mlflow_port=free_port(),
                           prefect_port=free_port()) as running:
            yield running
    finally:
        drop_databases([f"{prefix}_{k}" for k in ("optuna", "mlflow", "prefect")])


@pytest.fixture
def optuna_db(team_stack: Stack) -> Iterator[str]:
    """A fresh PostgreSQL database for this test's Optuna study; its name."""
    name = f"sf_{uuid.uuid4().hex[:12]}"
    ensure_databases(pg_server_url(), [name])
    yield name
    drop_databases([name])


@pytest.fixture
def team_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tweets.csv"
    make_frame(600).to_csv(path, index=False)
    return path


@pytest.fixture
def team_overrides(team_csv: Path, tiny_model_dir: Path, optuna_db: str,
                   team_stack: Stack) -> list[str]:
    """A tiny sweep long enough to be killed in the middle of a trial (~100 steps)."""
    return [
        f"data.path={team_csv}", "data.max_train_samples=null", "data.max_eval_samples=null",
        f"model.name_or_path={tiny_model_dir}", "tokenize.max_length=16",
        "train.max_epochs=4", "train.batch_size=16", "train.val_checks_per_epoch=2",
        "train.early_stopping_patience=20", "train.precision=32-true", "compress.enabled=false",
        "sweep.pruner=none", "sweep.n_trials=4", "sweep.workers=2",
        "registry.refuse_single_class=false",
        f"sweep.storage={database_url(pg_server_url(), optuna_db)}",
        f"sweep.work_pool=pool-{uuid.uuid4().hex[:8]}", "sweep.heartbeat_interval=1",
        "sweep.grace_period=4", "sweep.max_retry=2",
        f"tracking.uri={team_stack.mlflow_url}",
        f"tracking.experiment=team-{uuid.uuid4().hex[:8]}",
    ]


@pytest.fixture
def team_env(team_stack: Stack, store: Path) -> dict[str, str]:
    return clean_env(PREFECT_API_URL=team_stack.prefect_api, SWEEPFLOW_HOME=str(store),
                     PREFECT_WORKER_QUERY_SECONDS="1", HF_HUB_OFFLINE="1",
                     HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                     PREFECT_SERVER_ANALYTICS_ENABLED="false")


def sweepflow_cmd(*args: str) -> list[str]:
    return [str(BIN / "sweepflow"), *args]

