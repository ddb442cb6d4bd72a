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
