"""Evaluate: score the study's best model on the test split next to a TF-IDF + logistic
regression baseline trained on the same train split; log it all and the model to MLflow."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from matplotlib.figure import Figure
from prefect import task
from pydantic import BaseModel
from rich.progress import track
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)
from sweepflow.tasks.clean import LABEL, TEXT, TEXT_PAIR
from sweepflow.tasks.ingest import IngestResult, load_ingested
from sweepflow.tasks.multilabel import (
    MultiLabelScores,
    decide,
    metric_name,
    multi_hot,
    multilabel_scores,
    pick_thresholds,
)
from sweepflow.tasks.sweep_report import SweepResult
from sweepflow.tasks.tokenize import TokenizedData, load_tokenizer, truncation_warning
from sweepflow.tasks.train import eval_loader, load_rows, resolve_precision, set_threads
from transformers import AutoModelForSequenceClassification, pipeline

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from sweepflow.encoding import mean_by_doc
from sweepflow.hashing import code_version, hash_json
from sweepflow.onnx_classifier import ClassifierSpec
from sweepflow.paths import cache_dir, shared_dir

log = logging.getLogger(__name__)


class Scores(BaseModel):
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float


PREDICTIONS_ARTIFACT = "evaluation/test_predictions.json"
THRESHOLDS_ARTIFACT = "evaluation/thresholds.json"  # multi-label: per label, from validation


class TestPredictions(BaseModel):
    """The model's label for every test row (row = position in the test split whose digest
    is `test_digest`), kept so a later model can be compared with it row by row."""

    __test__ = False  # not a pytest class
    test_digest: str
    label_names: list[str]
    row: list[int]
    true: list[int] | list[list[int]]  # multi-label: each row's labels as 0/1 per label
    pred: list[int] | list[list[int]]


class Evaluation(BaseModel):
    """What evaluate measures on the test split (nothing logged yet)."""

    model: MultiLabelScores | Scores
    baseline: MultiLabelScores | Scores
    test_digest: str
    report: dict[str, Any]
    confusion: list[list[int]] = []  # rows: true label, columns: predicted
    classes_predicted: int | None = None  # distinct labels predicted on test (guards)
    predictions: TestPredictions | None = None
    thresholds: list[float] | None = None  # multi-label: per label, picked on validation


class EvalResult(Evaluation):
    """The evaluation once logged: with the URI of the model logged beside it."""

    model_uri: str
    warning: str | None = None  # below the baseline: what to try (`below_baseline`)


def below_baseline(evaluation: Evaluation, tokens: TokenizedData) -> str | None:
    """One line when the model's test macro-F1 is under the TF-IDF baseline's: the run is
    not worth promoting as it stands, and the line says what to try first."""
    model, base = evaluation.model.f1_macro, evaluation.baseline.f1_macro
    if model >= base:
        return None
    hint = ("most likely the truncated texts (see the tokens line): set "
            "tokenize.long_text=chunk, or raise tokenize.max_length" if truncation_warning(tokens)
            else "train longer (train.max_epochs, sweep.n_trials) or on more rows "
                 "(data.max_train_samples)")
    return (f"warning: test macro-F1 {model:.4f} is {100 * (base - model):.1f} pt below the "
            f"TF-IDF baseline's {base:.4f}; {hint}")


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """Accuracy and macro precision / recall / F1 (scikit-learn; 0 where undefined)."""
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                 zero_division=0)
    return Scores(accuracy=float(accuracy_score(y_true, y_pred)), precision_macro=float(p),
                  recall_macro=float(r), f1_macro=float(f))


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray) -> Scores | MultiLabelScores:
    """Scores of label ids, or of multi-label 0/1 rows (2-D)."""
    return multilabel_scores(y_true, y_pred) if y_true.ndim == 2 else scores(y_true, y_pred)


def class_report(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, accuracy, macro and weighted means."""
    return classification_report(y_true, y_pred, labels=list(range(len(names))),
                                 target_names=names, output_dict=True, zero_division=0)


