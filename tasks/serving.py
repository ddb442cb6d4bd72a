"""Serve a registered model over HTTP with MLflow's own scoring server (`mlflow models
serve`), in this environment, offline, bound to 127.0.0.1 by default.

What is served is always the text-classifier MLflow model of sweepflow/pyfunc_model.py: texts
in, `label`, `score` and every label's `probabilities` out, and an empty or oversized text
answered with HTTP 400 and the reason. The int8 model (`@champion-int8`) already is one; a
full-precision model (the transformers flavour that evaluate logs, e.g. `@champion`) is wrapped
once into one, kept under the store's serving/ folder, its weights loaded from safetensors.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from sweepflow.tasks.compress import PYFUNC_CODE
from sweepflow.tasks.predict import training_long_text

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from sweepflow.onnx_classifier import ClassifierSpec
from sweepflow.paths import store_dir
from sweepflow.usererrors import UserError

EXAMPLE = ["what a great day", "the bus was late again"]
# A python_function model written by sweepflow (models from code, or a saved PythonModel).
CLASSIFIER_LOADERS = ("mlflow.pyfunc.model", "mlflow.pyfunc.loaders.code_model")


class ServeError(UserError):
    """A model that cannot be served; the message says why."""

    kind = "serve error"


def model_info(tracker: tracking.Tracker, model_uri: str):  # noqa: ANN201 - mlflow ModelInfo
    """The model's MLflow metadata, looked up in the tracker's store (MLflow is pointed at
    it first: a models:/ URI read before that would create ./mlflow.db); ServeError (one line
    naming the model and the store) when there is no such model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracker.uri)  # get_model_info reads the global registry URI
    try:
        return mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as err:
        reason = str(getattr(err, "message", err)).strip().splitlines()[0][:300]
        raise ServeError(f"cannot find {model_uri} in {tracker.uri}: {reason}. `sweepflow run` "
                         "registers one (registry.enabled=true).") from None


def checked_model(config: SweepflowConfig, tracker: tracking.Tracker, model_uri: str) -> str:
    """What `serve-model` serves for `model_uri`: looked up first (a missing model is a
    ServeError), its files checked before anything loads them (a pickled pyfunc would run
    code in the server), then `served_model`."""
    from sweepflow.modelsafety import check_model, fetch_model

    info = model_info(tracker, model_uri)
    check_model(fetch_model(model_uri))
    return served_model(config, tracker, model_uri, info)


def served_model(config: SweepflowConfig, tracker: tracking.Tracker, model_uri: str,
                 info: object = None) -> str:
    """What `mlflow models serve -m` gets: the URI itself when it is already the text
    classifier model, else the folder of its wrapped copy."""
    info = info or model_info(tracker, model_uri)
    pyfunc = info.flavors.get("python_function", {})
    if pyfunc.get("loader_module") in CLASSIFIER_LOADERS and "transformers" not in \
            info.flavors:
        return model_uri
    if "transformers" in info.flavors:
        return str(wrap_transformers(config, tracker, model_uri, info))
    raise ServeError(f"{model_uri} is neither a sweepflow text classifier nor a "
                     f"transformers model (flavours: {sorted(info.flavors)})")


def wrap_transformers(config: SweepflowConfig, tracker: tracking.Tracker, model_uri: str,
                      info: object) -> Path:
    """The transformers model as the text classifier model, saved once per model id."""
    import mlflow

    target = store_dir() / "serving" / (getattr(info, "model_id", None) or
                                        info.run_id + "-" + info.artifact_path)
    if (target / "MLmodel").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wrap-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=f"{tmp}/src"))
        binary = local / info.flavors["transformers"].get("model_binary", "model")
        labels = json.loads((binary / "config.json").read_text())["id2label"]
        lt = training_long_text(tracker.client, info.run_id,
                                config.tokenize.long_texts().max_length)
        spec = ClassifierSpec(labels=[labels[str(i)] for i in range(len(labels))],
                              max_length=lt.max_length, max_chars=config.compress.max_text_chars,
                              truncation=lt.truncation, head_share=lt.head_share,
                              long_text=lt.long_text, stride=lt.stride)
        with tracking.no_mlflow_prints():
            mlflow.pyfunc.save_model(
                path=f"{tmp}/model", python_model=str(PYFUNC_CODE), input_example=EXAMPLE,
                artifacts={"transformers": str(binary),
                           "tokenizer": str(local / "components" / "tokenizer"),
                           "spec": str(spec.save(Path(tmp)))})
        os.replace(f"{tmp}/model", target)  # whole or absent
    return target


def serve_command(model: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model,
            "--env-manager", "local", "--host", host, "--port", str(port), "--workers", "1"]


def serve_env(tracking_uri: str) -> dict[str, str]:
    """The server's environment: this store (`tracking_uri`), no Hugging Face Hub, and this
    environment's scripts first on PATH (MLflow starts `uvicorn` by name)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": path}
