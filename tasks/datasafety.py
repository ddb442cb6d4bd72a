"""Data files are read only from allowed places, checked for ragged rows before parsing,
and never quoted in errors.

- `data.allowed_dirs`: a path is resolved through symlinks and must lie under one of them
  (keywords: `project` = this checkout, `home` = the user's home, `tempdir` = the system
  temp folder, `packages` = the installed packages' folders, where the bundled data lives;
  anything else is a folder path).
- CSV/TSV rows must have as many fields as the header: the first one that does not is an
  error naming the file and line, never its content.
- A parser's error message can quote the line it failed on: `safe_reason` keeps the error
  type and the line number only.
"""

from __future__ import annotations

import csv
import re
import site
import sysconfig
import tempfile
from pathlib import Path

from sweepflow.paths import project_dir

KEYWORDS = ("project", "home", "tempdir", "packages")


class UnsafePath(ValueError):
    pass


def package_dirs() -> list[Path]:
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "data")}
    paths |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return [Path(p) for p in paths if p]


def allowed_roots(entries: list[str]) -> list[Path]:
    roots: list[Path] = []
    for entry in entries:
        if entry == "project":
            roots.append(project_dir())
        elif entry == "home":
            roots.append(Path.home())
        elif entry == "tempdir":
            roots.append(Path(tempfile.gettempdir()))
        elif entry == "packages":
            roots.extend(package_dirs())
        else:
            roots.append(Path(entry).expanduser())
    return [r.resolve() for r in roots]


def check_allowed(path: Path, entries: list[str]) -> Path:
    """The resolved path, if it lies under an allowed folder; else UnsafePath (naming the
    path as given and where it leads, not what it holds)."""
    real = path.expanduser().resolve()
    if any(real == root or real.is_relative_to(root) for root in allowed_roots(entries)):
        return real
    via = f" (it resolves to {real})" if real != path.expanduser().absolute() else ""
    raise UnsafePath(f"{path}{via} is outside data.allowed_dirs ({', '.join(entries)}); "
                     "move the file there or add its folder to data.allowed_dirs")


def first_ragged_line(path: Path, sep: str, encoding: str) -> tuple[int, int, int] | None:
    """(line, fields, header fields) of the first row whose field count differs from the
    header's, or None. Quoted fields may span lines; blank lines are skipped."""
    with path.open(encoding=encoding, errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, None)
        if header is None:
            return None
        for row in reader:
            if row and len(row) != len(header):
                return reader.line_num, len(row), len(header)
    return None


_LINE = re.compile(r"\b(?:line|row)\s+(\d+)", re.IGNORECASE)


def safe_reason(err: BaseException) -> str:
    """An error's type and the line it names (if any), without the text it may quote."""
    match = _LINE.search(str(err))
    return type(err).__name__ + (f" at line {match.group(1)}" if match else "")