def predict_test(model_dir: Path, tokens: TokenizedData, batch_size: int,
                 precision: str, split: str = "test") -> np.ndarray:
    """Batched, length-sorted inference with the same autocast as training: label ids, or
    (rows, labels) sigmoid probabilities for a multi-label model."""
    set_threads(None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)
    rows = load_rows(tokens.path)[split]
    loader = eval_loader(rows, tokens, batch_size)
    if tokens.data.multi_label:
        return multilabel_probabilities(model, loader, tokens, split, precision)
    order = list(loader.sampler)
    preds = np.empty(len(rows), dtype=np.int64)
    chunked = tokens.chunked  # windows: their probabilities are averaged per text
    mode = resolve_precision(precision)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16
    out = []
    with torch.inference_mode(), torch.autocast(device, dtype=dtype,
                                                enabled=mode != "32-true"):
        for batch in track(loader, description="evaluate"):
            batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits
            out.append((logits.float().softmax(-1) if chunked else logits.argmax(-1)
                        ).cpu().numpy())
    flat = np.concatenate(out)
    if chunked:
        docs = np.asarray(rows.docs)[order]
        return mean_by_doc(flat, docs, tokens.data.sizes["test"]).argmax(-1)
    for i, idx in enumerate(order):
        preds[idx] = flat[i]
    return preds


def multilabel_probabilities(model: Any, loader: Any, tokens: TokenizedData, split: str,
                             precision: str) -> np.ndarray:
    """(texts, labels) sigmoid probabilities of a split in text order (windows of one text
    averaged)."""
    device = next(model.parameters()).device.type
    mode = resolve_precision(precision)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16
    out = []
    with torch.inference_mode(), torch.autocast(device, dtype=dtype,
                                                enabled=mode != "32-true"):
        for batch in track(loader, description=f"evaluate {split}"):
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out.append(logits.float().sigmoid().cpu().numpy())
    flat, order = np.concatenate(out), list(loader.sampler)
    rows = loader.dataset
    docs = np.asarray(rows.docs)[order] if rows.docs is not None else np.asarray(order)
    return mean_by_doc(flat, docs, tokens.data.sizes[split])


def baseline_predictions(train_texts: list[str], train_y: np.ndarray, test_texts: list[str],
                         seed: int) -> np.ndarray:
    """TF-IDF (word 1-2 grams) + logistic regression on exactly the model's train split
    (multi-label, `train_y` 0/1 rows: one regression per label, threshold 0.5)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # only when not cached
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    regression = LogisticRegression(max_iter=2000, C=4.0, random_state=seed)
    clf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        OneVsRestClassifier(regression) if train_y.ndim == 2 else regression,
    )
    clf.fit(train_texts, train_y)
    return clf.predict(test_texts)


def baseline_texts(split: Any) -> list[str]:
    """The baseline reads a pair as one text: both sides joined."""
    if TEXT_PAIR in split.column_names:
        return [f"{a} [SEP] {b}" for a, b in zip(split[TEXT], split[TEXT_PAIR], strict=True)]
    return split[TEXT]


def baseline_cache(config: SweepflowConfig) -> Path:
    """The folder of the baseline's cached predictions (under store.shared_dir)."""
    return cache_dir(shared_dir(config.store.shared_dir), "baseline")


def cached_baseline(dd: Any, data: IngestResult, seed: int, folder: Path) -> np.ndarray:
    """The baseline's test predictions, kept in `folder` per (train split, test split, seed,
    this code): a scheduled re-run on unchanged data skips the fit (1.4 s on the default
    data)."""
    key = hash_json({"train": data.split_digests["train"], "test": data.split_digests["test"],
                     "seed": seed, "code": code_version(__name__)})[:16]
    path = folder / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    train_y = (multi_hot(dd["train"][LABEL], len(data.label_names)) if data.multi_label
               else np.asarray(dd["train"][LABEL]))
    pred = baseline_predictions(baseline_texts(dd["train"]), train_y,
                                baseline_texts(dd["test"]), seed)
    fd, tmp = tempfile.mkstemp(suffix=".npy.tmp", dir=path.parent)  # unique per process
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, pred)
        os.replace(tmp, path)  # whole or absent, never half-written
    finally:
        Path(tmp).unlink(missing_ok=True)
    return pred


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> list[list[int]]:
    return confusion_matrix(y_true, y_pred, labels=list(range(n_labels))).tolist()


