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
    assert len(stored["pred"]) == parent.data.metrics["data/rows_test"]  # per text, not window
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


def test_sentence_pairs_end_to_end(tiny_overrides, tmp_path):
    from tests.tasks.test_pairs import make_pairs

    path = tmp_path / "pairs.csv"
    make_pairs().to_csv(path, index=False)
    overrides = [*tiny_overrides, f"data.path={path}", "data.text_column=[sentence1, sentence2]",
                 "data.label_column=label", "sweep.n_trials=1", "compress.enabled=true",
                 "compress.latency_texts=5", "compress.throughput_batches=1",
                 "compress.max_f1_drop=1"]
    config = load_config(overrides=overrides)
    summary = pipeline_flow(config)
    assert summary.registry is not None and summary.registry.version == 1
    info = mlflow.models.get_model_info(summary.evaluation.model_uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text", "text_pair"]
    aliases = MlflowClient(tracking.tracking_uri(config)).get_registered_model("tiny").aliases
    assert aliases["champion"] == 1 and aliases["champion-int8"] == 2
    pairs = {"same", "different"}

    for model in ([], ["--model", champion_uri(config)]):  # int8 twin, then the full model
        result = runner.invoke(app, ["predict", *overrides, *model, "great love", "--pair",
                                     "happy best", "awful hate", "--pair", "the road"])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(p["text"], p["text_pair"]) for p in lines] == [
            ("great love", "happy best"), ("awful hate", "the road")]
        assert all(p["label"] in pairs and 0 < p["probability"] <= 1 for p in lines)
    (tmp_path / "pairs.jsonl").write_text('{"text": "nice fun", "text_pair": "sad angry"}\n')
    result = runner.invoke(app, ["predict", *overrides, "--file", str(tmp_path / "pairs.jsonl")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text_pair"] == "sad angry"
    result = runner.invoke(app, ["predict", *overrides, "great love", "--pair", " "])
    assert result.exit_code == 1 and "text_pair 1 is empty" in result.output

    served = served_model(config, champion_uri(config))  # what `serve-model` serves
    frame = mlflow.pyfunc.load_model(served).predict(
        [{"text": "great love", "text_pair": "happy best"}])
    assert set(frame["label"]) <= pairs and len(frame) == 1
