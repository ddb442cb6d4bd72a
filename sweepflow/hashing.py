"""Content hashes for cache keys: files, JSON-able values and the code of modules."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def hash_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_version(*modules: str) -> str:
    """Hash of the source of the modules that produce a cached artifact."""
    files = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        files.append(Path(spec.origin))
    return hash_files(files)[:16]
