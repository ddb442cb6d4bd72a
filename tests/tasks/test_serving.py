"""`sweepflow serve-model`: MLflow's own scoring server, started as the CLI starts it, serving
the registered champion (a transformers model, wrapped once into the text classifier model);
texts posted over real HTTP come back with labels and probabilities, bad texts with a short
400. The command itself runs from another working folder against a store made by a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.tasks.evaluate import Scores, log_model
from sweepflow.tasks.register import champion_uri, register
from sweepflow.tasks.serving import serve_command, serve_env, served_model

from sweepflow import stack, tracking
from sweepflow.config import load_config
from sweepflow.netutil import NotUp, free_port, wait_until_up

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


def test_the_champion_is_served_over_http(champion):
    tracker = tracking.Tracker.open(champion)
    model = served_model(champion, tracker, champion_uri(champion))
    assert served_model(champion, tracker, champion_uri(champion)) == model  # wrapped once
    port = free_port()
    server = subprocess.Popen(serve_command(model, "127.0.0.1", port), env=serve_env(tracker.uri),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/ping", 180, server)
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


SWEEPFLOW = str(Path(sys.executable).parent / "sweepflow")


def _cli_env(store: Path, tmp: Path) -> dict[str, str]:
    """A user's shell: no Prefect API (the run starts its temporary server), the store."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    return {**env, "SWEEPFLOW_HOME": str(store), "PREFECT_HOME": str(tmp / "prefect-home"),
            "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The user's working folder: not the checkout, not the store."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


@pytest.mark.slow
def test_serve_model_command_after_a_run(tiny_overrides, tmp_path, workdir):
    store = tmp_path / "store"
    env = _cli_env(store, tmp_path)
    run = subprocess.run([SWEEPFLOW, "run", *tiny_overrides], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen([SWEEPFLOW, "serve-model", "--port", str(port),
                                   *tiny_overrides], cwd=workdir, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{url}/ping", 300, server)
        except NotUp as err:
            pytest.fail(f"{err}\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        reply = httpx.post(f"{url}/invocations", json={"inputs": ["love it", "hate it"]},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        rows = reply.json()["predictions"]
        assert len(rows) == 2 and all(r["label"] in r["probabilities"] for r in rows)
        reply = httpx.post(f"{url}/invocations", json={"inputs": ["x" * 200_000]}, timeout=60)
        assert reply.status_code == 400
        assert len(reply.content) < 2000, reply.content[:300]
        assert "text 1 has 200,000 characters" in reply.json()["message"]
    finally:
        stack.stop(server, grace=10)
    assert list(workdir.iterdir()) == []  # no mlflow.db, mlruns/ or model copy here


def test_serve_model_names_a_missing_model(tiny_overrides, tmp_path, workdir):
    store = tmp_path / "store"
    out = subprocess.run([SWEEPFLOW, "serve-model", *tiny_overrides], cwd=workdir,
                         env=_cli_env(store, tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stdout + out.stderr, out.stderr
    assert lines[0].startswith("serve error: cannot find models:/tiny@champion in sqlite:///")
    assert str(store) in lines[0] and "`sweepflow run` registers one" in lines[0]
    assert list(workdir.iterdir()) == []  # no stray mlflow.db
    assert not list(MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
                    .search_registered_models())
