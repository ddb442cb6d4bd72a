"""Predict: load a registered model through MLflow (default: the champion) and label texts.

Texts come from the command line or a file: `.csv` and `.jsonl` files are read by the
configured `data.text_column`; any other file has one text per line (blank lines skipped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sweepflow import tracking
from sweepflow.config import SweepflowConfig


class PredictError(RuntimeError):
    """A model, alias or input file that cannot be used; the message says which."""


class Prediction(BaseModel):
    model_config = ConfigDict(frozen=True)
    text: str
    label: str
    probability: float


def read_texts(path: Path, text_column: str) -> list[str]:
    if not path.is_file():
        raise PredictError(f"file not found: {path}")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if line.strip()]
    import pandas as pd

    frame = (pd.read_csv(path) if path.suffix.lower() == ".csv"
             else pd.read_json(path, lines=True))
    if text_column not in frame.columns:
        raise PredictError(f"{path} has no column '{text_column}' (data.text_column); "
                           f"columns: {list(frame.columns)}")
    return frame[text_column].astype(str).tolist()


def load_model(config: SweepflowConfig, model_uri: str) -> Any:
    """The pyfunc model from the configured store, loaded without the Hugging Face Hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a logged model holds all it needs
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise PredictError(f"cannot load {model_uri} from {uri}: {err.message}. Is there a "
                           "registered model with that name and alias? `sweepflow run` "
                           "registers one (registry.enabled=true).") from None


def predict(model: Any, texts: list[str]) -> list[Prediction]:
    """The top label of each text and its probability."""
    from mlflow.exceptions import MlflowException

    if not texts:
        return []
    try:
        frame = model.predict(texts)
    except MlflowException as err:  # e.g. the text-classifier model refusing an empty text
        raise PredictError(f"the model refused the input: {err.message}") from None
    return [Prediction(text=t, label=str(label), probability=float(score))
            for t, label, score in zip(texts, frame["label"], frame["score"], strict=True)]
