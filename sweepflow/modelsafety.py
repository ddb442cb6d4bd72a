"""Only safe model formats are loaded: a model is data, never code.

Contract of `check_model(path)` (`path`: a local model folder, e.g. an MLflow model
downloaded with `fetch_model`). It returns None when every file is safe to load, else
raises UnsafeModel naming the file and why. Accepted:

- the `transformers` flavor (with its `python_function` loader) whose weights are
  `.safetensors` files, without stored remote code (`code: null`);
- ONNX files (`.onnx`: a protobuf graph, no pickle);
- a *models-from-code* `python_function` model (no `python_model.pkl`) whose code files are
  byte-identical copies of modules of this project (sweepflow/, tasks/, flows/);
- plain data next to them: JSON, YAML, text, tokenizer files (vocab, merges, sentencepiece).

Refused, whatever the flavor: pickles and formats that hold them (`.pkl`, `.pickle`,
`.joblib`, `.bin`/`.pt`/`.pth`/`.ckpt` torch files, `python_model.pkl`, cloudpickle), any
file that starts like a pickle or is a zip holding one, `.py` files that are not ours, and
every other flavor (sklearn, pytorch, a pickled pyfunc...). `sweepflow predict --trust-model`
skips the check for a model whose source you trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import yaml

from sweepflow.usererrors import UnsafeModel

PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".bin", ".pt", ".pth", ".ckpt", ".dill",
                   ".cloudpickle", ".npy", ".npz"}
SAFE_FLAVORS = {"transformers", "python_function", "onnx"}
OUR_PACKAGES = ("sweepflow", "sweepflow.tasks", "sweepflow.flows")
HINT = "; load it only if you trust its source: sweepflow predict --trust-model"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _our_code() -> set[str]:
    folders = [Path(d) for pkg in OUR_PACKAGES
               for d in importlib.util.find_spec(pkg).submodule_search_locations]
    return {_sha(p) for folder in folders for p in folder.rglob("*.py")}


def _looks_pickled(path: Path) -> bool:
    """A pickle (protocol 2+ starts with 0x80 and the protocol number) or a zip with one
    (torch.save's format)."""
    with path.open("rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n.endswith((".pkl", "data.pkl")) for n in z.namelist())
    return False


def _check_file(path: Path, root: Path, ours: set[str]) -> None:
    name = path.relative_to(root)
    if path.suffix.lower() in PICKLE_SUFFIXES or path.name == "python_model.pkl":
        raise UnsafeModel(f"{name} in {root} is a pickle-bearing format ({path.suffix}); "
                          f"loading it can run code{HINT}")
    if path.suffix == ".py" and _sha(path) not in ours:
        raise UnsafeModel(f"{name} in {root} is Python code that is not part of sweepflow; "
                          f"loading the model would run it{HINT}")
    if path.suffix.lower() not in (".safetensors", ".onnx") and _looks_pickled(path):
        raise UnsafeModel(f"{name} in {root} holds a pickle; loading it can run code{HINT}")


def _check_flavors(folder: Path) -> None:
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        if any(folder.rglob("*.onnx")) or any(folder.rglob("*.safetensors")):
            return  # a plain model folder (save_pretrained, or an .onnx file)
        raise UnsafeModel(f"{folder} is neither an MLflow model (no MLmodel file) nor a "
                          "folder of .safetensors / .onnx weights")
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    other = sorted(set(flavors) - SAFE_FLAVORS)
    if other:
        raise UnsafeModel(f"{folder} is an MLflow '{other[0]}' model: only the transformers "
                          f"flavor with safetensors weights, ONNX or sweepflow's own "
                          f"models-from-code are loaded{HINT}")
    if (flavors.get("transformers") or {}).get("code"):
        raise UnsafeModel(f"{folder} stores remote code for transformers{HINT}")
    if "transformers" in flavors and not any(folder.rglob("*.safetensors")):
        raise UnsafeModel(f"{folder} has no .safetensors weights (older formats are "
                          f"pickles){HINT}")


def check_model(path: str | Path) -> None:
    """Raise UnsafeModel unless every file of the model folder is safe to load (see top)."""
    folder = Path(path)
    if not folder.exists():
        raise UnsafeModel(f"model not found: {folder}")
    if folder.is_file():
        if folder.suffix.lower() != ".onnx":
            raise UnsafeModel(f"{folder}: only .onnx files or model folders are loaded{HINT}")
        return
    _check_flavors(folder)
    ours = _our_code()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        _check_file(file, folder, ours)


def fetch_model(uri: str) -> Path:
    """A local folder for a model URI (models:/name@alias, runs:/..., a path), downloaded
    without loading anything."""
    local = Path(uri.removeprefix("file://"))
    if local.exists():
        return local
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
