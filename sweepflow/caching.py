"""Prefect cache keys for content-addressed outputs.

The key is the content key itself, so a second identical run shows state Cached. If the output
folder was deleted, the stale Prefect record for that key is dropped first, so the task runs
again instead of handing on a path that no longer exists.
"""

from __future__ import annotations

from pathlib import Path

from prefect.settings import get_current_settings


def content_cache_key(prefix: str, key: str, output: Path) -> str:
    cache_key = f"{prefix}-{key}"
    if not output.exists():
        record = Path(get_current_settings().results.local_storage_path) / cache_key
        record.unlink(missing_ok=True)
    return cache_key
