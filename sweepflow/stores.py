"""The stores a command opens (MLflow's and Optuna's SQLite files), checked before any work:
a truncated or corrupted file is one line naming it, not tracebacks halfway through a run."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse, urlsplit

from sweepflow.usererrors import StoreError


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = urlparse(uri).path.removeprefix("/")  # sqlite:////abs/path, sqlite:///rel/path
    path = "/" + path.lstrip("/") if path.startswith("/") else path
    return Path(path) if path and path != ":memory:" else None


def check_sqlite(path: Path) -> None:
    """PRAGMA quick_check on an existing file (a missing one is created later, fine)."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path} is not a usable SQLite database ({err}); restore it from a "
                         "backup or move it aside to start a new store") from None
    if rows != [("ok",)]:
        raise StoreError(f"{path} is corrupted (sqlite quick_check: {len(rows)} problem(s)); "
                         "restore it from a backup or move it aside to start a new store")


def check_tracking(uri: str) -> None:
    """MLflow 3 keeps runs in a database: a folder as tracking URI fails deep inside MLflow
    with a page of traceback; here it is one line that says what to write instead."""
    scheme = urlsplit(uri).scheme
    if (scheme == "file" or len(scheme) <= 1) \
            and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        folder = Path(urlsplit(uri).path if scheme == "file" else uri).expanduser().resolve()
        raise StoreError(f"tracking.uri {uri!r} is a folder; MLflow keeps runs in a "
                         f"database: use sqlite:///{folder / 'mlflow.db'} or an http:// "
                         "MLflow server")
    check(uri)


def check(*uris: str | None) -> None:
    for uri in uris:
        path = sqlite_path(uri) if uri else None
        if path is not None:
            check_sqlite(path)
