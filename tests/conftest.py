"""Shared fixtures: a tiny BERT saved with save_pretrained, tiny labelled data, and an
isolated store (MLflow SQLite, Optuna, caches) in a temp folder. Nothing is mocked."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sweepflow")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from tests

WORDS = {
    "negative": ["awful", "terrible", "hate", "broken", "worst", "sad", "angry", "late"],
    "neutral": ["the", "car", "road", "today", "news", "report", "city", "meeting"],
    "positive": ["great", "love", "happy", "best", "wonderful", "fun", "excellent", "nice"],
}
FILLER = ["a", "is", "it", "this", "was", "my", "and", "so"]


def make_frame(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """Texts whose words give their label away, so a tiny model can learn something."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = rng.sample(WORDS[label], 3) + rng.choices(FILLER, k=rng.randint(1, 12))
        words.append(f"n{i}")
        rng.shuffle(words)
        rows.append({"sentiment": label, "confidence": round(rng.uniform(0.3, 1), 3),
                     "text": " ".join(words)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT with a small WordPiece vocab, saved like a real model."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(
        {w for ws in WORDS.values() for w in ws} | set(FILLER))]
    vocab += [f"n{i}" for i in range(50)] + [f"##{c}" for c in "0123456789"]
    vocab += list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'#@")
    ids = {word: i for i, word in enumerate(dict.fromkeys(vocab))}
    tokenizer = BertTokenizerFast(vocab=ids, do_lower_case=True)  # transformers 5: no vocab_file
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Commands invoked in-process (typer's CliRunner) set console defaults in os.environ;
    each test starts from the environment the session had."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own store: MLflow DB, artifacts, Optuna DB and caches."""
    home = tmp_path / "mlruns"
    monkeypatch.setenv("SWEEPFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tweets.csv"
    make_frame().to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_overrides(tiny_csv: Path, tiny_model_dir: Path) -> list[str]:
    """key=value overrides that turn the default experiment into a seconds-long one."""
    return [
        f"data.path={tiny_csv}", "data.label_column=sentiment", "data.max_train_samples=null",
        "data.max_eval_samples=null", f"model.name_or_path={tiny_model_dir}",
        "tokenize.max_length=16", "train.max_epochs=2", "train.batch_size=16",
        "train.val_checks_per_epoch=1", "sweep.n_trials=2", "tracking.experiment=tiny",
        "train.precision=32-true", "compress.enabled=false",
        # The tiny model may still predict one class after 14 steps: the registry's guard
        # (tests/faults/test_divergence.py turns it back on) would refuse it.
        "registry.refuse_single_class=false",
    ]


@pytest.fixture
def tiny_config(tiny_overrides: list[str]):
    from sweepflow.config import load_config

    return load_config(overrides=tiny_overrides)