def confusion_figure(matrix: list[list[int]], names: list[str]) -> Figure:
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=names).plot(ax=ax,
                                                                          colorbar=False)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    return fig


def pip_requirements() -> list[str]:
    """Pinned from this environment (MLflow's default list wants torchvision, absent here)."""
    from importlib.metadata import version

    pins = [f"{p}=={version(p).split('+')[0]}" for p in ("transformers", "tokenizers", "torch")]
    return [*pins, f"mlflow=={version('mlflow')}"]


def input_example(spec_file: Path) -> list:
    spec = ClassifierSpec.load(spec_file)
    if spec.pair:
        return [{"text": "what a great day", "text_pair": "the sun is out"},
                {"text": "the bus was late again", "text_pair": "it came on time"}]
    return ["what a great day", "the bus was late again"]


def classifier_spec(tokens: TokenizedData, max_chars: int,
                    thresholds: list[float] | None = None) -> ClassifierSpec:
    """What the served model must know of training: labels, token limits, long-text
    handling, pairs, and multi-label thresholds."""
    lt = tokens.long_texts()
    return ClassifierSpec(labels=list(tokens.data.label_names), max_length=tokens.max_length,
                          max_chars=max_chars, truncation=lt.truncation,
                          head_share=lt.head_share, long_text=lt.long_text, stride=lt.stride,
                          pair=tokens.pair, multi_label=tokens.data.multi_label,
                          thresholds=thresholds)


def log_classifier(model_dir: Path, tokens: TokenizedData, max_chars: int,
                   thresholds: list[float] | None = None, name: str = "model") -> str:
    """Sentence pairs and multi-label: the text classifier MLflow model
    (sweepflow/pyfunc_model.py, models from code) over the safetensors weights; it takes
    {"text", "text_pair"} records for pairs and returns label sets for multi-label."""
    from sweepflow.tasks.compress import PYFUNC_CODE

    spec = classifier_spec(tokens, max_chars, thresholds)
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = spec.save(Path(tmp))
        with tracking.no_mlflow_prints():
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(PYFUNC_CODE), input_example=input_example(spec_file),
                artifacts={"transformers": str(model_dir), "tokenizer": str(model_dir),
                           "spec": str(spec_file)}, pip_requirements=pip_requirements())
    return info.model_uri


def log_model(model_dir: Path, tokens: TokenizedData, name: str = "model") -> str:
    """Log a text-classification pipeline (transformers flavour, with signature)."""
    clf = pipeline("text-classification", model=str(model_dir),
                   tokenizer=load_tokenizer(str(model_dir)), device="cpu")
    example = ["what a great day", "the bus was late again"]
    info = mlflow.transformers.log_model(  # the signature is inferred from the example
        transformers_model=clf, name=name, task="text-classification",
        input_example=example, pip_requirements=pip_requirements(),
    )
    return info.model_uri


def evaluate(config: SweepflowConfig, tokens: TokenizedData, model_dir: Path) -> Evaluation:
    """Score the model and the baseline on the test split (computes; logs nothing)."""
    if tokens.data.multi_label:
        return evaluate_multilabel(config, tokens, model_dir)
    names = list(tokens.data.label_names)
    dd = load_ingested(tokens.data)
    y_true = np.asarray(dd["test"][LABEL])
    y_model = predict_test(model_dir, tokens, config.train.eval_batch_size,
                           config.train.precision)
    y_base = cached_baseline(dd, tokens.data, config.seed, baseline_cache(config))
    digest = tokens.data.split_digests["test"]
    predictions = TestPredictions(test_digest=digest, label_names=names,
                                  row=list(range(len(y_true))), true=y_true.tolist(),
                                  pred=y_model.tolist())
    return Evaluation(model=scores(y_true, y_model), baseline=scores(y_true, y_base),
                      test_digest=digest, report=class_report(y_true, y_model, names),
                      confusion=confusion(y_true, y_model, len(names)),
                      classes_predicted=len(np.unique(y_model)), predictions=predictions)


