"""McNemar + paired bootstrap on constructed predictions whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sweepflow.tasks.significance import compare_predictions, macro_f1_rows


def _labels(n: int = 900, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, n)


def _with_accuracy(y: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """Predictions right on a random `accuracy` share of the rows, wrong (next label) else."""
    right = np.random.default_rng(seed).random(len(y)) < accuracy
    return np.where(right, y, (y + 1) % 3)


def test_identical_models_are_not_significantly_different():
    y = _labels()
    a = _with_accuracy(y, 0.7, 1)
    c = compare_predictions(y, a, a.copy(), seed=0)
    assert (c.p_value, c.f1_diff, c.ci_low, c.ci_high) == (1.0, 0.0, 0.0, 0.0)
    assert c.challenger_only == c.champion_only == 0 and not c.significant(0.05)


def test_a_clearly_better_model_is_significant():
    y = _labels()
    champion, challenger = _with_accuracy(y, 0.6, 1), _with_accuracy(y, 0.8, 2)
    c = compare_predictions(y, champion, challenger, seed=0)
    assert c.p_value < 1e-6 and c.challenger_only > c.champion_only
    assert 0 < c.ci_low < c.f1_diff < c.ci_high and c.significant(0.05)
    worse = compare_predictions(y, challenger, champion, seed=0)  # the other way round
    assert worse.p_value == pytest.approx(c.p_value) and not worse.significant(0.05)


def test_a_marginally_better_model_is_not_significant():
    """Three more rows right out of 900: higher macro-F1, but well within the noise."""
    y = _labels()
    champion = _with_accuracy(y, 0.7, 1)
    wrong = np.flatnonzero(champion != y)[:3]
    challenger = champion.copy()
    challenger[wrong] = y[wrong]
    c = compare_predictions(y, champion, challenger, seed=0)
    assert c.f1_diff > 0 and c.challenger_only == 3 and c.champion_only == 0
    assert c.p_value == pytest.approx(0.25)  # exact binomial: 2 * 0.5**3
    assert c.ci_low <= 0 < c.ci_high and not c.significant(0.05)


def test_vectorized_macro_f1_is_scikit_learns():
    y = _labels(300)
    preds = np.stack([_with_accuracy(y, acc, s) for s, acc in enumerate((0.2, 0.5, 0.9))])
    preds[0, preds[0] == 2] = 0  # a label never predicted
    expected = [f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0)
                for p in preds]
    assert macro_f1_rows(np.broadcast_to(y, preds.shape), preds, [0, 1, 2]) \
        == pytest.approx(expected)


def test_predictions_of_different_rows_are_refused():
    with pytest.raises(ValueError, match="different or no rows: 3 labels, 2 champion"):
        compare_predictions(np.zeros(3), np.zeros(2), np.zeros(3), seed=0)
