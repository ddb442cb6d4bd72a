"""MLflow helpers in one place: the store, the experiment, and runs that never stay RUNNING.

Runs are addressed by id through MlflowClient, so the helpers work from any thread. A run
opened here is closed with FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM); an
atexit hook closes any that a hard exit skipped.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: F401 - re-exported
from mlflow.tracking import MlflowClient
from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

from sweepflow import cost, owner
from sweepflow.config import SweepflowConfig
from sweepflow.paths import PACKAGE_DIR, store_dir

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
_open_runs: dict[str, str] = {}  # run id -> tracking uri
_lock = threading.Lock()


@contextmanager
def no_mlflow_prints() -> Iterator[None]:
    """Keep MLflow's unconditional console prints (registration notices) off the console
    unless the user asked for verbose logs; its errors still raise."""
    before = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = logging.getLogger("mlflow").getEffectiveLevel() < logging.ERROR
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = before


def tracking_uri(config: SweepflowConfig) -> str:
    """Config wins, then $MLFLOW_TRACKING_URI, then the SQLite store under mlruns/."""
    if config.tracking.uri:
        return config.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_location(config: SweepflowConfig) -> str | None:
    """Where a new experiment keeps its artifacts: the configured place, else beside the
    store they belong to (`artifacts/` next to a SQLite file), else the server's default
    (an MLflow server proxies them: `mlflow-artifacts:`)."""
    if config.tracking.artifact_location:
        return config.tracking.artifact_location
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        return (Path(urlparse(uri).path).parent / "artifacts").resolve().as_uri()
    return None


def setup(config: SweepflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new)."""
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(
        config.tracking.experiment, artifact_location=artifact_location(config)
    )


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # an installed wheel: its version
        return f"sweepflow-{importlib.metadata.version('sweepflow')}"


def log_cost(uri: str, run_id: str, meter: cost.Meter) -> None:
    """The run's cost/* metrics, and for a parent its trials' totals (best effort: a cost
    that cannot be logged never keeps a run from closing)."""
    try:
        client = MlflowClient(uri)
        metrics = meter.stop().metrics()
        run = client.get_run(run_id)
        if PARENT_TAG not in run.data.tags:
            children = client.search_runs([run.info.experiment_id],
                                          f"tags.`{PARENT_TAG}` = '{run_id}'",
                                          max_results=10_000)
            metrics |= cost.totals([c.data.metrics for c in children])
        now = now_ms()
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    except Exception as err:  # noqa: BLE001 - the run must still be closed
        log.warning("run %s: cost not logged: %s", run_id, err)


class RunKilled(Exception):  # noqa: N818 - a way to end a run, not a bug
    """Ends a managed run KILLED (not FAILED) with the message as its reason: the work was
    taken away from this process (e.g. its trial was failed and retried elsewhere)."""


def _close(uri: str, run_id: str, status: str, error: str | None = None) -> None:
    client = MlflowClient(uri)
    if error:
        client.set_tag(run_id, "error", error[:4000])
    client.set_terminated(run_id, status=status)
    with _lock:
        _open_runs.pop(run_id, None)


@atexit.register
def _close_leftovers() -> None:
    for run_id, uri in list(_open_runs.items()):
        try:
            _close(uri, run_id, RunStatus.to_string(RunStatus.KILLED), "process exited")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


@contextmanager
def managed_run(
    config: SweepflowConfig,
    run_name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Create a run and always close it: FINISHED, FAILED on error, KILLED on interrupt."""
    experiment_id = setup(config)
    uri = tracking_uri(config)
    all_tags = {**owner.me().tags(), **(tags or {})}  # a later command can reap it
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = MlflowClient(uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    with _lock:
        _open_runs[run_id] = uri
    meter = cost.Meter()
    try:
        yield run_id
    except RunKilled as err:
        log_cost(uri, run_id, meter)
        _close(uri, run_id, "KILLED", str(err))
        raise
    except Exception as err:
        log_cost(uri, run_id, meter)
        _close(uri, run_id, "FAILED", f"{type(err).__name__}: {err}")
        raise
    except BaseException as err:  # Ctrl-C, SIGTERM (Prefect's TerminationSignal), exit
        log_cost(uri, run_id, meter)
        _close(uri, run_id, "KILLED", f"interrupted: {type(err).__name__}")
        raise
    else:
        log_cost(uri, run_id, meter)
        _close(uri, run_id, "FINISHED")


@contextmanager
def active_run(config: SweepflowConfig, run_id: str) -> Iterator[None]:
    """Make an open run the fluent active run in this thread (for log_input, log_model),
    leaving it open afterwards."""
    setup(config)
    current = mlflow.active_run()
    if current is not None and current.info.run_id == run_id:
        yield
        return
    with no_mlflow_prints(), mlflow.start_run(run_id=run_id, nested=current is not None):
        yield  # a server URI: no "View run at" prints on the quiet console
    MlflowClient(tracking_uri(config)).update_run(run_id, status="RUNNING")


def now_ms() -> int:
    return int(time.time() * 1000)
