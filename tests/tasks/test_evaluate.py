from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluate import baseline_predictions, class_report, confusion_png, scores
from tests.conftest import make_frame


def test_scores_are_macro_averaged_like_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    y_true, y_pred = np.array([0, 0, 1, 2, 0]), np.array([0, 1, 1, 2, 3])
    s = scores(y_true, y_pred, 5)  # class 4 occurs nowhere: left out of the mean
    assert s.accuracy == 0.6
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                 zero_division=0)
    assert (s.precision_macro, s.recall_macro, s.f1_macro) == pytest.approx((p, r, f),
                                                                             rel=1e-12)


def test_class_report_matches_scikit_learn_layout_and_values():
    from sklearn.metrics import classification_report

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    names = ["negative", "neutral", "positive"]
    ours = class_report(y_true, y_pred, names)
    theirs = classification_report(y_true, y_pred, labels=range(3), target_names=names,
                                   output_dict=True, zero_division=0)
    assert ours.keys() == theirs.keys()
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    for key in (*names, "macro avg", "weighted avg"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key  # float64, not float32
    assert scores(y_true, y_pred, 3).f1_macro == pytest.approx(theirs["macro avg"]["f1-score"],
                                                               rel=1e-12)


def test_baseline_learns_tiny_data_and_confusion_png(tmp_path):
    df = make_frame(300)
    y = df["sentiment"].astype("category").cat.codes.to_numpy()
    pred = baseline_predictions(list(df.text[:240]), y[:240], list(df.text[240:]), seed=0)
    assert scores(y[240:], pred).accuracy > 0.8
    path = confusion_png(y[240:], pred, ["negative", "neutral", "positive"], tmp_path / "c.png")
    assert path.stat().st_size > 1000


def test_baseline_is_cached_per_data_and_seed(tiny_config):
    from sweepflow.paths import cache_dir
    from tasks.evaluate import cached_baseline
    from tasks.ingest import ingest, load_ingested

    data = ingest(tiny_config)
    dd = load_ingested(data)
    first = cached_baseline(dd, data, seed=0)
    files = list(cache_dir("baseline").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temp file left
    stamp = files[0].stat().st_mtime_ns
    assert (cached_baseline(dd, data, seed=0) == first).all()
    assert files[0].stat().st_mtime_ns == stamp  # read, not fitted and written again
    cached_baseline(dd, data, seed=1)
    assert len(list(cache_dir("baseline").iterdir())) == 2  # another seed, another entry
