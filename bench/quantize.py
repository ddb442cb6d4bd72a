"""`python -m bench.quantize --model-dir DIR [overrides...]`: which int8 to ship.

Four ways to run one fine-tuned model on the CPU, measured in the same process on the same
test split of the experiment (the default: the bundled tweets): PyTorch fp32 (what evaluate
logs), PyTorch dynamic int8 (torch.ao.quantization.quantize_dynamic on nn.Linear), ONNX
Runtime fp32 and ONNX Runtime int8 (quantize_dynamic, per channel; what tasks/compress.py
ships). Macro-F1 and accuracy on the whole test split, size on disk, latency per text at batch
1 (p50, p95 over the same sampled texts) and throughput at batch 32. Writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)


def torch_int8(model_dir: Path, max_length: int, folder: Path):  # noqa: ANN201
    from sweepflow.tasks.compress import module_predictor
    from sweepflow.tasks.tokenize import load_tokenizer
    from torch.ao.quantization import quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    qmodel = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    torch.save(qmodel.state_dict(), folder / "torch-int8.pt")  # for its size only
    run = module_predictor(qmodel, load_tokenizer(str(model_dir)), max_length)
    return run, (folder / "torch-int8.pt").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quantize")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--out", default="bench/quantize.json")
    parser.add_argument("--test-texts", type=int, default=None,
                        help="score a seeded sample of this many test texts (default: all)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from sweepflow.tasks.clean import LABEL, TEXT
    from sweepflow.tasks.compress import (
        export_onnx,
        footprint,
        predict_labels,
        quantize,
        torch_predictor,
    )
    from sweepflow.tasks.ingest import ingest, load_ingested
    from sweepflow.tasks.train import set_threads

    from sweepflow.config import load_config
    from sweepflow.onnx_classifier import ClassifierSpec, OnnxClassifier

    config = load_config(overrides=args.overrides)
    set_threads(None)
    data = ingest(config)
    dd = load_ingested(data)
    texts, y = list(dd["test"][TEXT]), np.asarray(dd["test"][LABEL])
    if args.test_texts:
        keep = np.random.default_rng(config.seed).permutation(len(texts))[:args.test_texts]
        texts, y = [texts[i] for i in keep], y[keep]
    spec = ClassifierSpec(labels=list(data.label_names),
                          max_length=config.tokenize.long_texts().max_length,
                          max_chars=10**6)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32_onnx = export_onnx(args.model_dir, folder / "fp32.onnx")
        int8_onnx = quantize(fp32_onnx, folder / "int8.onnx")
        contenders = {
            "pytorch fp32": (torch_predictor(args.model_dir, spec.max_length),
                             sum(p.stat().st_size for p in args.model_dir.glob("*.safetensors"))),
            "pytorch dynamic int8": torch_int8(args.model_dir, spec.max_length, folder),
            "onnxruntime fp32": (OnnxClassifier(fp32_onnx, args.model_dir, spec).probabilities,
                                 fp32_onnx.stat().st_size),
            "onnxruntime int8": (OnnxClassifier(int8_onnx, args.model_dir, spec).probabilities,
                                 int8_onnx.stat().st_size),
        }
        reference = None
        for name, (run, size) in contenders.items():
            start = time.perf_counter()
            preds = predict_labels(run, texts)
            reference = preds if reference is None else reference
            fp = footprint(run, texts, preds, y, size, config)
            rows[name] = fp.model_dump() | {"test_seconds": time.perf_counter() - start,
                                            "agrees_with_fp32": float(np.mean(preds == reference))}
            print(name, json.dumps(rows[name]), flush=True)
    result = {"model_dir": str(args.model_dir), "test_texts": len(texts),
              "machine": {"cpu": platform.processor(), "cores": len(os.sched_getaffinity(0)),
                          "load": Path("/proc/loadavg").read_text().split()[:3]},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
