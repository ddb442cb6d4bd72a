"""Where things live: the project root, conf/, and the local store under mlruns/."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


def store_dir() -> Path:
    """The local store: MLflow database and artifacts, Optuna studies, caches.

    SWEEPFLOW_HOME moves it (tests point it into tmp_path).
    """
    return Path(os.environ.get("SWEEPFLOW_HOME", ROOT / "mlruns")).resolve()


def cache_dir(kind: str) -> Path:
    path = store_dir() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir(study: str, basis: str) -> Path:
    """A study's kept models for one training basis (data, model, tokenization): one folder
    `trial-<n>` for the best trial on that basis (a trial beaten later is removed)."""
    return store_dir() / "models" / study / basis
