"""Scheduled retraining: nights of the real pipeline (real Prefect, MLflow, Optuna stores)
on a data file that keeps arriving."""

from __future__ import annotations

import logging
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.flows.pipeline import pipeline_flow

from sweepflow import tracking
from sweepflow.config import load_config
from sweepflow.console import REPORT
from tests.conftest import make_frame

# Learns within a tiny night: the label words give the label away, and a high learning rate.
FAST = ["sweep.space={learning_rate: {type: float, low: 0.002, high: 0.004, log: true}}",
        "train.max_epochs=3"]


def _lines(caplog) -> str:
    """The console lines so far (the sweepflow.report logger), then forget them."""
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == REPORT)
    caplog.clear()
    return text


def _night(overrides: list[str], path, frame: pd.DataFrame):
    frame.to_csv(path, index=False)
    return pipeline_flow(load_config(overrides=overrides))


@pytest.mark.slow
def test_four_nights(tiny_overrides, tiny_csv, caplog):
    """First data; grown data (champion re-scored on the challenger's test rows, promoted);
    unchanged (skipped in seconds); drifted (label shift flagged)."""
    caplog.set_level(logging.INFO, logger=REPORT)
    overrides = [*tiny_overrides, *FAST]  # the default promotion rule: significant
    rows = make_frame(3000, seed=5)
    first = _night(overrides, tiny_csv, rows.iloc[:60])
    assert first.registry.decision == "promoted" and first.data_version.previous_run is None
    client = MlflowClient(tracking.tracking_uri(load_config(overrides=overrides)))

    grown = _night(overrides, tiny_csv, rows.iloc[:900])
    out = _lines(caplog)
    assert "data: +840 rows since run" in out, out
    version = grown.data_version
    assert version.added["train"] + version.added["validation"] + version.added["test"] == 840
    assert sum(version.removed.values()) == 0
    assert "re-scored on this run's" in out
    reg = grown.registry
    assert reg.comparison is not None
    assert reg.comparison.n == len(grown.evaluation.predictions.row)  # the same rows
    print(f"night 2: {reg.decision}: {reg.reason}")
    assert reg.decision == "promoted", reg.reason
    parent = client.get_run(grown.run_id).data
    assert "test/champion_f1_macro" in parent.metrics
    assert parent.tags["registry.vs_version"] == "1"

    start = time.perf_counter()
    unchanged = _night(overrides, tiny_csv, rows.iloc[:900])
    seconds = time.perf_counter() - start
    assert unchanged.skipped and unchanged.sweep is None
    run = client.get_run(unchanged.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweepflow.skipped"]
    assert "skipped:" in _lines(caplog)
    print(f"unchanged night skipped in {seconds:.1f} s")

    negative = rows.iloc[900:][rows.iloc[900:]["sentiment"] == "negative"].iloc[:400]
    drifted = _night(overrides, tiny_csv, pd.concat([rows.iloc[:900], negative]))
    out = _lines(caplog)
    assert "DRIFT beyond drift.threshold" in out and "labels" in drifted.drift.flagged, out
    tags = client.get_run(drifted.run_id).data.tags
    assert "labels" in tags["drift.flagged"]


@pytest.mark.slow
def test_a_night_that_brings_a_new_label(tiny_overrides, tiny_csv, caplog):
    """The data gains a class: the champion, which cannot predict it, is re-scored on the new
    test rows as it is, and the challenger that knows every label can beat it there."""
    caplog.set_level(logging.INFO, logger=REPORT)
    overrides = [*tiny_overrides, *FAST]
    rows = make_frame(3000, seed=6)
    known = rows[rows["sentiment"] != "positive"]
    first = _night(overrides, tiny_csv, known.iloc[:300])
    assert first.registry.decision == "promoted"
    positive = rows[rows["sentiment"] == "positive"]
    grown = _night(overrides, tiny_csv, pd.concat([known.iloc[:300], positive.iloc[:300]]))
    out = _lines(caplog)
    assert "re-scored on this run's" in out, out
    assert "trained before the labels positive: it never predicts them" in out, out
    reg = grown.registry
    assert reg.comparison is not None, reg.reason
    print(f"new label: {reg.decision}: {reg.reason}")
    assert reg.decision == "promoted", reg.reason
