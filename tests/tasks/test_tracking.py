"""Runs are closed whatever happens: FINISHED, FAILED on error, KILLED on Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from sweepflow import interrupts, tracking
from sweepflow.config import load_config


def _status(config, run_id: str) -> str:
    return MlflowClient(tracking.tracking_uri(config)).get_run(run_id).info.status


@pytest.mark.parametrize(("exc", "status"), [(None, "FINISHED"), (ValueError, "FAILED"),
                                             (KeyboardInterrupt, "KILLED")])
def test_managed_run_always_closes(exc, status):
    config = load_config(overrides=["tracking.experiment=t"])
    holder = {}
    try:
        with tracking.managed_run(config, "r") as run_id:
            holder["id"] = run_id
            if exc:
                raise exc("boom")
    except (ValueError, KeyboardInterrupt):
        pass
    assert _status(config, holder["id"]) == status


def test_default_store_is_sqlite_under_store(store):
    config = load_config()
    assert tracking.tracking_uri(config) == f"sqlite:///{store / 'mlflow.db'}"


def test_env_uri_overrides_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    assert tracking.tracking_uri(load_config()).endswith("x.db")


def test_artifacts_follow_the_tracking_store(tmp_path):
    """A SQLite store elsewhere keeps its artifacts beside it, not in the working directory;
    a server keeps its own default (None: the server proxies them)."""
    other = tmp_path / "elsewhere" / "mlflow.db"
    config = load_config(overrides=[f"tracking.uri=sqlite:///{other}"])
    assert tracking.artifact_location(config) == (other.parent / "artifacts").as_uri()
    served = load_config(overrides=["tracking.uri=http://127.0.0.1:5000"])
    assert tracking.artifact_location(served) is None
    chosen = load_config(overrides=["tracking.artifact_location=file:///srv/a"])
    assert tracking.artifact_location(chosen) == "file:///srv/a"


def test_tracker_hashes_by_its_fields_and_nests_runs():
    """Prefect's cache keys see the same Tracker whatever its client; a child run names its
    parent; a pickled tracker makes its own client."""
    import pickle

    from prefect.utilities.hashing import hash_objects

    tracker = tracking.Tracker.open(load_config(overrides=["tracking.experiment=t"]))
    same = tracking.Tracker(**tracker.model_dump())
    assert hash_objects(tracker) == hash_objects(same) is not None
    with tracker.start_run("parent") as parent, parent.start_run("child") as child:
        child.log(metrics={"m": 1.0}, params={"p": 2}, tags={"t": "v"})
    run = tracker.client.get_run(child.run_id)
    assert run.data.tags[tracking.PARENT_TAG] == parent.run_id
    assert (run.data.metrics["m"], run.data.params["p"], run.info.status) == (1.0, "2",
                                                                              "FINISHED")
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy == tracker and copy.client is not tracker.client


def test_a_reading_tracker_creates_no_experiment():
    tracker = tracking.Tracker.open(load_config(overrides=["tracking.experiment=absent"]),
                                    create=False)
    assert tracker.experiment_id is None
    assert tracker.client.get_experiment_by_name("absent") is None


@pytest.fixture
def handlers():
    """sweepflow's SIGINT/SIGTERM handlers for one test, pytest's restored afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_sigterm_inside_a_store_write_leaves_the_store_writable(monkeypatch, handlers):
    """SIGTERM at random moments of a run that does nothing but write to SQLite: raised inside
    the write it would keep the write lock and the KILLED close would wait 20 s, then fail."""
    config = load_config(overrides=["tracking.experiment=t"])
    tracker = tracking.Tracker.open(config)
    for delay in (0.05, 0.11, 0.17, 0.23, 0.29, 0.37):
        monkeypatch.setattr(interrupts, "_received", [])
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
        start, run_id = time.monotonic(), ""
        with pytest.raises(KeyboardInterrupt), tracker.start_run("r") as run:
            run_id = run.run_id
            for step in range(100_000):
                run.log({f"m{k}": step for k in range(20)})
        assert time.monotonic() - start < delay + 5
        if run_id:  # else the signal came while the run was being opened (a slow machine)
            assert _status(config, run_id) == "KILLED"
        client = MlflowClient(tracking.tracking_uri(config))
        runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
        assert "RUNNING" not in {r.info.status for r in runs}


