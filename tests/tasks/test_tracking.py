"""Runs are closed whatever happens: FINISHED, FAILED on error, KILLED on Ctrl-C."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sweepflow import tracking
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


def test_metric_buffer_batches(tmp_path):
    config = load_config(overrides=["tracking.experiment=t"])
    with tracking.managed_run(config, "r") as run_id:
        buf = tracking.MetricBuffer(tracking.tracking_uri(config), run_id)
        for step in range(50):
            buf.add({"train/loss": 1.0 / (step + 1)}, step)
        buf.flush()
    client = MlflowClient(tracking.tracking_uri(config))
    assert len(client.get_metric_history(run_id, "train/loss")) == 50
    assert buf.calls == 1
