"""The MLflow model of a text classifier, logged as *models from code*: MLflow stores this
file, not a pickle, and runs it to load the model. Artifacts: `onnx` (an .onnx file, run by
ONNX Runtime) or `transformers` (a saved transformers folder with safetensors weights),
`tokenizer` (its saved folder) and `spec` (classifier.json: labels, max_length, max_chars).

predict: texts (a list, a one-column DataFrame, or one string) in; one row per text out with
`label`, `score` (its probability) and `probabilities` (every label's); a multi-label model
gives `labels` (those whose probability reaches their threshold, kept in the spec) and
`probabilities` instead. An empty or oversized text raises BadTexts
(INVALID_PARAMETER_VALUE): the scoring server answers 400 with the reason only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.type_hints import TypeFromExample

from sweepflow.onnx_classifier import (
    ClassifierSpec,
    InputError,
    OnnxClassifier,
    Text,
    TorchClassifier,
)


def as_texts(model_input: Any) -> list[Text]:
    """Texts, or sentence pairs as (text, text_pair): a DataFrame with columns text and
    text_pair, or records {"text": ..., "text_pair": ...}."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        model_input = [model_input]
    if isinstance(model_input, pd.DataFrame) and "text_pair" in model_input.columns:
        model_input = model_input.to_dict("records")
    if isinstance(model_input, list) and model_input and isinstance(model_input[0], dict):
        try:
            return [(r["text"], r["text_pair"]) for r in model_input]
        except (KeyError, TypeError):
            raise InputError('a sentence pair is {"text": ..., "text_pair": ...}') from None
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise InputError(f"expected one column of texts, got {list(model_input.columns)}")
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, pd.Series | np.ndarray):
        model_input = model_input.tolist()
    if not isinstance(model_input, list):
        raise InputError(f"expected a list of texts, got {type(model_input).__name__}")
    return model_input


class BadTexts(MlflowException):
    """Texts the model refuses: HTTP 400 with the reason only. MLflow's scoring server
    rewrites the message of an MlflowException from `predict` to "Failed to predict data
    '<the whole input>'. Error: ..." (mlflow/pyfunc/scoring_server), which would echo a
    200 kB text back; this message keeps its first value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_reason"):
            self._reason = value


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        art = context.artifacts
        spec = ClassifierSpec.load(Path(art["spec"]))
        if "onnx" in art:
            self.classifier = OnnxClassifier(Path(art["onnx"]), Path(art["tokenizer"]), spec)
        else:
            self.classifier = TorchClassifier(Path(art["transformers"]), Path(art["tokenizer"]),
                                              spec)

    def predict(self, context, model_input: TypeFromExample, params=None):  # noqa: ANN001, ANN201
        # TypeFromExample: MLflow's hint for "the schema comes from the input example"
        try:
            texts = as_texts(model_input)
            probs = self.classifier.probabilities(texts) if texts else np.zeros((0, 0))
        except InputError as err:
            raise BadTexts(str(err)) from None
        spec = self.classifier.spec
        labels = spec.labels
        if spec.multi_label:
            return pd.DataFrame({
                "labels": spec.label_sets(probs) if len(texts) else [],
                "probabilities": [dict(zip(labels, map(float, p), strict=True))
                                  for p in probs]})
        best = probs.argmax(-1) if len(texts) else np.zeros(0, dtype=int)
        return pd.DataFrame({
            "label": [labels[i] for i in best],
            "score": [float(p[i]) for p, i in zip(probs, best, strict=True)],
            "probabilities": [dict(zip(labels, map(float, p), strict=True)) for p in probs],
        })


mlflow.models.set_model(TextClassifierModel())
