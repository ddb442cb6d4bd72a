"""Multi-label data and decisions: a row carries a set of labels (possibly empty: "no tag").

Plain functions, no orchestrator. A label column holding lists (a Python list in Hub data or
JSON lines, a JSON or Python list literal in a CSV cell such as `["billing", "urgent"]`), or
several 0/1 columns named by `data.label_columns`, make a run multi-label. The ingested label
of a row is the sorted list of its label ids; training uses it as a float multi-hot vector
(sigmoid + binary cross-entropy), and each label gets its own decision threshold, the one that
maximises its F1 on the validation split (0.5 when validation has no positive of it).

Splits stay the hash splits of tasks/splits.py (a row's split is a function of its text),
as for single-label data: stratifying by label set or iteratively would move rows between
splits whenever data is added. Each label set lands in every split in the configured shares
approximately; `label_counts` reports every label's positives per split.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

ROW = "_row"  # a row's number in its source split (1 = the first data row), for errors
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
DEFAULT_THRESHOLD = 0.5


class LabelError(ValueError):
    """A label cell or 0/1 column that cannot be read; the message names column and row."""


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _list_literal(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("[") and \
        value.strip().endswith("]")


def _parse_cell(value: Any, where: str) -> list[Any]:
    """A list cell as a list: a list already, or a JSON / Python list literal (read with
    json, else ast.literal_eval: literals only, nothing is evaluated)."""
    if _is_list(value):
        items = list(value)
    else:
        try:
            items = json.loads(value)
        except ValueError:
            try:
                items = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise LabelError(f"{where} is not a list of labels") from None
    if not isinstance(items, list) or not all(isinstance(i, str | int) and not
                                              isinstance(i, bool) for i in items):
        raise LabelError(f"{where} is not a list of labels (strings or integers)")
    return items


def list_labels(labels: pd.Series, column: str) -> list[list[Any] | None] | None:
    """The cells of a label column as lists (None for a missing label) when they hold lists,
    else None: a single-label column (a numeric column costs one dtype check). A column
    mixing lists and single labels is an error naming its first row of the rarer kind;
    `column` is how errors name the column ("column 'tags' of FILE (split train)")."""
    if pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        return None
    if not labels.dropna().astype(str).str.lstrip().str.startswith("[").any():
        return None  # the single-label fast path: no cell looks like a list
    values = labels.tolist()
    kinds = [None if not _is_list(v) and pd.isna(v) else _is_list(v) or _list_literal(v)
             for v in values]
    lists = [i for i, k in enumerate(kinds) if k]
    if not lists:
        return None
    scalars = [i for i, k in enumerate(kinds) if k is False]
    if scalars:
        raise LabelError(f"{column} mixes label lists and single labels: row {scalars[0] + 1} "
                         f"holds a single label, row {lists[0] + 1} a list; use a list in "
                         'every row (["billing"]) or a single label in every row')
    return [None if k is None else _parse_cell(v, f"{column}, row {i + 1},")
            for i, (v, k) in enumerate(zip(values, kinds, strict=True))]


def columns_labels(frame: pd.DataFrame, columns: list[str], where: str) -> list[list[str]]:
    """Label sets from 0/1 columns (`data.label_columns`): each row's set is the columns
    holding 1. Any other value (2, "yes", a blank) is an error naming column and row."""
    out: list[list[str]] = [[] for _ in range(len(frame))]
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise LabelError(f"column '{column}' of {where}, row {row + 1}, holds "
                             f"{_shown(frame[column].iloc[row])}: data.label_columns "
                             "columns hold 0 or 1")
        for i in np.flatnonzero(values.to_numpy() == 1):
            out[i].append(column)
    return out


def _shown(value: Any) -> str:
    """A bad cell named without quoting data: its type, or a short number."""
    if pd.isna(value) if not _is_list(value) else False:
        return "nothing (an empty cell)"
    if isinstance(value, int | float | np.number):
        return f"{value}"
    return f"a {type(value).__name__} value, not 0 or 1"


def check_label_sets(sets: list[list[str] | None], known: set[str] | None, allow_empty: bool,
                     column: str) -> None:
    """Every label of every set is known (when the labels are declared), and an empty set is
    allowed unless `data.allow_empty_labels=false`; errors name the row (1 = first)."""
    for i, labels in enumerate(sets):
        if labels is None:
            continue
        if not labels and not allow_empty:
            raise LabelError(f"{column}, row {i + 1}, has no label and "
                             "data.allow_empty_labels=false")
        if known is not None:
            unknown = [label for label in labels if label not in known]
            if unknown:
                raise LabelError(f"label '{unknown[0]}' in {column}, row {i + 1}, is not in "
                                 "data.labels")


def multi_hot(label_ids: list[list[int]] | Any, n: int) -> np.ndarray:
    """(rows, n) 0/1 matrix (float32) of lists of label ids."""
    out = np.zeros((len(label_ids), n), dtype=np.float32)
    for i, ids in enumerate(label_ids):
        out[i, list(ids)] = 1.0
    return out


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The grid threshold with the highest F1 of one label (ties: the one nearest 0.5);
    0.5 when the label has no positive row."""
    if not y.any():
        return DEFAULT_THRESHOLD
    pred = p[None, :] >= THRESHOLD_GRID[:, None]
    tp = (pred & (y[None, :] > 0)).sum(1)
    f1 = 2 * tp / (pred.sum(1) + y.sum())
    best = np.flatnonzero(f1 == f1.max())
    return float(THRESHOLD_GRID[best[np.abs(THRESHOLD_GRID[best] - 0.5).argmin()]])


def pick_thresholds(y: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per label, the threshold maximising its F1 on (validation) rows `y`, `probs`."""
    return [best_threshold(y[:, j], probs[:, j]) for j in range(y.shape[1])]


def decide(probs: np.ndarray, thresholds: list[float] | np.ndarray) -> np.ndarray:
    """(rows, labels) 0/1 int matrix: each label's probability against its threshold."""
    return (probs >= np.asarray(thresholds, dtype=np.float32)[None, :]).astype(np.int64)


class MultiLabelScores(BaseModel):
    """Test scores of a multi-label model. `accuracy` is the subset accuracy (the whole label
    set right), so the registry's `test/accuracy` means the same strict thing."""

    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    f1_micro: float
    subset_accuracy: float


def multilabel_scores(y_true: np.ndarray, y_pred: np.ndarray) -> MultiLabelScores:
    """Macro and micro F1 over labels, macro precision / recall, subset accuracy
    (scikit-learn on indicator matrices; 0 where undefined)."""
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                 zero_division=0)
    subset = float(accuracy_score(y_true, y_pred))
    return MultiLabelScores(
        accuracy=subset, precision_macro=float(p), recall_macro=float(r), f1_macro=float(f),
        f1_micro=float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        subset_accuracy=subset)


def metric_name(label: str) -> str:
    """A label as part of an MLflow metric name (letters, digits, _ - . / and space)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in label)


def label_counts(sets: pd.Series, names: list[str]) -> dict[str, int]:
    """Positives per label name in a split (ids -> names)."""
    counts = np.bincount([i for ids in sets for i in ids], minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


def set_name(ids: Any, names: list[str]) -> str:
    """A label set as one name, for label-set shares (data versions, drift): 'a+b', '(none)'."""
    return "+".join(names[i] for i in ids) or "(none)"
