"""predict treats every text as text: numbers, dict-looking strings and 1 MB texts are
labelled (truncated by the tokenizer), an empty one is refused, stdin works."""

from __future__ import annotations

import json

import mlflow
import pytest
from sweepflow.flows.cli import app
from sweepflow.tasks.evaluate import log_model
from typer.testing import CliRunner

from sweepflow import tracking
from sweepflow.config import load_config

runner = CliRunner()


@pytest.fixture
def model_uri(tiny_overrides, tiny_model_dir):
    config = load_config(overrides=tiny_overrides)
    tracking.setup(config)
    with mlflow.start_run():
        return log_model(tiny_model_dir, None)


def test_every_text_is_a_string(tiny_overrides, model_uri):
    texts = ["42", "{'label': 'x', 'score': 1}", "[1, 2]", "great " * 200_000]
    result = runner.invoke(app, ["predict", *tiny_overrides, "--model", model_uri, *texts[:3],
                                 "-"], input=texts[3] + "\nnice fun day\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["text"] for p in lines] == [*texts, "nice fun day"]
    assert all(isinstance(p["label"], str) and 0 < p["probability"] <= 1 for p in lines)


def test_empty_text_is_refused(tiny_overrides, model_uri):
    result = runner.invoke(app, ["predict", *tiny_overrides, "--model", model_uri, "ok", "  "])
    assert result.exit_code == 1
    assert result.stderr.strip() == "predict error: text 2 is empty: give a text to label"
    assert result.stdout == ""
