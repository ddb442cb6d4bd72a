"""Evaluate: score the study's best model on the test split next to a TF-IDF + logistic
regression baseline trained on the same train split; log it all and the model to MLflow."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from prefect import get_run_logger, task  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from rich.progress import track  # noqa: E402
from torchmetrics.classification import MulticlassConfusionMatrix  # noqa: E402
from torchmetrics.functional.classification import multiclass_stat_scores  # noqa: E402
from transformers import AutoModelForSequenceClassification, pipeline  # noqa: E402

from sweepflow import tracking  # noqa: E402
from sweepflow.config import SweepflowConfig  # noqa: E402
from sweepflow.hashing import code_version, hash_json  # noqa: E402
from sweepflow.paths import cache_dir  # noqa: E402
from tasks.clean import LABEL, TEXT  # noqa: E402
from tasks.ingest import IngestResult, load_ingested  # noqa: E402
from tasks.sweep_report import SweepResult  # noqa: E402
from tasks.tokenize import TokenizedData, load_tokenizer  # noqa: E402
from tasks.train import load_rows, make_loader, resolve_precision, set_threads  # noqa: E402

log = logging.getLogger(__name__)


class Scores(BaseModel):
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float


class EvalResult(BaseModel):
    model: Scores
    baseline: Scores
    model_uri: str
    test_digest: str
    report: dict[str, Any]


# Counts from torchmetrics (loaded by Lightning anyway: scikit-learn's metrics cost 0.4 s to
# import, and a run on cached data and a cached baseline needs nothing else from it), ratios
# in float64 as scikit-learn computes them: scores stored in the registry stay comparable.
def class_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
                 ) -> dict[str, np.ndarray]:
    """Per class: precision, recall, F1 (0 where undefined, like zero_division=0), support
    and whether the class occurs at all (in the labels or the predictions)."""
    pred, true = torch.as_tensor(np.asarray(y_pred)), torch.as_tensor(np.asarray(y_true))
    tp, fp, _, fn, support = multiclass_stat_scores(pred, true, num_classes, average=None
                                                    ).double().numpy().T
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": np.nan_to_num(tp / (tp + fp)),
                "recall": np.nan_to_num(tp / (tp + fn)),
                "f1-score": np.nan_to_num(2 * tp / (2 * tp + fp + fn)),
                "support": support, "present": (tp + fp + fn) > 0}


RATIOS = ("precision", "recall", "f1-score")


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> Scores:
    """Accuracy and macro precision / recall / F1; classes that occur in neither the labels nor
    the predictions are left out of the macro mean, as scikit-learn does."""
    n = num_classes or int(max(np.max(y_true), np.max(y_pred))) + 1
    c = class_counts(y_true, y_pred, n)
    macro = {k: float(c[k][c["present"]].mean()) for k in RATIOS}
    return Scores(accuracy=float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
                  precision_macro=macro["precision"], recall_macro=macro["recall"],
                  f1_macro=macro["f1-score"])


def class_report(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, then accuracy and the macro and weighted
    means over all classes: scikit-learn's `classification_report(output_dict=True)`."""
    c = class_counts(y_true, y_pred, len(names))
    report: dict[str, Any] = {
        name: {**{k: float(c[k][i]) for k in RATIOS}, "support": int(c["support"][i])}
        for i, name in enumerate(names)}
    report["accuracy"] = float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
    total = float(c["support"].sum())
    report["macro avg"] = {**{k: float(c[k].mean()) for k in RATIOS}, "support": int(total)}
    report["weighted avg"] = {**{k: float((c[k] * c["support"]).sum() / total) for k in RATIOS},
                              "support": int(total)}
    return report


def predict_test(model_dir: Path, tokens: TokenizedData, batch_size: int,
                 precision: str) -> np.ndarray:
    """Batched, length-sorted inference with the same autocast as training."""
    set_threads(None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)
    rows = load_rows(tokens.path)["test"]
    loader = make_loader(rows, tokens, batch_size, train=False, group_by_length=False, seed=0)
    order = list(loader.sampler)
    preds = np.empty(len(rows), dtype=np.int64)
    mode = resolve_precision(precision)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16
    out = []
    with torch.inference_mode(), torch.autocast(device, dtype=dtype,
                                                enabled=mode != "32-true"):
        for batch in track(loader, description="evaluate"):
            batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(model(**batch).logits.argmax(-1).cpu().numpy())
    flat = np.concatenate(out)
    for i, idx in enumerate(order):
        preds[idx] = flat[i]
    return preds


