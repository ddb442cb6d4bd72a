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


def shared_dir(setting: str | None) -> Path:
    """Where the caches and the kept models live: `store.shared_dir` (`setting`, a folder
    every worker reaches), else the local store."""
    return Path(setting).expanduser().resolve() if setting else store_dir()


def cache_dir(shared: Path, kind: str) -> Path:
    path = shared / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir(shared: Path, study: str) -> Path:
    """A study's kept models: a folder per training basis (data, model, tokenization), each
    holding `trial-<n>` for the best trial on that basis (a trial beaten later is removed)."""
    return shared / "models" / study
