"""User errors: wrong input or setup the user can fix. The CLI (flows/cli.py) prints one as
a single line `<kind>: <message>` and exits with its `exit_code` (with -v the traceback
too); anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """Base class: the message names the file, key or value, and never quotes file content.
    `kind` is the label printed before the message; `exit_code` 2 is a usage error (config,
    setup, stores the user pointed at), 1 an input or state the command could not use."""

    kind = "error"
    exit_code = 1


class StoreError(UserError):
    """A tracking or study store that cannot be used (corrupted, unreadable)."""

    kind = "store error"
    exit_code = 2


class UnsafeModel(UserError):
    """A model whose loading could run code (pickle) and was not trusted explicitly."""

    kind = "unsafe model"
    exit_code = 2
