"""Multi-label: a label column of lists or 0/1 label columns through ingest and tokenize,
per-label thresholds, scores, the paired test, and every bad label input stopping before
training with one line naming file, column and row."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from sweepflow.tasks.ingest import DataError, ingest, load_ingested, load_splits
from sweepflow.tasks.multilabel import best_threshold, multilabel_scores, pick_thresholds
from sweepflow.tasks.significance import compare_predictions
from sweepflow.tasks.tokenize import tokenize
from sweepflow.tasks.train import load_rows

from sweepflow.config import load_config
from sweepflow.onnx_classifier import ClassifierSpec
from tests.conftest import FILLER

TAGS = {"billing": ["great", "love", "happy", "best"],
        "urgent": ["awful", "terrible", "hate", "worst"],
        "bug": ["car", "road", "news", "report"]}


def make_multilabel(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """Texts whose words give their tags away (0 to 3 tags, some rows with none): the tags as
    a JSON list in `tags` and as 0/1 columns named after them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = [t for t in TAGS if rng.random() < 0.4] or ([] if i % 5 else ["bug"])
        words = [w for t in tags for w in rng.sample(TAGS[t], 2)]
        words += rng.choices(FILLER, k=rng.randint(1, 5)) + [f"n{i % 50}"]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": json.dumps(tags),
                     **{t: int(t in tags) for t in TAGS}})
    return pd.DataFrame(rows)


@pytest.fixture
def ml_overrides(tiny_overrides, tmp_path):
    path = tmp_path / "tickets.csv"
    make_multilabel().to_csv(path, index=False)
    return [*tiny_overrides, f"data.path={path}", "data.label_column=tags"]


def _with(frame: pd.DataFrame, tmp_path, name: str = "bad.csv", **cells) -> str:
    """The frame with cells changed ((row, column) -> value), written as CSV: its path."""
    frame = frame.astype(object)
    for key, value in cells.items():
        row, column = key.rsplit("_", 1)[0], key.rsplit("_", 1)[1]
        frame.loc[int(row.removeprefix("r")), column] = value
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def test_a_list_column_and_label_columns_give_the_same_label_sets(ml_overrides):
    lists = load_splits(load_config(overrides=ml_overrides).data, 42)
    columns = load_splits(load_config(overrides=[
        *ml_overrides, "data.label_columns=[billing, urgent, bug]"]).data, 42)
    assert lists.multi_label and columns.multi_label
    assert lists.label_names == ["billing", "bug", "urgent"]  # sorted, as single labels are
    assert columns.label_names == ["billing", "urgent", "bug"]  # the columns' order
    by_name = {s: [sorted(lists.label_names[i] for i in ids) for ids in df["label"]]
               for s, df in lists.splits.items()}
    assert by_name == {s: [sorted(columns.label_names[i] for i in ids) for ids in df["label"]]
                       for s, df in columns.splits.items()}
    assert [] in by_name["train"]  # a row without tags is a valid "no tag" row


def test_a_python_list_literal_and_hub_style_lists_are_read(ml_overrides, tmp_path):
    frame = make_multilabel()
    frame["tags"] = [str(json.loads(t)) for t in frame["tags"]]  # pandas' own list repr
    path = tmp_path / "repr.csv"
    frame.to_csv(path, index=False)
    data = load_splits(load_config(overrides=[*ml_overrides, f"data.path={path}"]).data, 42)
    assert data.multi_label and data.label_names == ["billing", "bug", "urgent"]
    jsonl = tmp_path / "tickets.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "tags": json.loads(g)}) for t, g in
                               zip(frame["text"], make_multilabel()["tags"], strict=True)))
    data = load_splits(load_config(overrides=[*ml_overrides, f"data.path={jsonl}"]).data, 42)
    assert data.multi_label and data.label_names == ["billing", "bug", "urgent"]


