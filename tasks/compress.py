"""Compress: the evaluated model as int8 ONNX (dynamic quantization of its weights by ONNX
Runtime, per channel), scored on the same test split and measured beside the full-precision
model: macro-F1, accuracy, size on disk, latency per text at batch 1 (p50, p95) and
throughput at batch 32, as `compress/*` metrics and a table on the parent run.

The int8 model is logged as an MLflow model (models from code, sweepflow/pyfunc_model.py) and,
when its macro-F1 is at most `compress.max_f1_drop` below the full-precision model's,
registered beside it: alias `challenger-int8`, and `champion-int8` when its full-precision
twin is the champion. Why ONNX Runtime rather than PyTorch's dynamic quantization: see
docs/beyond-the-peers.md (`python -m bench --only quantize` measures both).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from sweepflow.tasks.clean import LABEL, model_inputs
from sweepflow.tasks.evaluate import (
    THRESHOLDS_ARTIFACT,
    classifier_spec,
    input_example,
    pip_requirements,
    score_predictions,
)
from sweepflow.tasks.ingest import load_ingested
from sweepflow.tasks.multilabel import decide, multi_hot
from sweepflow.tasks.register import RegistryResult, registered_name
from sweepflow.tasks.tokenize import TokenizedData, load_tokenizer
from sweepflow.tasks.train import set_threads

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.onnx_classifier import (
    ClassifierSpec,
    OnnxClassifier,
    chars,
    softmax,
    text_probabilities,
)
from sweepflow.paths import PACKAGE_DIR

# The MLflow pyfunc wrapper ships in the sweepflow package (checkout and wheel alike).
PYFUNC_CODE = PACKAGE_DIR / "pyfunc_model.py"
Predictor = Callable[[list[str]], np.ndarray]  # texts -> (n, labels) probabilities


class Footprint(BaseModel):
    model_config = ConfigDict(frozen=True)
    f1_macro: float
    accuracy: float
    size_mb: float
    latency_p50_ms: float  # one text at a time
    latency_p95_ms: float
    throughput_per_s: float  # texts per second in batches of 32


class CompressResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    fp32: Footprint
    int8: Footprint
    f1_drop: float  # fp32 - int8 macro-F1
    model_uri: str
    version: int | None  # registered version (None: over max_f1_drop or no registry)
    aliases: list[str]
    reason: str


def export_onnx(model_dir: Path, path: Path) -> Path:
    """The classifier's logits as an ONNX graph with dynamic batch and sequence axes."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, attn_implementation="eager").eval()
    names = load_tokenizer(str(model_dir)).model_input_names
    sample = load_tokenizer(str(model_dir))(["a short text", "another"], return_tensors="pt",
                                             padding=True)
    inputs = tuple(sample[n] for n in names)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, args, strict=True))).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    torch.onnx.export(Logits(), inputs, str(path), input_names=list(names),
                      output_names=["logits"], dynamic_axes=axes, opset_version=17,
                      dynamo=False)
    return path


