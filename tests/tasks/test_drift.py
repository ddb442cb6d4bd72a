"""Drift measures and data-version diffs: pure functions on tiny inputs (milliseconds)."""

from __future__ import annotations

from sweepflow.tasks.drift import label_shift, measure
from sweepflow.tasks.evaluate import Scores
from sweepflow.tasks.register import Champion, ChampionCheck
from sweepflow.tasks.versions import DataVersion, diff

from sweepflow.config import load_config

REF = {"label_names": ["neg", "pos"], "labels": {"neg": 500, "pos": 500},
       "lengths": [20 + i % 30 for i in range(1000)], "vocab": ["good", "bad", "day"],
       "oov_share_test": 0.05}


def _check(newest_f1: float) -> ChampionCheck:
    s = Scores(accuracy=newest_f1, precision_macro=newest_f1, recall_macro=newest_f1,
               f1_macro=newest_f1)
    return ChampionCheck(champion=Champion(version=3, score=0.8, digest="d", run_id="r"),
                         newest_rows=200, newest=s)


def test_no_drift_on_data_like_the_champions():
    cfg = load_config().drift
    texts = [("good day " * (1 + i % 3)).strip()[: 20 + i % 30] for i in range(200)]
    labels = ["neg", "pos"] * 100
    r = measure(cfg, {**REF, "lengths": [len(t) for t in texts] * 5}, texts, labels,
                _check(0.79))
    assert r.flagged == [] and r.label_tvd == 0.0
    assert "no drift beyond drift.threshold=0.1" in r.line()


def test_label_shift_unknown_words_and_a_worse_champion_are_flagged():
    cfg = load_config().drift
    texts = ["bad zzz qqq"] * 200
    r = measure(cfg, REF, texts, ["neg"] * 180 + ["pos"] * 20, _check(0.5))
    assert {"labels", "unknown words", "champion score"} <= set(r.flagged)
    assert abs(r.label_tvd - 0.4) < 1e-9 and r.label_p_value < 1e-10
    assert "DRIFT beyond drift.threshold=0.1: labels" in r.line()
    few = measure(cfg, REF, texts[:5], ["neg"] * 5, _check(0.5))
    assert few.flagged == [] and "not measured" in few.line()
    tvd, p = label_shift({"a": 10, "b": 10}, {"a": 11, "b": 9})
    assert abs(tvd - 0.05) < 1e-9 and p > 0.5


def test_a_data_version_says_what_changed():
    class Info:  # an MLflow Run's .info and .data as diff reads them
        run_id, start_time, status = "abcdef123456", 0, "FINISHED"

    class Run:
        info = Info()

        class data:  # noqa: N801
            tags = {"sweepflow.config_digest": "c"}

    before = {"digest": "v1", "splits": {"train": {"ids": ["a", "b"], "labels": ["x", "y"]},
                                          "validation": {"ids": [], "labels": []},
                                          "test": {"ids": ["c"], "labels": ["x"]}}}
    after = {"digest": "v2", "splits": {"train": {"ids": ["a", "d", "e"],
                                                  "labels": ["x", "x", "y"]},
                                         "validation": {"ids": ["f"], "labels": ["y"]},
                                         "test": {"ids": ["c"], "labels": ["x"]}}}
    v = diff(after, before, Run())
    assert v.added == {"train": 2, "validation": 1, "test": 0}
    assert v.removed == {"train": 1, "validation": 0, "test": 0}
    assert v.previous_labels == {"x": 2, "y": 1} and v.labels == {"x": 3, "y": 2}
    assert v.line().startswith("data: +3 rows, -1 removed since run abcdef12 (1970-01-01 "
                               "00:00 UTC), train +2 -1 / validation +1 / test +0")
    assert diff(after, None, None).line() == "data: first version v2 (5 rows)"
    assert isinstance(v, DataVersion) and v.changed
