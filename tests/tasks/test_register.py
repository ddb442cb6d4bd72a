"""Champion/challenger promotion against a real MLflow store (SQLite in tmp_path).

The registered models are empty logged models: the registry logic never loads them."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sweepflow import tracking
from tasks.evaluate import Scores
from tasks.register import CHALLENGER, CHAMPION, Champion, decide, register


def _scores(f1: float) -> Scores:
    return Scores(accuracy=f1, precision_macro=f1, recall_macro=f1, f1_macro=f1)


def _register(config, f1: float, digest: str):
    """A parent run with an (empty) logged model, registered like the pipeline does."""
    with tracking.managed_run(config, "sweep-tiny") as run_id:
        with tracking.active_run(config, run_id):
            model = mlflow.initialize_logged_model(name="model")
        result = register(config, f"models:/{model.model_id}", _scores(f1), digest, run_id)
    return result, MlflowClient(tracking.tracking_uri(config)).get_run(run_id)


def _aliases(config) -> dict[str, int]:
    client = MlflowClient(tracking.tracking_uri(config))
    return dict(client.get_registered_model("tiny").aliases)


def test_champion_challenger_promotion(tiny_config):
    first, run = _register(tiny_config, 0.6, "aaa")
    assert (first.version, first.decision, first.reason) == (1, "promoted", "no champion yet")
    assert _aliases(tiny_config) == {CHAMPION: 1, CHALLENGER: 1}
    assert run.data.tags["registry.decision"] == "promoted"
    assert "test/champion_f1_macro" not in run.data.metrics
    mv = MlflowClient(tracking.tracking_uri(tiny_config)).get_model_version("tiny", "1")
    assert mv.tags["data.test_digest"] == "aaa" and float(mv.tags["test/f1_macro"]) == 0.6

    worse, run = _register(tiny_config, 0.5, "aaa")
    assert (worse.version, worse.decision, worse.champion_version) == (2, "kept_champion", 1)
    assert _aliases(tiny_config) == {CHAMPION: 1, CHALLENGER: 2}
    assert run.data.tags["registry.version"] == "2"
    assert run.data.metrics["test/champion_f1_macro"] == 0.6

    other, run = _register(tiny_config, 0.9, "bbb")
    assert other.decision == "not_comparable" and "not comparable" in other.reason
    assert _aliases(tiny_config) == {CHAMPION: 1, CHALLENGER: 3}
    assert "test/champion_f1_macro" not in run.data.metrics

    better, _ = _register(tiny_config, 0.7, "aaa")
    assert (better.decision, better.champion_version) == ("promoted", 4)
    assert _aliases(tiny_config) == {CHAMPION: 4, CHALLENGER: 4}


@pytest.mark.parametrize(("score", "champion", "decision"), [
    (0.5, None, "promoted"),
    (0.5, Champion(version=1, score=0.5, digest="d"), "kept_champion"),  # a tie keeps it
    (0.6, Champion(version=1, score=0.5, digest="d"), "promoted"),
    (0.9, Champion(version=1, score=0.5, digest="other"), "not_comparable"),
    (0.9, Champion(version=1, score=None, digest="d"), "not_comparable"),
])
def test_decide(score, champion, decision):
    assert decide(score, "d", champion, "test/f1_macro").decision == decision