def quantize(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantization of the weights (per output channel); activations are
    quantized on the fly at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return out


def torch_predictor(model_dir: Path, max_length: int, spec: ClassifierSpec | None = None
                    ) -> Predictor:
    """The full-precision model as it is served: PyTorch fp32, same tokenizer (and the
    spec's long-text handling)."""
    from transformers import AutoModelForSequenceClassification

    set_threads(None)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    return module_predictor(model, load_tokenizer(str(model_dir)), max_length, spec)


def module_predictor(model: torch.nn.Module, tokenizer: Any, max_length: int,
                     spec: ClassifierSpec | None = None) -> Predictor:
    """Texts -> softmax probabilities of a loaded PyTorch classifier, under inference mode."""

    def run(texts: list[str]) -> np.ndarray:
        if spec is not None and (spec.pair or spec.multi_label or not spec.long_texts().plain):
            with torch.inference_mode():
                return text_probabilities(tokenizer, spec.long_texts(), texts, "pt",
                                          lambda enc: model(**enc).logits.float().numpy(),
                                          spec.multi_label)
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        with torch.inference_mode():
            return softmax(model(**enc).logits.float().numpy())

    return run


def timings(run: Predictor, texts: list[str], batches: int) -> tuple[float, float, float]:
    """(p50 ms, p95 ms) at batch 1 over `texts`, and texts/s at batch 32 over `batches`
    batches, after a short warm-up."""
    for text in texts[:3]:
        run([text])
    one = []
    for text in texts:
        start = time.perf_counter()
        run([text])
        one.append((time.perf_counter() - start) * 1000)
    chunks = [texts[(i * 32) % len(texts):][:32] for i in range(batches)]
    start = time.perf_counter()
    n = sum(len(run(chunk)) for chunk in chunks)
    rate = n / (time.perf_counter() - start)
    return float(np.percentile(one, 50)), float(np.percentile(one, 95)), rate


def footprint(run: Predictor, texts: list[str], preds: np.ndarray, y_true: np.ndarray,
              size_bytes: int, config: SweepflowConfig) -> Footprint:
    s = score_predictions(y_true, preds)
    rng = np.random.default_rng(config.seed)
    sample = [texts[i] for i in rng.permutation(len(texts))[:config.compress.latency_texts]]
    p50, p95, rate = timings(run, sample, config.compress.throughput_batches)
    return Footprint(f1_macro=s.f1_macro, accuracy=s.accuracy, size_mb=size_bytes / 1e6,
                     latency_p50_ms=p50, latency_p95_ms=p95, throughput_per_s=rate)


def predict_labels(run: Predictor, texts: list[str], batch_size: int = 64,
                   thresholds: list[float] | None = None) -> np.ndarray:
    """Label indices of all texts, batched by length so little padding is computed
    (multi-label, with `thresholds`: (texts, labels) 0/1 rows)."""
    order = np.argsort([chars(t) for t in texts], kind="stable")
    shape = (len(texts),) if thresholds is None else (len(texts), len(thresholds))
    out = np.empty(shape, dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        probs = run([texts[i] for i in idx])
        out[idx] = probs.argmax(-1) if thresholds is None else decide(probs, thresholds)
    return out


def build_int8(model_dir: Path, folder: Path, spec: ClassifierSpec) -> dict[str, str]:
    """model.int8.onnx, the tokenizer and classifier.json in `folder`: the artifacts of the
    MLflow model."""
    fp32 = export_onnx(model_dir, folder / "model.fp32.onnx")
    int8 = quantize(fp32, folder / "model.int8.onnx")
    fp32.unlink()
    load_tokenizer(str(model_dir)).save_pretrained(folder / "tokenizer")
    return {"onnx": str(int8), "tokenizer": str(folder / "tokenizer"),
            "spec": str(spec.save(folder))}


def measure(config: SweepflowConfig, tokens: TokenizedData, model_dir: Path,
            artifacts: dict[str, str]) -> tuple[Footprint, Footprint]:
    """Both models on the whole test split, then timed on the same sampled texts."""
    dd = load_ingested(tokens.data)
    spec = ClassifierSpec.load(Path(artifacts["spec"]))
    cut = spec.thresholds if spec.multi_label else None
    texts, y_true = model_inputs(dd["test"]), (
        multi_hot(dd["test"][LABEL], len(spec.labels)).astype(np.int64) if spec.multi_label
        else np.asarray(dd["test"][LABEL]))
    int8 = OnnxClassifier(Path(artifacts["onnx"]), Path(artifacts["tokenizer"]), spec)
    fp32_run = torch_predictor(model_dir, tokens.max_length, spec)
    fp32_size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return (footprint(fp32_run, texts, predict_labels(fp32_run, texts, thresholds=cut),
                      y_true, fp32_size, config),
            footprint(int8.probabilities, texts,
                      predict_labels(int8.probabilities, texts, thresholds=cut),
                      y_true, Path(artifacts["onnx"]).stat().st_size, config))


def comparison_rows(fp32: Footprint, int8: Footprint) -> dict[str, list]:
    keys = list(Footprint.model_fields)
    return {"measure": keys, "fp32 (PyTorch)": [getattr(fp32, k) for k in keys],
            "int8 (ONNX Runtime)": [getattr(int8, k) for k in keys],
            "int8 / fp32": [getattr(int8, k) / getattr(fp32, k) if getattr(fp32, k) else None
                            for k in keys]}


def log_comparison(tracker: tracking.Tracker, fp32: Footprint, int8: Footprint) -> None:
    import pandas as pd

    metrics = {f"compress/{name}_{k}": v for name, fp in (("fp32", fp32), ("int8", int8))
               for k, v in fp.model_dump().items()}
    metrics["compress/f1_drop"] = fp32.f1_macro - int8.f1_macro
    tracker.log(metrics=metrics)
    frame = pd.DataFrame(comparison_rows(fp32, int8))
    tracker.log_table(frame, "compression/int8_vs_fp32.json")
    tracker.log_text(markdown_table(comparison_rows(fp32, int8)), "compression/int8_vs_fp32.md")


def markdown_table(columns: dict[str, list]) -> str:
    def cell(v: object) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = list(zip(*columns.values(), strict=True))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]) + "\n"


