"""Predict: label texts with a registered model (default: the champion).

Texts come from the command line, a file or stdin (`-`): `.csv` and `.jsonl` files are read
by the configured `data.text_column`; any other file (and stdin) has one text per line
(blank lines skipped). Every text is a string: nothing is parsed or evaluated ("42" and
"{'a': 1}" are texts). An empty text is refused; a long one is truncated by the tokenizer
at the model's training `tokenize.max_length`.

The default model is the champion's int8 twin (`@champion-int8`, registered only when its
test macro-F1 is within `compress.max_f1_drop` of the champion's) when it is the twin of the
current champion, else the champion itself: on 2 CPU cores the int8 model labels tweets
2.9x faster (`python -m bench --only predict`). `--model models:/NAME@champion` picks the
full-precision model.

The model is downloaded, checked (sweepflow/modelsafety.py: safetensors weights, no pickle)
and loaded with transformers directly, not through MLflow's pyfunc wrapper; it runs in
batches of 64 sorted by length under torch.inference_mode. A safe pyfunc model that is not
the transformers flavor (sweepflow's own models-from-code, e.g. the int8 twin) is loaded
through MLflow. Texts go through in chunks of CHUNK so that a caller can show progress.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from sweepflow import modelsafety, tracking
from sweepflow.config import SweepflowConfig
from sweepflow.encoding import LongText
from sweepflow.onnx_classifier import Text, chars, text_probabilities
from sweepflow.usererrors import UserError

BATCH = 64
CHUNK = 1024  # texts per call of the model (progress is reported per chunk)
MAX_TEXT_CHARS = 100_000  # longer texts are cut before tokenizing (the tokenizer truncates)


class PredictError(UserError):
    """A model, alias or input file that cannot be used; the message says which."""

    kind = "predict error"


class Prediction(BaseModel):
    """One text's answer: its label and that label's probability, or for a multi-label
    model its set of labels and every label's probability (None fields are left out of the
    JSON line)."""

    model_config = ConfigDict(frozen=True)
    text: str
    text_pair: str | None = None  # sentence pairs only
    label: str | None = None
    probability: float | None = None
    labels: list[str] | None = None  # multi-label
    probabilities: dict[str, float] | None = None  # multi-label


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers model, or an MLflow pyfunc model
    tokenizer: Any | None
    max_length: int  # tokens (transformers); characters a pyfunc model accepts (pyfunc)
    long: LongText | None = None  # transformers: how its training run treated long texts


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def read_texts(path: Path, text_column: str) -> list[Text]:
    """Texts of a file (or of stdin for `-`), each a string, never parsed; a .csv / .jsonl
    file with columns text and text_pair gives sentence pairs."""
    if str(path) == "-":
        return _lines(sys.stdin.read())
    if not path.is_file():
        raise PredictError(f"file not found: {path}")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        return _lines(path.read_text(encoding="utf-8"))
    import pandas as pd

    try:
        frame = (pd.read_csv(path, dtype=str, keep_default_na=False)
                 if path.suffix.lower() == ".csv"
                 else pd.read_json(path, lines=True, dtype=False))
    except (ValueError, pd.errors.ParserError) as err:
        raise PredictError(f"cannot read {path}: {type(err).__name__}") from None
    if "text_pair" in frame.columns and "text" in frame.columns:  # sentence pairs
        return [(str(a), str(b)) for a, b in zip(frame["text"], frame["text_pair"],
                                                 strict=True)]
    if text_column not in frame.columns:
        raise PredictError(f"{path} has no column '{text_column}' (data.text_column); "
                           f"columns: {list(frame.columns)}")
    return [str(t) for t in frame[text_column].tolist()]


def check_texts(texts: list[Text]) -> None:
    for i, text in enumerate(texts, 1):
        for side, value in zip(("text", "text_pair"), text if isinstance(text, tuple)
                               else (text,), strict=False):
            if not str(value).strip():
                raise PredictError(f"{side} {i} is empty: give a text to label")


def training_long_text(client: tracking.MlflowClient, run_id: str | None, default: int
                       ) -> LongText:
    """tokenize.* (max_length, truncation, chunks) of the run that logged a model, else head
    truncation at `default` (a model from elsewhere: its run may be unknown)."""
    try:
        params = client.get_run(run_id).data.params if run_id else {}
    except Exception:  # noqa: BLE001
        params = {}
    lt = LongText(max_length=int(params.get("tokenize.max_length") or default))
    return LongText(max_length=lt.max_length,
                    truncation=params.get("tokenize.truncation", lt.truncation),
                    head_share=float(params.get("tokenize.head_share", lt.head_share)),
                    long_text=params.get("tokenize.long_text", lt.long_text),
                    stride=int(params.get("tokenize.stride", lt.stride)))


def default_model(config: SweepflowConfig, client: tracking.MlflowClient) -> tuple[str, str]:
    """(model URI, what it is): the champion's int8 twin when the registry holds one for the
    current champion, else the champion."""
    from mlflow.exceptions import MlflowException
    from sweepflow.tasks.register import CHAMPION, registered_name

    name = registered_name(config)
    fp32 = f"models:/{name}@{CHAMPION}"
    try:
        aliases = client.get_registered_model(name).aliases
        champion, twin = aliases.get(CHAMPION), aliases.get(f"{CHAMPION}-int8")
        if champion is None or twin is None:
            return fp32, "champion"
        tags = client.get_model_version(name, str(twin)).tags
    except MlflowException:  # no such model: load_model says so
        return fp32, "champion"
    if tags.get("sweepflow.fp32_version") != str(champion):
        return fp32, f"champion v{champion} (its int8 twin is not registered)"
    return (f"models:/{name}@{CHAMPION}-int8",
            f"int8 twin v{twin} of champion v{champion}; --model {fp32} for full precision")


def load_model(tracker: tracking.Tracker, model_uri: str, max_length: int,
               trust: bool = False) -> LoadedModel:
    """Download the model, check it is safe (unless `trust`), load it without the Hub.
    `max_length`: the token limit of a model whose training run is unknown."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a logged model holds all it needs
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracker.uri
    mlflow.set_tracking_uri(uri)
    try:
        local = modelsafety.fetch_model(model_uri)
    except (MlflowException, OSError) as err:
        message = getattr(err, "message", str(err))
        raise PredictError(f"cannot load {model_uri} from {uri}: {message}. Is there a "
                           "registered model with that name and alias? `sweepflow run` "
                           "registers one (registry.enabled=true).") from None
    if not trust:
        modelsafety.check_model(local)
    flavors = {}
    if (local / "MLmodel").is_file():
        flavors = yaml.safe_load((local / "MLmodel").read_text()).get("flavors") or {}
    if "transformers" in flavors or not flavors:
        run_id = yaml.safe_load((local / "MLmodel").read_text()).get("run_id") if flavors \
            else None
        return _load_transformers(local, flavors.get("transformers") or {},
                                  training_long_text(tracker.client, run_id, max_length))
    pyfunc = mlflow.pyfunc.load_model(str(local))
    try:  # sweepflow's own classifier says how many characters it accepts
        spec = pyfunc.unwrap_python_model().classifier.spec
    except (MlflowException, AttributeError):
        spec = None
    return LoadedModel(pyfunc, None, getattr(spec, "max_chars", MAX_TEXT_CHARS))


