"""`sweepflow serve-model`: MLflow's own scoring server, started as the CLI starts it, serving
the registered champion (a transformers model, wrapped once into the text classifier model);
texts posted over real HTTP come back with labels and probabilities, bad texts with a 400."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.flows.cli import app
from sweepflow.tasks.evaluate import Scores, log_model
from sweepflow.tasks.register import champion_uri, register
from sweepflow.tasks.serving import serve_command, serve_env, served_model
from typer.testing import CliRunner

from sweepflow import tracking
from sweepflow.config import load_config

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def champion(tiny_overrides, tiny_model_dir, tmp_path):
    """A three-label tiny model logged like evaluate does and registered as champion."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "three-labels"
    AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, ignore_mismatched_sizes=True,
        id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)},
    ).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    config = load_config(overrides=[*tiny_overrides, "compress.max_text_chars=100"])
    scores = Scores(accuracy=0.5, precision_macro=0.5, recall_macro=0.5, f1_macro=0.5)
    with tracking.managed_run(config, "sweep-tiny") as run_id:
        with tracking.active_run(config, run_id):
            uri = log_model(out, None)
        register(config, uri, scores, "digest", tracking.Tracker.open(config, run_id))
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_champion_is_served_over_http(champion):
    tracker = tracking.Tracker.open(champion)
    model = served_model(champion, tracker, champion_uri(champion))
    assert served_model(champion, tracker, champion_uri(champion)) == model  # wrapped once
    port = _free_port()
    server = subprocess.Popen(serve_command(model, "127.0.0.1", port), env=serve_env(tracker.uri),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/ping", server)
        reply = httpx.post(f"{url}/invocations", timeout=60,
                           json={"inputs": ["great love happy", "awful hate worst"]})
        assert reply.status_code == 200, reply.text
        rows = reply.json()["predictions"]
        assert [r["label"] in LABELS for r in rows] == [True, True]
        for r in rows:
            assert sorted(r["probabilities"]) == LABELS
            assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert r["score"] == pytest.approx(max(r["probabilities"].values()))
        for texts, message in ((["fine", ""], "text 2 is empty"),
                               (["x" * 101], "text 1 has 101 characters")):
            reply = httpx.post(f"{url}/invocations", json={"inputs": texts}, timeout=60)
            assert reply.status_code == 400 and message in reply.json()["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {seconds} s")


def test_serve_model_names_a_missing_model(tiny_overrides):
    result = CliRunner().invoke(app, ["serve-model", *tiny_overrides])
    assert result.exit_code == 1
    assert "cannot find models:/tiny@champion" in result.stderr
    assert not list(MlflowClient(tracking.tracking_uri(load_config(overrides=tiny_overrides)))
                    .search_registered_models())
