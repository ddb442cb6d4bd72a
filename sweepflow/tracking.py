"""MLflow in one place: the store, the experiment, and runs that never stay RUNNING.

A `Tracker`, opened once from the config where a flow or command starts, owns the tracking
URI, one MlflowClient, the experiment and the run the steps log to; the steps that log take
it instead of rebuilding a client from the config. Runs are addressed by id through the
client, so it works from any thread. A run opened here is closed with FINISHED, FAILED (an
exception) or KILLED (Ctrl-C, SIGTERM); an atexit hook closes any that a hard exit skipped.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: F401 - re-exported
from mlflow.tracking import MlflowClient
from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM
from pydantic import BaseModel, ConfigDict

from sweepflow import cost, owner, stores
from sweepflow.config import SweepflowConfig
from sweepflow.paths import PACKAGE_DIR, store_dir
from sweepflow.usererrors import StoreError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
_open_runs: dict[str, MlflowClient] = {}  # run id -> the client that opened it
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


def artifact_location(config: SweepflowConfig, uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: the configured place, else beside the
    store they belong to (`artifacts/` next to a SQLite file), else the server's default
    (an MLflow server proxies them: `mlflow-artifacts:`). `uri`: the tracking URI, when
    already known."""
    if config.tracking.artifact_location:
        return config.tracking.artifact_location
    uri = uri or tracking_uri(config)
    if uri.startswith("sqlite:///"):
        return (Path(urlparse(uri).path).parent / "artifacts").resolve().as_uri()
    return None


def _first_request(uri: str, call: Any) -> Any:
    """`call`, the first request to the tracking server: a server that asks for credentials
    it did not get (or refuses them) is one StoreError line naming the variables."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as err:
        if err.error_code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise
        said = "refused" if os.environ.get("MLFLOW_TRACKING_PASSWORD") else "asks for"
        raise StoreError(
            f"tracking.uri={uri}: the MLflow server {said} the credentials "
            f"({err.get_http_status_code()}): export MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (`sweepflow stack` said where they are)") from None


class Tracker(BaseModel):
    """The tracking connection handed to the steps: URI, experiment, and `run_id`, the run
    they log to (the pipeline's parent run, a trial's run; None before one is open). Small
    and frozen: Prefect hashes it for cache keys by its fields, and it travels as JSON; the
    MlflowClient is made once, on first use."""

    model_config = ConfigDict(frozen=True)
    uri: str
    experiment: str
    experiment_id: str | None  # None: not created (opened to read, and it does not exist)
    run_id: str | None = None

    @classmethod
    def open(cls, config: SweepflowConfig, run_id: str | None = None, create: bool = True
             ) -> Tracker:
        """Point MLflow at the configured store (a damaged SQLite file is one StoreError
        line); the experiment is created if new (unless not `create`: a command that only
        reads the store)."""
        uri = tracking_uri(config)
        stores.check_tracking(uri)
        mlflow.set_tracking_uri(uri)  # the fluent API (log_model, register_model) reads it
        client = MlflowClient(uri)
        name = config.tracking.experiment
        exp = _first_request(uri, lambda: client.get_experiment_by_name(name))
        if exp is not None:
            exp_id = exp.experiment_id
        elif create:
            exp_id = client.create_experiment(name,
                                              artifact_location=artifact_location(config, uri))
        else:
            exp_id = None
        tracker = cls(uri=uri, experiment=name, experiment_id=exp_id, run_id=run_id)
        tracker.__dict__["client"] = client  # the one already made (see cached_property)
        return tracker

    @cached_property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def __getstate__(self) -> dict[Any, Any]:  # a pickled tracker makes its own client
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k != "client"}
        return state

    def on(self, run_id: str | None) -> Tracker:
        """The same connection, logging to `run_id`."""
        return self.model_copy(update={"run_id": run_id})

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no MLflow run is open to log to")
        return self.run_id

    @contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, str] | None = None,
                  end_tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
        """A new run (a child of `run_id` when set), always closed: FINISHED, FAILED on
        error, KILLED on interrupt. Yields the tracker logging to it. `end_tags`: a mapping
        the caller fills while the run is open; on success they are logged in the run's
        closing batch, with its cost."""
        all_tags = {**owner.me().tags(), **(tags or {})}  # a later command can reap it
        if self.run_id:
            all_tags[PARENT_TAG] = self.run_id
        run_id = self.client.create_run(self.experiment_id, run_name=run_name,
                                        tags=all_tags).info.run_id
        with _lock:
            _open_runs[run_id] = self.client
        meter, child = cost.Meter(), PARENT_TAG in all_tags
        try:
            yield self.on(run_id)
        except RunKilled as err:
            log_cost(self.client, run_id, meter, child)
            _close(self.client, run_id, "KILLED", str(err))
            raise
        except Exception as err:
            log_cost(self.client, run_id, meter, child)
            _close(self.client, run_id, "FAILED", f"{type(err).__name__}: {err}")
            raise
        except BaseException as err:  # Ctrl-C, SIGTERM (Prefect's TerminationSignal), exit
            log_cost(self.client, run_id, meter, child)
            _close(self.client, run_id, "KILLED", f"interrupted: {type(err).__name__}")
            raise
        else:
            log_cost(self.client, run_id, meter, child, dict(end_tags or {}))
            _close(self.client, run_id, "FINISHED")

    def log(self, metrics: Mapping[str, float] | None = None,
            params: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        """Metrics (step 0, now), params (as text) and tags on the run, in batches of 100."""
        now = now_ms()
        m = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        p = [Param(k, str(v)) for k, v in (params or {}).items()]
        t = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, max(len(m), len(p), len(t), 1), 100):
            self.client.log_batch(self._run(), metrics=m[i:i + 100], params=p[i:i + 100],
                                  tags=t[i:i + 100])

    def log_dict(self, obj: Any, path: str) -> None:
        self.client.log_dict(self._run(), obj, path)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self._run(), text, path)

    def log_figure(self, figure: Any, path: str, **save_kwargs: Any) -> None:
        self.client.log_figure(self._run(), figure, path,
                               **({"save_kwargs": save_kwargs} if save_kwargs else {}))

    def log_table(self, frame: Any, path: str) -> None:
        self.client.log_table(self._run(), frame, path)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make the open run the fluent active run in this thread (for log_input,
        log_model), leaving it open afterwards."""
        mlflow.set_tracking_uri(self.uri)
        current = mlflow.active_run()
        if current is not None and current.info.run_id == self._run():
            yield
            return
        with no_mlflow_prints(), mlflow.start_run(run_id=self._run(), nested=current is not None):
            yield  # a server URI: no "View run at" prints on the quiet console
        self.client.update_run(self._run(), status="RUNNING")

    def register_model(self, model_uri: str, name: str, tags: Mapping[str, str]) -> int:
        """A new version of registered model `name`; its number."""
        mlflow.set_tracking_uri(self.uri)  # register_model reads the global registry URI
        with no_mlflow_prints():  # register_model prints "Successfully registered ..."
            return int(mlflow.register_model(model_uri, name, tags=dict(tags)).version)