def _load_transformers(local: Path, flavor: dict, lt: LongText) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    weights = local / flavor.get("model_binary", ".")
    tokenizer_dir = local / "components" / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_dir if tokenizer_dir.is_dir() else weights, use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        weights, use_safetensors=True, trust_remote_code=False).eval()
    limit = getattr(model.config, "max_position_embeddings", lt.max_length)
    if lt.max_length > limit:
        lt = LongText(**{**lt.__dict__, "max_length": limit})
    return LoadedModel(model, tokenizer, lt.max_length, lt)


def predict(loaded: LoadedModel, texts: list[str], batch_size: int = BATCH,
            progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """The top label of each text and its probability, in the order of `texts`;
    `progress(n)` is called after every chunk of n texts."""
    check_texts(texts)
    order = sorted(range(len(texts)), key=lambda i: chars(texts[i]))  # like lengths together
    out: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), CHUNK):
        idx = order[start:start + CHUNK]
        chunk = [texts[i] for i in idx]
        done = (_predict_pyfunc(loaded, chunk) if loaded.tokenizer is None
                else _predict_transformers(loaded, chunk, batch_size))
        for i, prediction in zip(idx, done, strict=True):
            out[i] = prediction
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


def _predict_pyfunc(loaded: LoadedModel, texts: list[str]) -> list[Prediction]:
    """A safe pyfunc model (models-from-code): it batches by length itself. Texts over the
    characters it accepts are cut to them (its tokenizer then truncates, like training)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    pairs = bool(texts) and isinstance(texts[0], tuple)
    if pairs:  # each side cut to half of what the model accepts
        half = loaded.max_length // 2
        frame = pd.DataFrame({"text": [t[0][:half] for t in texts],
                              "text_pair": [t[1][:half] for t in texts]})
    else:
        frame = pd.DataFrame({"text": [t[:loaded.max_length] for t in texts]})
    try:
        frame = loaded.model.predict(frame)
    except MlflowException as err:  # e.g. the int8 model refusing an oversized text
        raise PredictError(f"the model refused the input: {err.message}") from None
    if "labels" in frame:  # a multi-label model: label sets
        return [Prediction(text=t[0] if pairs else t, text_pair=t[1] if pairs else None,
                           labels=list(labels), probabilities=probs)
                for t, labels, probs in zip(texts, frame["labels"], frame["probabilities"],
                                            strict=True)]
    return [Prediction(text=t[0] if pairs else t, text_pair=t[1] if pairs else None,
                       label=str(label), probability=float(score))
            for t, label, score in zip(texts, frame["label"], frame["score"], strict=True)]


def _predict_transformers(loaded: LoadedModel, texts: list[str], batch_size: int
                          ) -> list[Prediction]:
    """Texts already sorted by length (predict does it), so each batch pads little."""
    import torch

    labels = loaded.model.config.id2label
    out: list[Prediction] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            if isinstance(chunk[0], tuple):
                raise PredictError("this model labels single texts, not sentence pairs")
            cut = [t[:MAX_TEXT_CHARS] for t in chunk]
            if loaded.long is not None and not loaded.long.plain:
                probs = torch.from_numpy(text_probabilities(
                    loaded.tokenizer, loaded.long, cut, "pt",
                    lambda enc: loaded.model(**enc).logits.float().numpy()))
            else:
                batch = loaded.tokenizer(cut, padding=True, truncation=True,
                                         max_length=loaded.max_length, return_tensors="pt")
                probs = loaded.model(**batch).logits.softmax(-1)
            best, ids = probs.max(-1)
            out += [Prediction(text=t, label=str(labels[k]), probability=p)
                    for t, p, k in zip(chunk, best.tolist(), ids.tolist(), strict=True)]
    return out