def test_a_database_call_that_hangs_is_interrupted_after_the_limit(monkeypatch, handlers):
    """The wait for a database call to return is bounded: past DEFER_SECONDS the signal is
    raised inside it (a function of a module named like SQLAlchemy's stands for the call)."""
    monkeypatch.setattr(interrupts, "DEFER_SECONDS", 1.0)
    monkeypatch.setattr(interrupts, "_received", [])
    scope = {"__name__": "sqlalchemy.hanging"}
    exec("def hang():\n    import time\n    while True:\n        time.sleep(0.01)\n", scope)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        scope["hang"]()
    assert 1.1 <= time.monotonic() - start < 5
    assert interrupts.received() == signal.SIGTERM


def test_a_deferred_signal_does_not_cut_the_clean_up_of_an_interrupt(monkeypatch, handlers):
    """Lightning ends `fit` on SIGTERM with its own SystemExit while our signal waits for a
    database call: the wait's time limit must not raise into that exit's clean-up writes."""
    monkeypatch.setattr(interrupts, "DEFER_SECONDS", 0.5)
    monkeypatch.setattr(interrupts, "_received", [])
    scope = {"__name__": "sqlalchemy.cleanup"}
    exec("def write():\n    import time\n    time.sleep(1.5)\n    return 'written'\n", scope)

    def stopped_by_lightning() -> None:
        raise SystemExit(1)  # as Lightning's SIGTERMException

    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    written = None
    with pytest.raises(SystemExit):
        try:
            stopped_by_lightning()
        finally:  # the clean-up: a database call that outlasts the limit
            written = scope["write"]()
    assert written == "written"
    assert interrupts.received() == signal.SIGTERM
    assert not interrupts._pending


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_signal_inside_fit_waits_for_a_safe_point(monkeypatch, handlers):
    """Inside at_safe_points (Lightning's fit) a signal is raised at the next safe_point(), a
    batch boundary, never where it lands (a logger's write)."""
    monkeypatch.setattr(interrupts, "_received", [])
    with pytest.raises(KeyboardInterrupt), interrupts.at_safe_points():
        os.kill(os.getpid(), signal.SIGTERM)
        _spin(0.3)  # no safe point: nothing raised here
        reached = True
        interrupts.safe_point()
    assert reached and interrupts.received() == signal.SIGTERM
    assert not interrupts._pending


def test_a_held_signal_is_raised_after_the_limit_or_dropped_by_an_interrupt(monkeypatch,
                                                                              handlers):
    """No safe point within DEFER_SECONDS: raised where it is (outside database calls). The
    block left by an exception (Lightning's own SIGTERM exit) drops it: it is never raised
    into the clean-up after."""
    monkeypatch.setattr(interrupts, "DEFER_SECONDS", 0.3)
    monkeypatch.setattr(interrupts, "_received", [])
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), interrupts.at_safe_points():
        os.kill(os.getpid(), signal.SIGINT)
        _spin(5)
    assert 0.3 <= time.monotonic() - start < 3

    monkeypatch.setattr(interrupts, "_received", [])
    with pytest.raises(SystemExit), interrupts.at_safe_points():
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit(1)  # as Lightning's SIGTERMException
    _spin(0.6)  # the limit passes during the clean-up: nothing raised
    assert interrupts.received() == signal.SIGTERM and not interrupts._pending


def test_a_held_signal_outranks_an_error_of_the_block(monkeypatch, handlers):
    """A trial's own error after the signal landed does not swallow it: the sweep stops."""
    monkeypatch.setattr(interrupts, "_received", [])
    with pytest.raises(KeyboardInterrupt) as caught, interrupts.at_safe_points():
        os.kill(os.getpid(), signal.SIGINT)
        _spin(0.1)
        raise ValueError("diverged")
    assert isinstance(caught.value.__context__, ValueError)
    assert interrupts.received() == signal.SIGINT and not interrupts._pending