def test_multi_label_rows_train_on_float_multi_hot_labels(ml_overrides):
    config = load_config(overrides=ml_overrides)
    tokens = tokenize(config, ingest(config))
    assert tokens.data.multi_label
    rows = load_rows(tokens.path)["train"]
    labels = np.asarray(rows.labels)
    assert labels.shape == (len(rows), 3) and set(np.unique(labels)) <= {0.0, 1.0}
    first = load_ingested(tokens.data)["train"][0]["label"]
    assert np.flatnonzero(labels[0]).tolist() == first


def test_thresholds_maximise_each_labels_f1_on_validation():
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    p = np.array([[0.3, 0.9], [0.25, 0.8], [0.1, 0.7], [0.2, 0.6]])
    assert best_threshold(y[:, 0], p[:, 0]) == 0.25  # both positives, no negative
    assert best_threshold(y[:, 1], p[:, 1]) == 0.5  # no positive: the default
    assert pick_thresholds(y, p) == [0.25, 0.5]


def test_scores_and_the_paired_test_fit_label_sets():
    y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
    s = multilabel_scores(y, pred)
    assert s.subset_accuracy == s.accuracy == 0.5
    assert s.f1_micro == pytest.approx(2 * 3 / (2 * 3 + 0 + 2))
    c = compare_predictions(y, pred, y, seed=0, n_resamples=200)  # challenger = the truth
    assert (c.challenger_only, c.champion_only) == (2, 0) and c.f1_diff > 0


def test_a_label_set_comes_from_the_spec_thresholds():
    spec = ClassifierSpec(labels=["a", "b"], max_length=8, max_chars=10, multi_label=True,
                          thresholds=[0.3, 0.9])
    assert spec.label_sets(np.array([[0.4, 0.8], [0.1, 0.95]])) == [["a"], ["b"]]


@pytest.mark.parametrize(("cells", "extra", "message"), [
    ({"r3_tags": '["billing", "refunds"]'}, ["data.labels=[billing, bug, urgent]"],
     r"label 'refunds' in column 'tags' of .*bad.csv \(split train\), row 4, is not in "
     r"data.labels"),
    ({"r6_tags": "billing"}, [],
     r"column 'tags' of .*bad.csv \(split train\) mixes label lists and single labels: row 7 "
     r"holds a single label"),
    ({"r2_tags": "[]"}, ["data.allow_empty_labels=false"],
     r"column 'tags' of .*bad.csv \(split train\), row 3, has no label"),
    ({"r5_tags": '["billing", urgent]'}, [],
     r"column 'tags' of .*bad.csv \(split train\), row 6, is not a list of labels"),
    ({"r8_urgent": 2}, ["data.label_columns=[billing, urgent, bug]"],
     r"column 'urgent' of .*bad.csv \(split train\), row 9, holds 2: data.label_columns "
     r"columns hold 0 or 1"),
    ({"r1_bug": "yes"}, ["data.label_columns=[billing, urgent, bug]"],
     r"column 'bug' of .*bad.csv \(split train\), row 2, holds a str value, not 0 or 1"),
    ({}, ["data.label_columns=[billing, urgent, refunds]"],
     r"column 'refunds' not found in .*bad.csv"),
])
def test_bad_labels_name_file_column_and_row(ml_overrides, tmp_path, store, cells, extra,
                                             message):
    path = _with(make_multilabel(), tmp_path, **cells)
    config = load_config(overrides=[*ml_overrides, f"data.path={path}", *extra])
    with pytest.raises(DataError, match=message):
        ingest(config)
    assert not list(store.rglob("result.json"))  # nothing half-written


def test_a_label_only_in_test_names_split_and_row(ml_overrides, tmp_path):
    frame = make_multilabel()
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame.iloc[:120].to_csv(train, index=False)
    frame.iloc[120:].assign(tags=['["billing"]'] * 5 + ['["refunds"]'] * 25).to_csv(
        test, index=False)
    config = load_config(overrides=[*ml_overrides, f"data.path={{train: {train}, test: {test}}}"])
    with pytest.raises(DataError, match=r"label 'refunds' in column 'tags' of .* \(split test\),"
                                        r" row 6, is not in the train split"):
        ingest(config)
