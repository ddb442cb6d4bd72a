"""Champion/challenger promotion against a real MLflow store (SQLite in tmp_path).

The registered models are empty logged models: the registry logic never loads them."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.tasks.evaluate import PREDICTIONS_ARTIFACT, Scores, TestPredictions, scores
from sweepflow.tasks.register import CHALLENGER, CHAMPION, Champion, decide, register

from sweepflow import tracking
from sweepflow.config import load_config


def _scores(f1: float) -> Scores:
    return Scores(accuracy=f1, precision_macro=f1, recall_macro=f1, f1_macro=f1)


def _register(config, f1: float, digest: str, predictions: TestPredictions | None = None):
    """A parent run with an (empty) logged model, registered like the pipeline does (with
    the test predictions evaluate stores, when given)."""
    with tracking.managed_run(config, "sweep-tiny") as run_id:
        with tracking.active_run(config, run_id):
            model = mlflow.initialize_logged_model(name="model")
        if predictions is not None:
            MlflowClient(tracking.tracking_uri(config)).log_dict(
                run_id, predictions.model_dump(), PREDICTIONS_ARTIFACT)
        result = register(config, f"models:/{model.model_id}", _scores(f1), digest,
                          tracking.Tracker.open(config, run_id), predictions)
    return result, MlflowClient(tracking.tracking_uri(config)).get_run(run_id)


def _aliases(config) -> dict[str, int]:
    client = MlflowClient(tracking.tracking_uri(config))
    return dict(client.get_registered_model("tiny").aliases)


@pytest.fixture
def better_config(tiny_overrides):
    return load_config(overrides=[*tiny_overrides, "registry.promotion=better"])


def test_champion_challenger_promotion(better_config):
    """registry.promotion=better: any higher score on the same test data wins."""
    tiny_config = better_config
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
    assert decide(score, "d", champion, "test/f1_macro", "better", 0.05).decision == decision


def _predictions(y: np.ndarray, accuracy: float, seed: int) -> TestPredictions:
    right = np.random.default_rng(seed).random(len(y)) < accuracy
    pred = np.where(right, y, (y + 1) % 3)
    return TestPredictions(test_digest="ddd", label_names=["a", "b", "c"],
                           row=list(range(len(y))), true=y.tolist(), pred=pred.tolist())


def _f1(p: TestPredictions) -> float:
    return scores(np.asarray(p.true), np.asarray(p.pred)).f1_macro


def test_significant_promotion_on_the_same_test_rows(tiny_config):
    """registry.promotion=significant (the default): identical predictions are never
    promoted, a marginally better model is not, a clearly better one is; the p-value, the
    interval and the reason are on the parent run and on the model version."""
    y = np.random.default_rng(0).integers(0, 3, 900)
    base = _predictions(y, 0.7, 1)
    first, _ = _register(tiny_config, _f1(base), "ddd", base)
    assert (first.decision, first.comparison) == ("promoted", None)

    same, run = _register(tiny_config, _f1(base), "ddd", base.model_copy())
    assert same.decision == "kept_champion" and same.comparison.p_value == 1.0
    assert "not significantly better than champion v1 at alpha=0.05" in same.reason
    assert run.data.metrics["registry/p_value"] == 1.0

    marginal = base.model_copy(update={"pred": list(base.pred)})
    for i in np.flatnonzero(np.asarray(base.pred) != y)[:3]:
        marginal.pred[i] = int(y[i])
    result, run = _register(tiny_config, _f1(marginal), "ddd", marginal)
    assert result.decision == "kept_champion" and result.comparison.f1_diff > 0
    assert result.comparison.p_value == pytest.approx(0.25)
    assert run.data.tags["registry.p_value"] == "0.25"
    assert _aliases(tiny_config) == {CHAMPION: 1, CHALLENGER: 3}

    better = _predictions(y, 0.85, 2)
    result, run = _register(tiny_config, _f1(better), "ddd", better)
    assert result.decision == "promoted" and result.comparison.p_value < 1e-6
    assert _aliases(tiny_config) == {CHAMPION: 4, CHALLENGER: 4}
    m = run.data.metrics
    assert 0 < m["registry/f1_diff_ci_low"] < m["registry/f1_diff"] < m["registry/f1_diff_ci_high"]
    mv = MlflowClient(tracking.tracking_uri(tiny_config)).get_model_version("tiny", "4")
    assert mv.tags["registry.decision"] == "promoted"
    assert mv.tags["registry.reason"].startswith("significantly better than champion v1")
    assert float(mv.tags["registry.p_value"]) == pytest.approx(result.comparison.p_value)
    assert mv.tags["registry.vs_version"] == "1" and mv.tags["registry.f1_diff_ci"]

    unknown, _ = _register(tiny_config, 0.99, "ddd")  # no stored predictions to test with
    assert unknown.decision == "not_comparable" and "no test predictions of both" in unknown.reason


def test_manual_promotion_never_moves_the_champion(tiny_overrides):
    config = load_config(overrides=[*tiny_overrides, "registry.promotion=manual"])
    result, run = _register(config, 0.9, "aaa")
    assert (result.decision, result.champion_version) == ("manual", None)
    assert _aliases(config) == {CHALLENGER: 1}
    assert run.data.tags["registry.promotion"] == "manual"


def test_a_champion_rescored_on_the_new_test_rows_can_be_beaten(tiny_config):
    """Grown data: the champion was scored on other test rows; re-scored on the
    challenger's rows (tasks/champion.py), McNemar and the bootstrap run on those rows and a
    clearly better challenger is promoted. `champion-int8` leaves the old champion's twin."""
    from sweepflow.tasks.register import ChampionCheck, current_champion

    y = np.random.default_rng(0).integers(0, 3, 900)
    old = _predictions(y, 0.7, 1).model_copy(update={"test_digest": "old"})
    _register(tiny_config, _f1(old), "old", old)
    client = MlflowClient(tracking.tracking_uri(tiny_config))
    client.set_registered_model_alias("tiny", "champion-int8", "1")  # stands for its twin
    champion = current_champion(client, "tiny", "test/f1_macro")
    rescored = _predictions(y, 0.7, 3)  # the champion's labels for the new test rows
    check = ChampionCheck(champion=champion, predictions=rescored,
                          test=scores(np.asarray(rescored.true), np.asarray(rescored.pred)))
    better = _predictions(y, 0.85, 2)
    with tracking.managed_run(tiny_config, "sweep-tiny") as run_id:
        with tracking.active_run(tiny_config, run_id):
            model = mlflow.initialize_logged_model(name="model")
        result = register(tiny_config, f"models:/{model.model_id}", _scores(_f1(better)),
                          "ddd", tracking.Tracker.open(tiny_config, run_id), better, check)
    assert result.decision == "promoted", result.reason
    assert "re-scored on these test rows" in result.reason
    assert result.comparison.n == 900 and result.champion_score == check.test.f1_macro
    assert _aliases(tiny_config) == {CHAMPION: 2, CHALLENGER: 2}  # no stale champion-int8
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/champion_f1_macro"] == pytest.approx(check.test.f1_macro)

    cannot = ChampionCheck(champion=current_champion(client, "tiny", "test/f1_macro"),
                           reason="champion v2 could not be re-scored: unsafe model")
    result, _ = _register(tiny_config, 0.99, "eee")
    assert result.decision == "not_comparable"
    from sweepflow.tasks.register import decide as rule

    verdict = rule(0.99, "eee", cannot.champion, "test/f1_macro", "significant", 0.05,
                   why_not=cannot.reason)
    assert verdict.decision == "not_comparable" and "unsafe model" in verdict.reason


