"""Stable splits: a row's split is a function of its own content, never of the other rows.

TFX assigns examples to splits by hashing them; so does this: a row carved out of a source
without its own validation/test split goes to the split its hash (normalised text + seed)
falls in, so adding rows never moves an existing row between splits, and no row a model
was trained on can land in a later test split. The hash ignores the label, so each class is
split in the configured shares approximately (not exactly, as a stratified shuffle would).

Sentence pairs are grouped by their first text (`split_group`): every pair of one question
or premise (QQP, MNLI: one premise, three hypotheses) lands in the same split, so no test
pair shares its first text with a training pair. Hashing the whole pair would scatter them.

Caps (`data.max_train_samples`, `max_eval_samples`) keep the n rows of lowest cap hash: a
deterministic sample that changes as little as possible as data grows (a kept row leaves
only when the cap is full and a new row hashes below it; a row never enters another split).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

TEXT = "text"


def unit_hash(texts: pd.Series, seed: int, salt: str) -> np.ndarray:
    """A number in [0, 1) per text: blake2b of (seed, salt, text), uniform and stable."""
    prefix = f"{seed}\x1f{salt}\x1f".encode()
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        digest = hashlib.blake2b(prefix + str(text).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def row_ids(texts: pd.Series) -> list[str]:
    """A short id per row (its normalised text): what "the same row" means across versions."""
    return [hashlib.blake2b(str(t).encode(), digest_size=6).hexdigest() for t in texts]


def split_group(df: pd.DataFrame) -> pd.Series:
    """What decides a row's split: its text; for a pair, the first text only (a group)."""
    return df[TEXT]


def carve_by_hash(df: pd.DataFrame, shares: dict[str, float], seed: int
                  ) -> dict[str, pd.DataFrame]:
    """Split `df` into the named parts by hash: part k takes the rows whose group's hash
    falls in its slice of [0, 1) (slices in the order given); the remainder is "train"."""
    u = unit_hash(split_group(df), seed, "split")
    out, low = {}, 0.0
    taken = np.zeros(len(df), dtype=bool)
    for name, share in shares.items():
        mask = (u >= low) & (u < low + share)
        out[name] = df[mask].reset_index(drop=True)
        taken |= mask
        low += share
    out["train"] = df[~taken].reset_index(drop=True)
    return out


def cap_by_hash(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most n rows: those of lowest cap hash, in their original order."""
    if n is None or len(df) <= n:
        return df
    u = unit_hash(split_group(df), seed, "cap")  # a pair group is kept or dropped whole
    keep = np.zeros(len(df), dtype=bool)
    keep[np.argsort(u, kind="stable")[:n]] = True
    return df[keep].reset_index(drop=True)
