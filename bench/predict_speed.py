"""`python -m bench.predict_speed [--texts N] [--alt-texts M]`: how long `sweepflow predict`
takes to label N short texts (the bundled tweets) with the bundled MiniLM-L6 classifier
logged as an MLflow transformers model, against MLflow's transformers pyfunc wrapper (what
predict used before) on M of the same texts, in this one process. Prints JSON."""

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

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI runs it (console.py)


def _texts(n: int) -> list[str]:
    import pandas as pd

    from tasks.ingest import BUNDLED_ENCODING, bundled_data_path

    frame = pd.read_csv(bundled_data_path(), encoding=BUNDLED_ENCODING)
    texts = [t for t in frame["text"].astype(str) if t.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def _logged_model(home: Path) -> tuple[Any, str]:
    import mlflow
    from transformers import AutoModelForSequenceClassification

    from sweepflow import tracking
    from sweepflow.config import load_config
    from tasks.evaluate import log_model
    from tasks.tokenize import load_tokenizer, resolve_model

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


def measure(n: int, n_alt: int) -> dict[str, Any]:
    import mlflow

    from tasks.predict import load_model, predict

    texts = _texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        config, uri = _logged_model(Path(tmp))
        start = time.perf_counter()
        loaded = load_model(config, uri)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        out = predict(loaded, texts)
        ours = time.perf_counter() - start
        assert len(out) == n
        print(f"sweepflow: {n} texts in {ours:.1f} s", file=sys.stderr, flush=True)
        pyfunc = mlflow.pyfunc.load_model(uri)
        start = time.perf_counter()
        pyfunc.predict(texts[:n_alt])
        theirs = time.perf_counter() - start
    ours_rate, theirs_rate = n / ours, n_alt / theirs
    return {"texts": n, "sweepflow_seconds": round(ours, 2), "load_seconds": round(load_s, 2),
            "sweepflow_texts_per_s": round(ours_rate, 1),
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
