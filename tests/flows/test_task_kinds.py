"""Task kinds through the whole pipeline on tiny data, then predict and the served model:
long documents in chunks (windows of 8 tokens, stride 2, a text's prediction the mean of its
windows' probabilities at evaluation, in the int8 twin, in `predict` and in `serve-model`),
sentence pairs and multi-label; pairs and multi-label also through a real `sweepflow
serve-model` over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
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
from tests.flows.servers import BIN, clean_env, free_port, stop, tail

LABELS = {"negative", "neutral", "positive"}
TAGS = {"billing", "urgent", "bug"}
LONG = "great love happy the car road today news report city meeting best fun nice"
runner = CliRunner()


def run_kind(tiny_overrides: list[str], *extra: str, compress: bool = True):
    """One trial of the whole pipeline with `extra` overrides (and the int8 twin, registered
    whatever its drop): (overrides, config, summary), the model registered as v1."""
    twin = ["compress.enabled=true", "compress.latency_texts=5",
            "compress.throughput_batches=1", "compress.max_f1_drop=1"] if compress else []
    overrides = [*tiny_overrides, "sweep.n_trials=1", *twin, *extra]
    config = load_config(overrides=overrides)
    summary = pipeline_flow(config)
    assert summary.registry is not None and summary.registry.version == 1
    return overrides, config, summary


def predict_lines(overrides: list[str], *args: str) -> list[dict]:
    """`sweepflow predict` in process: its JSON lines."""
    result = runner.invoke(app, ["predict", *overrides, *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def post_to_served(overrides: list[str], inputs: list, tmp_path: Path) -> list[dict]:
    """A real `sweepflow serve-model` of the champion on a free port, on this test's store:
    POST /invocations, its predictions."""
    port = free_port()
    uri = tracking.tracking_uri(load_config(overrides=overrides))
    log = tmp_path / "serve-model.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "sweepflow"), "serve-model", *overrides, "--port",
                                 str(port)], env=clean_env(MLFLOW_TRACKING_URI=uri), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(360):
            assert proc.poll() is None, tail(log)
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        reply = httpx.post(f"{url}/invocations", json={"inputs": inputs}, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["predictions"]
    finally:
        stop(proc)


@pytest.mark.slow
def test_long_documents_in_chunks_end_to_end(tiny_overrides):
    overrides, config, summary = run_kind(tiny_overrides, "tokenize.max_length=8",
                                          "tokenize.long_text=chunk", "tokenize.stride=2")
    client = MlflowClient(tracking.tracking_uri(config))
    parent = client.get_run(summary.run_id)
    assert parent.data.params["tokenize.long_text"] == "chunk"
    stored = json.loads(mlflow.artifacts.load_text(
        f"runs:/{summary.run_id}/evaluation/test_predictions.json"))
    assert len(stored["pred"]) == parent.data.metrics["data/rows_test"]  # per text, not window
    aliases = client.get_registered_model("tiny").aliases
    assert aliases["champion"] == 1 and aliases["champion-int8"] == 2

    for model in ([], ["--model", champion_uri(config)]):  # int8 twin, then the full model
        lines = predict_lines(overrides, *model, LONG, "awful hate")
        assert [p["text"] for p in lines] == [LONG, "awful hate"]
        assert all(p["label"] in LABELS and 0 < p["probability"] <= 1 for p in lines)

    served = served_model(config, tracking.Tracker.open(config), champion_uri(config))
    spec = json.loads(next(Path(served).rglob("classifier.json")).read_text())
    assert (spec["long_text"], spec["stride"], spec["max_length"]) == ("chunk", 2, 8)
    frame = mlflow.pyfunc.load_model(served).predict([LONG, "awful hate"])
    assert set(frame["label"]) <= LABELS and len(frame) == 2


@pytest.mark.slow
def test_sentence_pairs_end_to_end(tiny_overrides, tmp_path):
    from tests.tasks.test_pairs import make_pairs

    path = tmp_path / "pairs.csv"
    make_pairs().to_csv(path, index=False)
    overrides, config, summary = run_kind(
        tiny_overrides, f"data.path={path}", "data.text_column=[sentence1, sentence2]",
        "data.label_column=label")
    info = mlflow.models.get_model_info(summary.evaluation.model_uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text", "text_pair"]
    aliases = MlflowClient(tracking.tracking_uri(config)).get_registered_model("tiny").aliases
    assert aliases["champion"] == 1 and aliases["champion-int8"] == 2
    pairs = {"same", "different"}

    for model in ([], ["--model", champion_uri(config)]):  # int8 twin, then the full model
        lines = predict_lines(overrides, *model, "great love", "--pair", "happy best",
                              "awful hate", "--pair", "the road")
        assert [(p["text"], p["text_pair"]) for p in lines] == [
            ("great love", "happy best"), ("awful hate", "the road")]
        assert all(p["label"] in pairs and 0 < p["probability"] <= 1 for p in lines)
    (tmp_path / "pairs.jsonl").write_text('{"text": "nice fun", "text_pair": "sad angry"}\n')
    result = runner.invoke(app, ["predict", *overrides, "--file", str(tmp_path / "pairs.jsonl")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text_pair"] == "sad angry"
    result = runner.invoke(app, ["predict", *overrides, "great love", "--pair", " "])
    assert result.exit_code == 1 and "text_pair 1 is empty" in result.output

    served = served_model(config, tracking.Tracker.open(config), champion_uri(config))
    frame = mlflow.pyfunc.load_model(served).predict(
        [{"text": "great love", "text_pair": "happy best"}])
    assert set(frame["label"]) <= pairs and len(frame) == 1
    rows = post_to_served(overrides, [{"text": "great love", "text_pair": "happy best"}],
                          tmp_path)
    assert len(rows) == 1 and rows[0]["label"] in pairs


def _multilabel_csv(tmp_path: Path) -> Path:
    from tests.tasks.test_multilabel import make_multilabel

    path = tmp_path / "tickets.csv"
    make_multilabel().to_csv(path, index=False)
    return path


def test_multi_label_fast(tiny_overrides, tmp_path):
    """The default tier's multi-label run: label columns, no int8 twin, the label sets and
    thresholds of the logged model."""
    path = _multilabel_csv(tmp_path)
    overrides, config, summary = run_kind(
        tiny_overrides, f"data.path={path}", "data.label_columns=[billing, urgent, bug]",
        "train.max_epochs=1", compress=False)
    metrics = MlflowClient(tracking.tracking_uri(config)).get_run(summary.run_id).data.metrics
    for key in ("test/f1_micro", "test/f1_macro", "test/subset_accuracy", "test/f1/billing",
                "test/f1/urgent", "test/f1/bug", "test/baseline_f1_micro"):
        assert 0 <= metrics[key] <= 1, key
    assert len(summary.evaluation.thresholds) == 3
    model = mlflow.pyfunc.load_model(champion_uri(config))
    spec = model.unwrap_python_model().classifier.spec  # the thresholds saved with the model
    assert spec.multi_label and spec.thresholds == summary.evaluation.thresholds
    frame = model.predict(["great love", "car road"])
    assert list(frame.columns) == ["labels", "probabilities"]
    assert all(set(labels) <= set(TAGS) for labels in frame["labels"])


@pytest.mark.slow
def test_multi_label_end_to_end(tiny_overrides, tmp_path):
    path = _multilabel_csv(tmp_path)
    overrides, config, summary = run_kind(tiny_overrides, f"data.path={path}",
                                          "data.label_column=tags", "sweep.metric=val/f1_macro")
    client = MlflowClient(tracking.tracking_uri(config))
    aliases = client.get_registered_model("tiny").aliases
    assert aliases["champion"] == 1 and aliases["champion-int8"] == 2
    stored = json.loads(mlflow.artifacts.load_text(
        f"runs:/{summary.run_id}/evaluation/test_predictions.json"))
    assert len(stored["pred"][0]) == 3  # a 0/1 row per test text

    for model in ([], ["--model", champion_uri(config)]):  # int8 twin, then the full model
        lines = predict_lines(overrides, *model, "great love awful", "the")
        assert [p["text"] for p in lines] == ["great love awful", "the"]
        for p in lines:
            assert set(p) == {"text", "labels", "probabilities"}
            assert set(p["labels"]) <= set(TAGS) and sorted(p["probabilities"]) == sorted(TAGS)
    rows = post_to_served(overrides, ["great love awful", "car road"], tmp_path)
    assert len(rows) == 2 and all(set(r["labels"]) <= set(TAGS) for r in rows)

    # A second run on the same data: the registry compares the two on the same test rows
    # (McNemar on subset correctness, bootstrap of the macro-F1 difference).
    again = pipeline_flow(load_config(overrides=[*overrides, "sweep.on_unchanged=more_trials"]))
    assert again.registry is not None and again.registry.comparison is not None
    assert "McNemar" in again.registry.reason


@pytest.mark.slow
def test_max_length_auto_end_to_end(tiny_overrides):
    """`tokenize.max_length: auto` resolves once, on the training texts: the run logs the
    length it used (not "auto"), and predict and the served model cut texts at that length."""
    overrides, config, summary = run_kind(
        tiny_overrides, "tokenize.max_length=auto", "tokenize.auto.floor=8",
        "tokenize.auto.cap=12", "tokenize.auto.percentile=100", compress=False)
    client = MlflowClient(tracking.tracking_uri(config))
    used = int(client.get_run(summary.run_id).data.params["tokenize.max_length"])
    assert 8 <= used <= 12
    lines = predict_lines(overrides, "--model", champion_uri(config), LONG, "awful hate")
    assert all(p["label"] in LABELS for p in lines)
    served = served_model(config, tracking.Tracker.open(config), champion_uri(config))
    spec = json.loads(next(Path(served).rglob("classifier.json")).read_text())
    assert spec["max_length"] == used