def baseline_predictions(train_texts: list[str], train_y: np.ndarray, test_texts: list[str],
                         seed: int) -> np.ndarray:
    """TF-IDF (word 1-2 grams) + logistic regression on exactly the model's train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # only when not cached
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
    )
    clf.fit(train_texts, train_y)
    return clf.predict(test_texts)


def cached_baseline(dd: Any, data: IngestResult, seed: int) -> np.ndarray:
    """The baseline's test predictions, kept per (train split, test split, seed, this code):
    a scheduled re-run on unchanged data skips the fit (1.4 s on the default data)."""
    key = hash_json({"train": data.split_digests["train"], "test": data.split_digests["test"],
                     "seed": seed, "code": code_version(__name__)})[:16]
    path = cache_dir("baseline") / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    pred = baseline_predictions(dd["train"][TEXT], np.asarray(dd["train"][LABEL]),
                                dd["test"][TEXT], seed)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, pred)
    os.replace(tmp, path)  # whole or absent, never half-written
    return pred


def confusion_png(y_true: np.ndarray, y_pred: np.ndarray, names: list[str], path: Path) -> Path:
    matrix = MulticlassConfusionMatrix(num_classes=len(names))
    matrix.update(torch.as_tensor(np.asarray(y_pred)), torch.as_tensor(np.asarray(y_true)))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    matrix.plot(ax=ax, labels=names)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pip_requirements() -> list[str]:
    """Pinned from this environment (MLflow's default list wants torchvision, absent here)."""
    from importlib.metadata import version

    pins = [f"{p}=={version(p).split('+')[0]}" for p in ("transformers", "tokenizers", "torch")]
    return [*pins, f"mlflow=={version('mlflow')}"]


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


def evaluate(config: SweepflowConfig, tokens: TokenizedData, model_dir: Path,
             parent_run_id: str) -> EvalResult:
    names = list(tokens.data.label_names)
    dd = load_ingested(tokens.data)
    y_true = np.asarray(dd["test"][LABEL])
    y_model = predict_test(model_dir, tokens, config.train.eval_batch_size,
                           config.train.precision)
    y_base = cached_baseline(dd, tokens.data, config.seed)
    report = class_report(y_true, y_model, names)
    result_model = scores(y_true, y_model, len(names))
    result_base = scores(y_true, y_base, len(names))
    out = tracking.artifact_dir(f"evaluate-{parent_run_id}")
    (out / "classification_report.json").write_text(json.dumps(report, indent=2))
    confusion_png(y_true, y_model, names, out / "confusion_matrix.png")
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    metrics = {f"test/{k}": v for k, v in result_model.model_dump().items()}
    metrics |= {f"test/baseline_{k}": v for k, v in result_base.model_dump().items()}
    for name in names:
        metrics[f"test/f1_{name}"] = report[name]["f1-score"]
    now = tracking.now_ms()
    client.log_batch(parent_run_id,
                     metrics=[tracking.Metric(k, v, now, 0) for k, v in metrics.items()])
    client.log_artifacts(parent_run_id, str(out), "evaluation")
    with tracking.active_run(config, parent_run_id):
        model_uri = log_model(model_dir, tokens)
    return EvalResult(model=result_model, baseline=result_base, model_uri=model_uri,
                      test_digest=tokens.data.split_digests["test"], report=report)


@task(name="evaluate")
def evaluate_task(config: SweepflowConfig, tokens: TokenizedData, sweep: SweepResult,
                  run_id: str) -> EvalResult:
    result = evaluate(config, tokens, Path(sweep.model_dir), run_id)
    get_run_logger().info("test macro-F1 %.3f (baseline %.3f)", result.model.f1_macro,
                          result.baseline.f1_macro)
    return result
