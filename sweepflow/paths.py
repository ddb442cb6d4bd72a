"""Where things live: the packaged conf/, the user's project folder, and the local store."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

# conf/ ships inside the package as sweepflow.conf (the checkout's conf/ in an editable install).
CONF_DIR = Path(str(importlib.resources.files("sweepflow.conf")))
PACKAGE_DIR = Path(__file__).resolve().parent


def project_dir() -> Path:
    """The user's project: the working folder (where `mlruns/` and `conf/local.yaml` live)."""
    return Path.cwd()


def store_dir() -> Path:
    """The local store: MLflow database and artifacts, Optuna studies, caches: ./mlruns, as
    MLflow's own default. SWEEPFLOW_HOME moves it (tests point it into tmp_path)."""
    return Path(os.environ.get("SWEEPFLOW_HOME", project_dir() / "mlruns")).resolve()


_shared: dict[str, Path] = {}  # "dir" -> store.shared_dir of the running flow


def use_shared_dir(path: str | None) -> None:
    """Put the caches and kept models under `path` (store.shared_dir: a folder every
    worker reaches), or back in the local store when None. Called once per flow run."""
    if path:
        _shared["dir"] = Path(path).expanduser().resolve()
    else:
        _shared.pop("dir", None)


def shared_dir() -> Path:
    """Where the tokenized data and the kept models live: store.shared_dir, else the store."""
    return _shared.get("dir") or store_dir()


def cache_dir(kind: str) -> Path:
    path = shared_dir() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir(study: str, basis: str) -> Path:
    """A study's kept models for one training basis (data, model, tokenization): one folder
    `trial-<n>` for the best trial on that basis (a trial beaten later is removed)."""
    return shared_dir() / "models" / study / basis
