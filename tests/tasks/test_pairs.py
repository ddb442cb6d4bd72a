"""Sentence pairs: data.text_pair_column (or two text columns) through ingest and tokenize;
duplicates and leakage are judged on the pair; a missing pair column or an empty side stops
before training, naming the column and row."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from sweepflow.tasks.ingest import DataError, ingest, load_ingested, load_splits
from sweepflow.tasks.tokenize import load_tokenized, tokenize

from sweepflow.config import load_config
from sweepflow.pyfunc_model import as_texts
from tests.conftest import WORDS


def make_pairs(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Two short texts; `same` when both use words of one sentiment, else `different`."""
    rng = random.Random(seed)
    groups = list(WORDS)
    rows = []
    for i in range(n):
        a = groups[i % 3]
        b = a if i % 2 == 0 else groups[(i + 1) % 3]
        rows.append({"sentence1": " ".join(rng.sample(WORDS[a], 3)) + f" n{i % 50}",
                     "sentence2": " ".join(rng.sample(WORDS[b], 3)),
                     "label": "same" if a == b else "different"})
    return pd.DataFrame(rows)


@pytest.fixture
def pair_overrides(tiny_overrides, tmp_path):
    path = tmp_path / "pairs.csv"
    make_pairs().to_csv(path, index=False)
    return [*tiny_overrides, f"data.path={path}", "data.text_column=sentence1",
            "data.text_pair_column=sentence2", "data.label_column=label"]


def test_pairs_are_cleaned_and_deduplicated_as_pairs(pair_overrides, tmp_path):
    frame = make_pairs()
    # The same first text with another second text is another pair; the same pair twice is
    # a duplicate.
    extra = pd.DataFrame([{**frame.iloc[0], "sentence2": "nice fun best"}, frame.iloc[1]])
    path = tmp_path / "more.csv"
    pd.concat([frame, extra]).to_csv(path, index=False)
    config = load_config(overrides=[*pair_overrides, f"data.path={path}"])
    data = load_splits(config.data, config.seed)
    assert sum(c.get("dropped_duplicates", 0) for c in data.report.steps.values()) == 1
    assert sum(len(df) for df in data.splits.values()) == len(frame) + 1
    keys = {s: set(zip(df["text"], df["text_pair"], strict=True))
            for s, df in data.splits.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])


def test_a_list_of_two_text_columns_is_a_pair(pair_overrides):
    config = load_config(overrides=[*pair_overrides, "data.text_pair_column=null",
                                    "data.text_column=[sentence1, sentence2]"])
    tokens = tokenize(config, ingest(config))
    assert tokens.pair
    row = load_tokenized(tokens.path)["train"][0]
    text = load_ingested(tokens.data)["train"][0]
    assert 1 in row["token_type_ids"] and row["token_type_ids"][0] == 0
    assert len(row["input_ids"]) <= 16 and text["text_pair"]


def test_missing_pair_column_is_named(pair_overrides):
    config = load_config(overrides=[*pair_overrides, "data.text_pair_column=question"])
    with pytest.raises(DataError, match="column 'question' not found"):
        ingest(config)


def test_an_empty_pair_side_names_column_and_row(pair_overrides, tmp_path, store):
    frame = make_pairs()
    frame.loc[4, "sentence2"] = "   "
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    config = load_config(overrides=[*pair_overrides, f"data.path={path}"])
    with pytest.raises(DataError, match=r"column 'sentence2' of .*holes.csv \(split train\) "
                                        r"is empty in row 5"):
        ingest(config)
    assert not list((store / "cache").rglob("result.json")) if (store / "cache").exists() \
        else True


def test_the_served_model_reads_pair_records():
    assert as_texts([{"text": "a", "text_pair": "b"}]) == [("a", "b")]
    assert as_texts(pd.DataFrame({"text": ["a"], "text_pair": ["b"]})) == [("a", "b")]
    assert as_texts(["a", "b"]) == ["a", "b"]


def test_rows_of_a_grown_pair_data_set_are_known_by_the_pair(pair_overrides, tmp_path):
    """What the champion is re-scored on and drift reads: the newest rows, as pairs."""
    from sweepflow.tasks.versions import newest_rows, rows_of

    config = load_config(overrides=pair_overrides)
    before = rows_of(ingest(config))
    frame = make_pairs()
    extra = pd.DataFrame([{**frame.iloc[0], "sentence2": "nice fun best"}])  # same first text
    path = tmp_path / "grown.csv"
    pd.concat([frame, extra]).to_csv(path, index=False)
    grown = ingest(load_config(overrides=[*pair_overrides, f"data.path={path}"]))
    inputs, labels = newest_rows(grown, before)
    assert inputs == [(frame.iloc[0]["sentence1"], "nice fun best")]
    assert labels == [grown.label_names.index(frame.iloc[0]["label"])]


def test_pairs_of_one_first_text_share_a_split(pair_overrides, tmp_path):
    """Grouped by the first text: a premise's hypotheses never straddle train and test."""
    rng = random.Random(1)
    rows = [{"sentence1": f"premise {p} " + " ".join(rng.sample(WORDS["positive"], 2)),
             "sentence2": f"hypothesis {h} " + " ".join(rng.sample(WORDS["negative"], 2)),
             "label": ("same", "different")[h % 2]} for p in range(60) for h in range(3)]
    path = tmp_path / "premises.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = load_splits(load_config(overrides=[*pair_overrides, f"data.path={path}"]).data, 0)
    firsts = {s: set(df["text"]) for s, df in data.splits.items()}
    assert all(firsts.values())
    assert not (firsts["train"] & firsts["test"]) and not (firsts["train"] & firsts["validation"])
    assert not firsts["test"] & firsts["validation"]
