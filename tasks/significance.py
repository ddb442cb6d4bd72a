"""Significance: is a challenger really better than the champion on the same test rows?

McNemar's exact test (statsmodels) on the rows where exactly one of the two models is right:
the test Dietterich (1998) found to keep its false-positive rate when each model is trained
once. A paired bootstrap (scipy) over the test rows gives the 95 % confidence interval of the
macro-F1 difference (challenger - champion).

Multi-label (rows of 0/1 per label): McNemar on per-row subset correctness (a row is right
when its whole label set is), and the bootstrap interval of the label-wise macro-F1
difference, resampling rows in pairs.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import bootstrap
from sklearn.metrics import f1_score
from statsmodels.stats.contingency_tables import mcnemar

CONFIDENCE = 0.95


class Comparison(BaseModel):
    """Challenger vs champion on the same n test rows."""

    model_config = ConfigDict(frozen=True)
    n: int
    challenger_only: int  # rows only the challenger labels right
    champion_only: int  # rows only the champion labels right
    p_value: float  # McNemar, exact (binomial), two-sided
    f1_diff: float  # macro-F1 challenger - champion
    ci_low: float  # 95 % paired-bootstrap interval of f1_diff
    ci_high: float

    def significant(self, alpha: float) -> bool:
        """McNemar: the challenger is right on significantly more of these rows. Whether it
        is better is judged on `registry.metric` (tasks/register.py)."""
        return self.p_value < alpha and self.challenger_only > self.champion_only

    def describe(self) -> str:
        return (f"McNemar p={self.p_value:.3g} ({self.challenger_only} rows only the "
                f"challenger gets right, {self.champion_only} only the champion), macro-F1 "
                f"diff {self.f1_diff:+.4f} [95% CI {self.ci_low:+.4f}, {self.ci_high:+.4f}]")


def mcnemar_test(y_true: np.ndarray, champion: np.ndarray,
                 challenger: np.ndarray) -> tuple[int, int, float]:
    """(challenger-only right, champion-only right, exact two-sided p-value)."""
    a_right, b_right = champion == y_true, challenger == y_true
    if y_true.ndim == 2:  # multi-label: a row is right when its whole label set is
        a_right, b_right = a_right.all(-1), b_right.all(-1)
    table = [[int(np.sum(a_right & b_right)), int(np.sum(a_right & ~b_right))],
             [int(np.sum(~a_right & b_right)), int(np.sum(~a_right & ~b_right))]]
    p = 1.0 if table[0][1] + table[1][0] == 0 else float(mcnemar(table, exact=True).pvalue)
    return table[1][0], table[0][1], p


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> float:
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> np.ndarray:
    """Macro-F1 along the last axis, for a whole batch of resamples at once (the same
    definition as scikit-learn's f1_score(average="macro", zero_division=0), which the
    tests check): per-label 2 TP / (2 TP + FP + FN), 0 where a label is absent from both."""
    f1 = []
    for label in labels:
        t, p = y_true == label, y_pred == label
        tp = np.sum(t & p, axis=-1)
        denom = np.sum(t, axis=-1) + np.sum(p, axis=-1)
        f1.append(np.divide(2 * tp, denom, out=np.zeros(denom.shape), where=denom > 0))
    return np.mean(f1, axis=0)


def multilabel_macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Label-wise macro-F1 of (..., rows, labels) 0/1 arrays, over the last two axes (0 for
    a label absent from both, as scikit-learn's zero_division=0)."""
    t, p = y_true > 0, y_pred > 0
    tp = np.sum(t & p, axis=-2)
    denom = np.sum(t, axis=-2) + np.sum(p, axis=-2)
    return np.divide(2 * tp, denom, out=np.zeros(denom.shape), where=denom > 0).mean(-1)


def multilabel_f1_interval(y_true: np.ndarray, champion: np.ndarray, challenger: np.ndarray,
                           seed: int, n_resamples: int) -> tuple[float, float]:
    """Percentile interval of the macro-F1 difference, rows (label sets) resampled in pairs."""
    if np.array_equal(champion, challenger):
        return 0.0, 0.0

    def diff(rows: np.ndarray, axis: int = -1) -> np.ndarray:
        return (multilabel_macro_f1_rows(y_true[rows], challenger[rows])
                - multilabel_macro_f1_rows(y_true[rows], champion[rows]))

    res = bootstrap((np.arange(len(y_true)),), diff, vectorized=True, batch=100,
                    n_resamples=n_resamples, confidence_level=CONFIDENCE,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def f1_diff_interval(y_true: np.ndarray, champion: np.ndarray, challenger: np.ndarray,
                     seed: int, n_resamples: int) -> tuple[float, float]:
    """Percentile interval of the macro-F1 difference over rows resampled in pairs."""
    labels = sorted(set(y_true.tolist()) | set(champion.tolist()) | set(challenger.tolist()))

    def diff(y: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return macro_f1_rows(y, b, labels) - macro_f1_rows(y, a, labels)

    if np.array_equal(champion, challenger):
        return 0.0, 0.0
    res = bootstrap((y_true, champion, challenger), diff, paired=True, vectorized=True,
                    batch=100,
                    n_resamples=n_resamples, confidence_level=CONFIDENCE,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_predictions(y_true: np.ndarray, champion: np.ndarray, challenger: np.ndarray,
                        seed: int, n_resamples: int = 1000) -> Comparison:
    """Both tests on the same rows (the three arrays are aligned row by row)."""
    y_true, champion, challenger = (np.asarray(a) for a in (y_true, champion, challenger))
    if not len(y_true) == len(champion) == len(challenger) or not len(y_true):
        raise ValueError(f"predictions of different or no rows: {len(y_true)} labels, "
                         f"{len(champion)} champion, {len(challenger)} challenger")
    only_b, only_a, p = mcnemar_test(y_true, champion, challenger)
    if y_true.ndim == 2:
        low, high = multilabel_f1_interval(y_true, champion, challenger, seed, n_resamples)
        diff = (multilabel_macro_f1_rows(y_true, challenger)
                - multilabel_macro_f1_rows(y_true, champion))
        return Comparison(n=len(y_true), challenger_only=only_b, champion_only=only_a,
                          p_value=p, f1_diff=float(diff), ci_low=low, ci_high=high)
    labels = sorted(set(y_true.tolist()) | set(champion.tolist()) | set(challenger.tolist()))
    low, high = f1_diff_interval(y_true, champion, challenger, seed, n_resamples)
    return Comparison(n=len(y_true), challenger_only=only_b, champion_only=only_a, p_value=p,
                      f1_diff=macro_f1(y_true, challenger, labels)
                      - macro_f1(y_true, champion, labels),
                      ci_low=low, ci_high=high)