def evaluate_multilabel(config: SweepflowConfig, tokens: TokenizedData, model_dir: Path
                        ) -> Evaluation:
    """Multi-label: per-label thresholds picked on validation, then micro / macro F1, subset
    accuracy and per-label F1 on test, beside the one-vs-rest baseline (computes only)."""
    names, t = list(tokens.data.label_names), config.train
    dd = load_ingested(tokens.data)
    y_val = multi_hot(dd["validation"][LABEL], len(names))
    thresholds = pick_thresholds(y_val, predict_test(model_dir, tokens, t.eval_batch_size,
                                                     t.precision, "validation"))
    y_true = multi_hot(dd["test"][LABEL], len(names)).astype(np.int64)
    y_model = decide(predict_test(model_dir, tokens, t.eval_batch_size, t.precision), thresholds)
    y_base = cached_baseline(dd, tokens.data, config.seed, baseline_cache(config))
    digest = tokens.data.split_digests["test"]
    predictions = TestPredictions(test_digest=digest, label_names=names,
                                  row=list(range(len(y_true))), true=y_true.tolist(),
                                  pred=y_model.tolist())
    return Evaluation(model=multilabel_scores(y_true, y_model),
                      baseline=multilabel_scores(y_true, y_base), test_digest=digest,
                      report=class_report(y_true, y_model, names),
                      classes_predicted=len(np.unique(y_model, axis=0)),
                      predictions=predictions, thresholds=thresholds)


def log_multilabel(tracker: tracking.Tracker, evaluation: Evaluation, names: list[str]
                   ) -> None:
    """Multi-label: the thresholds, and per-label F1 as test/f1/<label> (no confusion
    matrix: the classification report has every label's counts)."""
    tracker.log_dict(dict(zip(names, evaluation.thresholds or [], strict=True)),
                     THRESHOLDS_ARTIFACT)
    tracker.log(metrics={f"test/f1/{metric_name(name)}": evaluation.report[name]["f1-score"]
                         for name in names})


def log_evaluation(tracker: tracking.Tracker, evaluation: Evaluation, tokens: TokenizedData,
                   model_dir: Path, max_chars: int) -> EvalResult:
    """The report, predictions, confusion matrix, test/* metrics and the model, on the run."""
    names = list(tokens.data.label_names)
    if tokens.data.multi_label:
        log_multilabel(tracker, evaluation, names)
    tracker.log_dict(evaluation.report, "evaluation/classification_report.json")
    if evaluation.predictions is not None:
        tracker.log_dict(evaluation.predictions.model_dump(), PREDICTIONS_ARTIFACT)
    if evaluation.confusion:
        tracker.log_figure(confusion_figure(evaluation.confusion, names),
                           "evaluation/confusion_matrix.png", dpi=110)
    metrics = {f"test/{k}": v for k, v in evaluation.model.model_dump().items()}
    metrics |= {f"test/baseline_{k}": v for k, v in evaluation.baseline.model_dump().items()}
    for name in names if not tokens.data.multi_label else ():
        metrics[f"test/f1_{name}"] = evaluation.report[name]["f1-score"]
    warning = below_baseline(evaluation, tokens)
    tracker.log(metrics=metrics, tags={"sweepflow.warning": warning} if warning else None)
    with tracker.active():
        model_uri = (log_classifier(model_dir, tokens, max_chars, evaluation.thresholds)
                     if tokens.pair or tokens.data.multi_label else log_model(model_dir, tokens))
    return EvalResult(**evaluation.model_dump(), model_uri=model_uri, warning=warning)


@task(name="evaluate")
def evaluate_task(config: SweepflowConfig, tokens: TokenizedData, sweep: SweepResult,
                  tracker: tracking.Tracker) -> EvalResult:
    model_dir = Path(sweep.model_dir)
    return log_evaluation(tracker, evaluate(config, tokens, model_dir), tokens, model_dir,
                          config.compress.max_text_chars)
