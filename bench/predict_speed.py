"""`python -m bench.predict_speed [--texts N] [--alt-texts M]`: how long `sweepflow predict`
takes to label N short texts (the bundled tweets) with the bundled MiniLM-L6 classifier
logged as an MLflow transformers model (full precision) and as its int8 twin (what predict
loads by default when the registry holds one), against MLflow's transformers pyfunc wrapper
(what predict used before) on M of the same texts, in this one process. Prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OFFLINE_ENV
from sweepflow.console import apply_openmp_wait_policy

os.environ.update(OFFLINE_ENV)
apply_openmp_wait_policy()  # as the CLI does (but bench.common has already loaded torch)


def _texts(n: int) -> list[str]:
    import pandas as pd
    from sweepflow.tasks.ingest import BUNDLED_ENCODING, bundled_data_path

    frame = pd.read_csv(bundled_data_path(), encoding=BUNDLED_ENCODING)
    texts = [t for t in frame["text"].astype(str) if t.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def _logged_model(home: Path) -> tuple[Any, str]:
    import mlflow
    from sweepflow.tasks.evaluate import log_model
    from sweepflow.tasks.tokenize import load_tokenizer, resolve_model
    from transformers import AutoModelForSequenceClassification

    from sweepflow import tracking
    from sweepflow.config import load_config

    base = resolve_model("bundled")
    folder = home / "model"
    AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"}
    ).save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    config = load_config(overrides=[f"tracking.uri=sqlite:///{home / 'mlflow.db'}",
                                    "tracking.experiment=bench-predict"])
    tracking.setup(config)
    with mlflow.start_run():
        return config, log_model(folder, None)


def _int8_model(config: Any, home: Path) -> str:
    """The int8 twin of the same classifier, logged as predict finds it in the registry."""
    import mlflow
    from sweepflow.tasks.compress import build_int8, log_int8_model

    from sweepflow import tracking
    from sweepflow.onnx_classifier import ClassifierSpec

    folder = home / "int8"
    folder.mkdir()
    spec = ClassifierSpec(labels=["negative", "neutral", "positive"],
                          max_length=config.tokenize.long_texts().max_length,
                          max_chars=config.compress.max_text_chars)
    artifacts = build_int8(home / "model", folder, spec)
    run_id = mlflow.last_active_run().info.run_id
    return log_int8_model(tracking.Tracker.open(config, run_id), artifacts)


def measure(n: int, n_alt: int) -> dict[str, Any]:
    import mlflow
    from sweepflow.tasks.predict import load_model, predict

    from sweepflow import tracking

    texts = _texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        config, uri = _logged_model(Path(tmp))

        def timed(name: str, model_uri: str) -> tuple[list[Any], float, float]:
            """predict's load and labelling of all texts, each timed."""
            start = time.perf_counter()
            loaded = load_model(tracking.Tracker.open(config), model_uri,
                                config.tokenize.long_texts().max_length)
            loading = time.perf_counter() - start
            start = time.perf_counter()
            labelled = predict(loaded, texts)
            seconds = time.perf_counter() - start
            assert len(labelled) == n
            print(f"{name}: {n} texts in {seconds:.1f} s", file=sys.stderr, flush=True)
            return labelled, loading, seconds

        out, load_s, ours = timed("sweepflow", uri)
        out8, int8_load, int8_s = timed("int8", _int8_model(config, Path(tmp)))
        agree = sum(a.label == b.label for a, b in zip(out, out8, strict=True)) / n
        print(f"int8: {n} texts in {int8_s:.1f} s", file=sys.stderr, flush=True)
        pyfunc = mlflow.pyfunc.load_model(uri)
        start = time.perf_counter()
        pyfunc.predict(texts[:n_alt])
        theirs = time.perf_counter() - start
    ours_rate, theirs_rate = n / ours, n_alt / theirs
    return {"texts": n, "sweepflow_seconds": round(ours, 2), "load_seconds": round(load_s, 2),
            "sweepflow_texts_per_s": round(ours_rate, 1),
            "int8_seconds": round(int8_s, 2), "int8_load_seconds": round(int8_load, 2),
            "int8_texts_per_s": round(n / int8_s, 1), "int8_speedup": round(ours / int8_s, 2),
            "int8_label_agreement": round(agree, 4),
            "mlflow_pyfunc_texts": n_alt, "mlflow_pyfunc_seconds": round(theirs, 2),
            "mlflow_pyfunc_texts_per_s": round(theirs_rate, 1),
            "speedup": round(ours_rate / theirs_rate, 1),
            "threads": __import__("torch").get_num_threads(),
            "load_avg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--alt-texts", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(measure(args.texts, args.alt_texts), indent=1))


if __name__ == "__main__":
    main()