def log_int8_model(tracker: tracking.Tracker, artifacts: dict[str, str]) -> str:
    """The int8 model as an MLflow model: this package's code file, no pickle."""
    from importlib.metadata import version

    reqs = [r for r in pip_requirements() if not r.startswith("torch==")]
    reqs += [f"onnxruntime=={version('onnxruntime')}", f"pandas=={version('pandas')}"]
    with tracker.active(), tracking.no_mlflow_prints():
        info = mlflow.pyfunc.log_model(
            name="model-int8", python_model=str(PYFUNC_CODE), artifacts=artifacts,
            input_example=input_example(Path(artifacts["spec"])), pip_requirements=reqs)
    return info.model_uri


def register_int8(config: SweepflowConfig, model_uri: str, registry: RegistryResult,
                  tracker: tracking.Tracker, f1_drop: float) -> tuple[int, list[str]]:
    """A version of the same registered model, with alias challenger-int8, and
    champion-int8 when its full-precision twin is the champion."""
    name = registered_name(config)
    client = tracker.client
    tags = {"sweepflow.variant": "int8", "sweepflow.fp32_version": str(registry.version),
            "sweepflow.run_id": tracker.run_id, "compress.f1_drop": f"{f1_drop:.6g}"}
    version = tracker.register_model(model_uri, name, tags)
    aliases = ["challenger-int8"]
    if registry.champion_version == registry.version:
        aliases.append("champion-int8")
    for alias in aliases:
        client.set_registered_model_alias(name, alias, str(version))
    return version, aliases


def compress(config: SweepflowConfig, tokens: TokenizedData, model_dir: Path,
             registry: RegistryResult | None, tracker: tracking.Tracker) -> CompressResult:
    thresholds = None
    if tokens.data.multi_label:  # the evaluated model's, picked on validation
        with tempfile.TemporaryDirectory() as tmp:
            path = tracker.client.download_artifacts(tracker.run_id, THRESHOLDS_ARTIFACT, tmp)
            thresholds = list(json.loads(Path(path).read_text()).values())
    spec = classifier_spec(tokens, config.compress.max_text_chars, thresholds)
    with tempfile.TemporaryDirectory(prefix="sweepflow-int8-") as tmp:
        artifacts = build_int8(model_dir, Path(tmp), spec)
        fp32, int8 = measure(config, tokens, model_dir, artifacts)
        log_comparison(tracker, fp32, int8)
        model_uri = log_int8_model(tracker, artifacts)
    drop = fp32.f1_macro - int8.f1_macro
    version, aliases = None, []
    limit = config.compress.max_f1_drop
    if drop > limit:
        reason = f"macro-F1 drop {drop:.4f} > compress.max_f1_drop {limit}: not registered"
    elif registry is None:
        reason = "registry.enabled=false: not registered"
    else:
        version, aliases = register_int8(config, model_uri, registry, tracker, drop)
        reason = f"macro-F1 drop {drop:.4f} <= {limit}: registered as v{version}"
    tracker.log(tags={"compress.decision": reason})
    return CompressResult(fp32=fp32, int8=int8, f1_drop=drop, model_uri=model_uri,
                          version=version, aliases=aliases, reason=reason)


@task(name="compress", cache_policy=NO_CACHE)
def compress_task(config: SweepflowConfig, tokens: TokenizedData, model_dir: str,
                  registry: RegistryResult | None, tracker: tracking.Tracker
                  ) -> CompressResult | None:
    """An optional extra: a model that cannot be exported or quantized is said in one line
    and tagged on the run (compress.error); the full-precision results stand."""
    if not config.compress.enabled:
        return None
    try:
        result = compress(config, tokens, Path(model_dir), registry, tracker)
    except Exception as err:  # noqa: BLE001 - e.g. an architecture the exporter cannot trace
        message = f"{type(err).__name__}: {err}"[:500]
        tracker.log(tags={"compress.error": message})
        report.warning(f"int8 model not made (compress.enabled=false skips it): {message}")
        return None
    f, q = result.fp32, result.int8
    report.info(f"int8: macro-F1 {q.f1_macro:.4f} vs {f.f1_macro:.4f}, {q.size_mb:.1f} vs "
                f"{f.size_mb:.1f} MB, p50 {q.latency_p50_ms:.1f} vs {f.latency_p50_ms:.1f} ms "
                f"per text; {result.reason}")
    return result
