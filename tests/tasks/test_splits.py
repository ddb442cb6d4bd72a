"""Stable splits: a data set grown three times never moves a row between splits."""

from __future__ import annotations

import pandas as pd
from sweepflow.tasks.ingest import load_splits
from sweepflow.tasks.splits import cap_by_hash, carve_by_hash

from sweepflow.config import load_config
from tests.conftest import make_frame


def _splits(path, *extra: str) -> dict[str, set[str]]:
    config = load_config(overrides=[f"data.path={path}", "data.label_column=sentiment",
                                    *extra])
    data = load_splits(config.data, seed=42)
    return {split: set(df["text"]) for split, df in data.splits.items()}


def test_growing_data_never_moves_a_row_between_splits(tmp_path):
    full = make_frame(1200, seed=3)
    path = tmp_path / "grows.csv"
    seen: dict[str, str] = {}  # text -> split
    trained: set[str] = set()  # every text any model was trained on
    for n in (300, 600, 900, 1200):
        full.iloc[:n].to_csv(path, index=False)
        splits = _splits(path, "data.max_train_samples=null", "data.max_eval_samples=null")
        assert sum(map(len, splits.values())) == n
        for split, texts in splits.items():
            for text in texts:
                assert seen.setdefault(text, split) == split, (text, n)
        assert not trained & splits["test"]  # no earlier training row is ever tested on
        trained |= splits["train"]
        share = len(splits["test"]) / n
        assert 0.15 < share < 0.25, share  # test_fraction 0.2, approximately


def test_caps_keep_rows_and_never_move_them(tmp_path):
    full = make_frame(1500, seed=4)
    path = tmp_path / "grows.csv"
    before: dict[str, set[str]] | None = None
    trained: set[str] = set()
    for n in (900, 1200, 1500):
        full.iloc[:n].to_csv(path, index=False)
        splits = _splits(path, "data.max_train_samples=500", "data.max_eval_samples=50")
        assert len(splits["train"]) == 500 and len(splits["validation"]) == 50
        assert not trained & (splits["test"] | splits["validation"])
        trained |= splits["train"]
        if before is not None:  # a kept row leaves only for a new row that hashes lower
            for split in ("train", "validation"):
                left = before[split] - splits[split]
                new = splits[split] - before[split]
                assert len(left) == len(new)
                assert all(t not in set(full.text.iloc[: n - 300]) for t in new)
        before = splits


def test_hash_split_is_a_function_of_the_row_alone():
    df = pd.DataFrame({"text": [f"row {i}" for i in range(2000)], "label": [0, 1] * 1000})
    whole = carve_by_hash(df, {"test": 0.2, "validation": 0.1}, seed=7)
    part = carve_by_hash(df.iloc[::3], {"test": 0.2, "validation": 0.1}, seed=7)
    for split in whole:
        assert set(part[split]["text"]) <= set(whole[split]["text"])
    other_seed = carve_by_hash(df, {"test": 0.2, "validation": 0.1}, seed=8)
    assert set(other_seed["test"]["text"]) != set(whole["test"]["text"])
    capped = cap_by_hash(df, 100, seed=7)
    assert len(capped) == 100 and set(cap_by_hash(df, 100, seed=7)["text"]) == set(
        capped["text"])
