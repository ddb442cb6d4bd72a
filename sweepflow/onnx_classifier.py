"""A text classifier exported to ONNX and run by ONNX Runtime: texts in, label
probabilities out. The compress step measures it; the MLflow model (sweepflow/pyfunc_model.py)
serves it. No pickle: the model is an .onnx file, the tokenizer its saved files, the labels
and limits a JSON file (`classifier.json`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweepflow.encoding import LongText, encode, mean_by_doc

SPEC_FILE = "classifier.json"
Text = str | tuple[str, str]  # a text, or a sentence pair (text, text_pair)


def chars(text: Text) -> int:
    return len(text) if isinstance(text, str) else len(text[0]) + len(text[1])


class InputError(ValueError):
    """A text the model refuses (empty, or longer than its limit); the message says which."""


@dataclass(frozen=True)
class ClassifierSpec:
    labels: list[str]
    max_length: int  # tokens per text (longer texts are truncated, like in training)
    max_chars: int  # longer texts are refused
    truncation: str = "head"  # how longer texts become tokens: sweepflow/encoding.py
    head_share: float = 0.25
    long_text: str = "truncate"
    stride: int = 16
    pair: bool = False  # inputs are sentence pairs (text, text_pair)
    multi_label: bool = False  # sigmoid per label; a text's labels: those at their threshold
    thresholds: list[float] | None = None  # multi-label: per label (picked on validation)

    def long_texts(self) -> LongText:
        return LongText(max_length=self.max_length, truncation=self.truncation,
                        head_share=self.head_share, long_text=self.long_text,
                        stride=self.stride)

    def label_sets(self, probs: np.ndarray) -> list[list[str]]:
        """Multi-label: each row's labels whose probability reaches their threshold."""
        cut = np.asarray(self.thresholds or [0.5] * len(self.labels), dtype=np.float32)
        return [[label for label, hit in zip(self.labels, row, strict=True) if hit]
                for row in probs >= cut[None, :]]

    def save(self, folder: Path) -> Path:
        path = folder / SPEC_FILE
        path.write_text(json.dumps(self.__dict__))
        return path

    @classmethod
    def load(cls, path: Path) -> ClassifierSpec:
        return cls(**json.loads(Path(path).read_text()))


def check_texts(texts: list[Text], max_chars: int, pair: bool = False) -> None:
    """Empty, blank or oversized texts (or pair sides) are refused by position (from 1)
    rather than guessed at."""
    for i, text in enumerate(texts, 1):
        sides = text if isinstance(text, tuple) else (text,)
        if pair != isinstance(text, tuple) or len(sides) != (2 if pair else 1):
            want = "a pair (text, text_pair)" if pair else "a single text"
            raise InputError(f"text {i}: this model takes {want}")
        for side, value in zip(("text", "text_pair"), sides, strict=False):
            if not isinstance(value, str):
                raise InputError(f"{side} {i} is not a string ({type(value).__name__})")
            if not value.strip():
                raise InputError(f"{side} {i} is empty")
        if chars(text) > max_chars:
            raise InputError(f"text {i} has {chars(text):,} characters, over the limit of "
                             f"{max_chars:,}")


def text_probabilities(tokenizer: Any, lt: LongText, texts: list[Text],
                       tensors: str, logits: Callable[[Any], np.ndarray],
                       multi_label: bool = False) -> np.ndarray:
    """(len(texts), labels) probabilities: the texts encoded as in training (truncated, or
    in windows whose probabilities are averaged per text; pairs joined by the tokenizer and
    truncated longest-first), `logits` run on the encoding; softmax, or a sigmoid per label
    for a multi-label model."""
    activation = sigmoid if multi_label else softmax
    if texts and isinstance(texts[0], tuple):
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts],
                        truncation="longest_first", max_length=lt.max_length, padding=True,
                        return_tensors=tensors)
        return activation(logits(enc))
    if lt.plain:
        enc = tokenizer(texts, truncation=True, max_length=lt.max_length, padding=True,
                        return_tensors=tensors)
        return activation(logits(enc))
    enc, docs = encode(tokenizer, texts, lt, padding=True, return_tensors=tensors)
    return mean_by_doc(activation(logits(enc)), docs, len(texts))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class OnnxClassifier:
    def __init__(self, onnx_path: Path, tokenizer_dir: Path, spec: ClassifierSpec,
                 threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(onnx_path), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
        self.spec = spec

    def probabilities(self, texts: list[Text], batch_size: int = 32) -> np.ndarray:
        """(n, labels) softmax probabilities of the texts, checked first; run in batches of
        like-length texts so little padding is computed."""
        check_texts(texts, self.spec.max_chars, self.spec.pair)
        order = np.argsort([chars(t) for t in texts], kind="stable")
        out = np.empty((len(texts), len(self.spec.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = text_probabilities(self.tokenizer, self.spec.long_texts(),
                                          [texts[i] for i in idx], "np", self._logits,
                                          self.spec.multi_label)
        return out

    def _logits(self, enc: Any) -> np.ndarray:
        return self.session.run(None, {n: enc[n].astype(np.int64) for n in self.inputs})[0]


class TorchClassifier:
    """The same interface over a full-precision transformers folder (safetensors only)."""

    def __init__(self, model_dir: Path, tokenizer_dir: Path, spec: ClassifierSpec) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), use_safetensors=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
        self.spec = spec

    def probabilities(self, texts: list[Text]) -> np.ndarray:
        check_texts(texts, self.spec.max_chars, self.spec.pair)
        with self.torch.inference_mode():
            return text_probabilities(self.tokenizer, self.spec.long_texts(), texts, "pt",
                                      lambda enc: self.model(**enc).logits.float().numpy(),
                                      self.spec.multi_label)