def setup(config: SweepflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new)."""
    return Tracker.open(config).experiment_id


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # an installed wheel: its version
        return f"sweepflow-{importlib.metadata.version('sweepflow')}"


def log_cost(client: MlflowClient, run_id: str, meter: cost.Meter, child: bool,
             tags: Mapping[str, str] | None = None) -> None:
    """The run's cost/* metrics, and for a parent (not `child`) its trials' totals, in one
    batch with `tags`. The cost is best effort (it never keeps a run from closing); the tags
    are not: if the batch fails they are logged alone, and that raises."""
    metrics: dict[str, float] = {}
    try:
        metrics = meter.stop().metrics()
        if not child:
            experiment = client.get_run(run_id).info.experiment_id
            children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{run_id}'",
                                          max_results=10_000)
            metrics |= cost.totals([c.data.metrics for c in children])
    except Exception as err:  # noqa: BLE001 - the run must still be closed
        log.warning("run %s: cost not measured: %s", run_id, err)
    now, listed = now_ms(), [RunTag(k, v) for k, v in (tags or {}).items()]
    try:
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         tags=listed)
    except Exception as err:
        log.warning("run %s: cost not logged: %s", run_id, err)
        if listed:
            client.log_batch(run_id, tags=listed)


class RunKilled(Exception):  # noqa: N818 - a way to end a run, not a bug
    """Ends a managed run KILLED (not FAILED) with the message as its reason: the work was
    taken away from this process (e.g. its trial was failed and retried elsewhere)."""


def _close(client: MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    if error:
        client.set_tag(run_id, "error", error[:4000])
    client.set_terminated(run_id, status=status)
    with _lock:
        _open_runs.pop(run_id, None)


@atexit.register
def _close_leftovers() -> None:
    for run_id, client in list(_open_runs.items()):
        try:
            _close(client, run_id, RunStatus.to_string(RunStatus.KILLED), "process exited")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


@contextmanager
def managed_run(
    config: SweepflowConfig,
    run_name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Tracker.start_run from a config, for scripts and tests: yields the run id."""
    with Tracker.open(config, parent_run_id).start_run(run_name, tags) as run:
        yield run.run_id


@contextmanager
def active_run(config: SweepflowConfig, run_id: str) -> Iterator[None]:
    """Tracker.active from a config, for scripts and tests."""
    with Tracker.open(config, run_id).active():
        yield


def now_ms() -> int:
    return int(time.time() * 1000)
