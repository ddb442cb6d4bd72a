"""Folders written whole or not at all, and checked when read back.

One mechanism for every folder the pipeline keeps (the ingest and tokenize caches, a study's
best model): build into a temp folder with a name unique to this process, write a manifest
of every file's size and SHA-256, then rename into place. Two processes that build the same
content key at once each build their own temp folder; the first rename wins and the other
keeps the winner's folder. A folder whose files no longer match its manifest (a truncated
Arrow file, a half-copied model) is reported and moved aside, so it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REUSED = "(reused from cache)"  # what the console adds to a step's line on a cache hit

T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A step's result and whether it was read back from the folder of its content key."""

    value: T
    reused: bool


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listing(folder: Path) -> dict[str, list]:
    return {str(p.relative_to(folder)): [p.stat().st_size, _sha256(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def check(folder: Path) -> str | None:
    """None if `folder` holds exactly what its manifest lists, else what is wrong."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no manifest (unfinished or written by an older version)"
    try:
        expected = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest: {err}"
    try:
        actual = {name: [(folder / name).stat().st_size, _sha256(folder / name)]
                  for name in expected if (folder / name).is_file()}
    except OSError as err:
        return f"unreadable file: {err}"
    for name, meta in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != meta:
            return f"{name} does not match its checksum"
    return None


def discard(folder: Path, reason: str) -> None:
    """Move a broken folder aside (atomic), then delete it."""
    log.warning("%s is damaged (%s): rebuilding it", folder, reason)
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".broken", dir=folder.parent))
    try:
        os.replace(folder, aside / folder.name)
    except FileNotFoundError:
        pass  # another process discarded it first
    shutil.rmtree(aside, ignore_errors=True)


def valid(folder: Path) -> bool:
    """True for a complete folder; a damaged one is discarded (and False)."""
    if not folder.exists():
        return False
    problem = check(folder)
    if problem is None:
        return True
    discard(folder, problem)
    return False


def publish(target: Path, build: Callable[[Path], None], replace: bool = False) -> Path:
    """Build a folder with `build(tmp)` and rename it to `target`. If `target` appears
    meanwhile (another process), theirs is kept unless `replace`; the temp folder never
    outlives this call."""
    tmp = stage(target, build)
    try:
        return commit(tmp, target, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage(target: Path, build: Callable[[Path], None]) -> Path:
    """The first half of publish: a temp folder beside `target`, built by `build(tmp)` and
    with its manifest, for `commit` to rename into place (the caller removes it otherwise).
    Apart, so the slow part (writing, hashing) can run before a lock and the rename under it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_listing(tmp), indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def commit(tmp: Path, target: Path, replace: bool = False) -> Path:
    """The second half of publish: rename the staged folder `tmp` to `target` (replacing
    it if `replace`, else keeping another process' folder that got there first)."""
    if replace and target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                    dir=target.parent))
        try:
            os.replace(target, old / target.name)
        except FileNotFoundError:
            pass
        try:
            os.rename(tmp, target)
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return target
    try:
        os.rename(tmp, target)  # fails when another process published first
    except OSError:
        if not target.exists():
            raise
    return target
