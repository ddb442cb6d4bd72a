"""Task kinds through the whole pipeline on tiny data, then predict and the served model:
long documents in chunks (windows of 8 tokens, stride 2, a text's prediction the mean of its
windows' probabilities at evaluation, in the int8 twin, in `predict` and in `serve-model`)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.flows.cli import app
from sweepflow.flows.pipeline import pipeline_flow
from sweepflow.tasks.register import champion_uri
from sweepflow.tasks.serving import served_model
from typer.testing import CliRunner

from sweepflow import tracking
from sweepflow.config import load_config

LABELS = {"negative", "neutral", "positive"}
LONG = "great love happy the car road today news report city meeting best fun nice"
runner = CliRunner()
pytestmark = pytest.mark.slow


def test_long_documents_in_chunks_end_to_end(tiny_overrides):
    overrides = [*tiny_overrides, "sweep.n_trials=1", "tokenize.max_length=8",
                 "tokenize.long_text=chunk", "tokenize.stride=2", "compress.enabled=true",
                 "compress.latency_texts=5", "compress.throughput_batches=1",
                 "compress.max_f1_drop=1"]
    config = load_config(overrides=overrides)
    summary = pipeline_flow(config)
    assert summary.registry is not None and summary.registry.version == 1
    client = MlflowClient(tracking.tracking_uri(config))
    parent = client.get_run(summary.run_id)
    assert parent.data.params["tokenize.long_text"] == "chunk"
    stored = json.loads(mlflow.artifacts.load_text(
        f"runs:/{summary.run_id}/evaluation/test_predictions.json"))
    assert len(stored["pred"]) == 30  # one prediction per test text, not per window
    aliases = client.get_registered_model("tiny").aliases
    assert aliases["champion"] == 1 and aliases["champion-int8"] == 2

    for model in ([], ["--model", champion_uri(config)]):  # int8 twin, then the full model
        result = runner.invoke(app, ["predict", *overrides, *model, LONG, "awful hate"])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [p["text"] for p in lines] == [LONG, "awful hate"]
        assert all(p["label"] in LABELS and 0 < p["probability"] <= 1 for p in lines)

    served = served_model(config, champion_uri(config))  # what `serve-model` serves
    spec = json.loads(next(Path(served).rglob("classifier.json")).read_text())
    assert (spec["long_text"], spec["stride"], spec["max_length"]) == ("chunk", 2, 8)
    frame = mlflow.pyfunc.load_model(served).predict([LONG, "awful hate"])
    assert set(frame["label"]) <= LABELS and len(frame) == 2
