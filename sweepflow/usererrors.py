"""User errors: wrong input the user can fix. The CLI prints them as one line and exits 2
(with -v the traceback too); anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(RuntimeError):
    """Base class: the message names the file, key or value, and never quotes file content."""

    kind = "error"


class StoreError(UserError):
    """A tracking or study store that cannot be used (corrupted, unreadable)."""

    kind = "store error"


class UnsafeModel(UserError):
    """A model whose loading could run code (pickle) and was not trusted explicitly."""

    kind = "unsafe model"