def test_promote_and_roll_back_by_hand(better_config):
    from sweepflow.tasks.register import promote_by_hand

    _register(better_config, 0.6, "aaa")
    _register(better_config, 0.7, "aaa")  # promoted: v2, previous champion v1
    assert _aliases(better_config)[CHAMPION] == 2
    tracker = tracking.Tracker.open(better_config)
    assert promote_by_hand(better_config, tracker, None, "v2 mislabels refunds", "ana") == (1, 2)
    client = MlflowClient(tracking.tracking_uri(better_config))
    mv = client.get_model_version("tiny", "1")
    assert mv.tags["registry.decision"] == "promoted_by_hand"
    assert mv.tags["registry.promoted_by"] == "ana" and "v2 mislabels refunds" in mv.tags[
        "registry.reason"]
    assert "v1 by ana" in client.get_model_version("tiny", "2").tags["registry.demoted"]
    assert promote_by_hand(better_config, tracker, 2, "fixed upstream", "bo") == (2, 1)
    assert _aliases(better_config)[CHAMPION] == 2


def _comparison(challenger_only: int, champion_only: int, p_value: float, f1_diff: float):
    from sweepflow.tasks.significance import Comparison

    return Comparison(n=900, challenger_only=challenger_only, champion_only=champion_only,
                      p_value=p_value, f1_diff=f1_diff, ci_low=f1_diff - 0.01,
                      ci_high=f1_diff + 0.01)


def test_significant_promotion_judges_the_direction_on_registry_metric():
    """McNemar decides significance; registry.metric (here accuracy), not macro-F1, decides
    whether the challenger is better."""
    champion = Champion(version=1, score=0.70, digest="d", run_id="r")
    # Right on more rows (accuracy up) but worse on the rare classes (macro-F1 down).
    majority = _comparison(60, 10, 1e-9, -0.03)
    verdict = decide(0.75, "d", champion, "test/accuracy", "significant", 0.05, majority)
    assert verdict.decision == "promoted"
    assert "test/accuracy 0.7500 > 0.7000" in verdict.reason
    # McNemar favours it, yet registry.metric (a macro average) is lower: kept.
    verdict = decide(0.68, "d", champion, "test/recall_macro", "significant", 0.05,
                     _comparison(60, 10, 1e-9, 0.02))
    assert verdict.decision == "kept_champion"
    assert "but test/recall_macro 0.6800 <= 0.7000" in verdict.reason
    # A higher metric without significance is still kept.
    verdict = decide(0.80, "d", champion, "test/accuracy", "significant", 0.05,
                     _comparison(4, 1, 0.375, 0.01))
    assert verdict.decision == "kept_champion" and "not significantly better" in verdict.reason
