"""Text cleaning: repair mojibake, normalise, strip, filter and de-duplicate, with counts."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import ftfy
import pandas as pd

from sweepflow.config import CleanConfig

TEXT = "text"
TEXT_PAIR = "text_pair"  # the second text of a sentence pair
LABEL = "label"


def text_key(df: pd.DataFrame) -> pd.Series:
    """What makes two rows the same text: the text, or both texts of a pair."""
    if TEXT_PAIR in df:
        return df[TEXT] + "\x1f" + df[TEXT_PAIR]
    return df[TEXT]


def model_inputs(split: Any) -> list:
    """A split's inputs as the served model takes them: texts, or (text, text_pair) pairs."""
    if TEXT_PAIR in split.column_names:
        return list(zip(split[TEXT], split[TEXT_PAIR], strict=True))
    return list(split[TEXT])


def split_keys(split: Any) -> pd.Series:
    """`text_key` of a split (a datasets.Dataset): the text, or both texts of a pair."""
    return text_key(split.select_columns([c for c in (TEXT, TEXT_PAIR)
                                          if c in split.column_names]).to_pandas())


@dataclass
class CleanReport:
    """Rows dropped (or changed) at each cleaning step, per split."""

    steps: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, split: str, step: str, count: int) -> None:
        self.steps.setdefault(split, {})[step] = self.steps.get(split, {}).get(step, 0) + count


def normalise(text: str, fix_unicode: bool) -> str:
    """ftfy repairs mojibake and applies NFC; whitespace runs collapse to one space."""
    if fix_unicode:
        text = ftfy.fix_text(text, normalization="NFC")
    else:
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def clean_split(
    frame: pd.DataFrame, split: str, cfg: CleanConfig, report: CleanReport
) -> pd.DataFrame:
    """Return a cleaned copy of a (text, label[, confidence]) frame; counts go to `report`."""
    df = frame.copy()
    report.add(split, "rows_in", len(df))
    missing_label = df[LABEL].isna()
    report.add(split, "dropped_missing_label", int(missing_label.sum()))
    df = df[~missing_label]
    texts = df[TEXT].astype("string").fillna("")
    cleaned = texts.map(lambda t: normalise(str(t), cfg.fix_unicode)).astype("string")
    report.add(split, "changed_by_normalisation", int((cleaned != texts).sum()))
    df = df.assign(**{TEXT: cleaned})
    if TEXT_PAIR in df:  # the second text of a pair is cleaned the same way
        pairs = df[TEXT_PAIR].astype("string").fillna("")
        df = df.assign(**{TEXT_PAIR: pairs.map(lambda t: normalise(str(t), cfg.fix_unicode)
                                               ).astype("string")})
    steps = [
        ("dropped_empty", cfg.drop_empty, lambda d: d[TEXT].str.len() > 0),
        ("dropped_too_short", cfg.min_chars is not None,
         lambda d: d[TEXT].str.len() >= (cfg.min_chars or 0)),
        ("dropped_too_long", cfg.max_chars is not None,
         lambda d: d[TEXT].str.len() <= (cfg.max_chars or 0)),
        ("dropped_low_confidence", cfg.min_confidence is not None,
         lambda d: pd.to_numeric(d["confidence"], errors="coerce") >= cfg.min_confidence),
        ("dropped_duplicates", cfg.drop_duplicates, lambda d: ~text_key(d).duplicated()),
    ]
    for name, enabled, keep in steps:
        if enabled:
            mask = keep(df)
            report.add(split, name, int((~mask).sum()))
            df = df[mask]
    report.add(split, "rows_out", len(df))
    return df.reset_index(drop=True)


def remove_overlap(
    splits: dict[str, pd.DataFrame], report: CleanReport
) -> dict[str, pd.DataFrame]:
    """No text may sit in two splits: drop from train what val/test hold, and from val what test
    holds (evaluation splits win, so scores stay honest). Counted per pair of splits as
    `dropped_overlap_with_<split>`."""
    out = dict(splits)
    order = [s for s in ("test", "validation", "train") if s in out]
    kept: dict[str, set[str]] = {}
    for split in order:
        df = out[split]
        leak = pd.Series(False, index=df.index)
        key = text_key(df)
        for other, texts in kept.items():
            hit = key.isin(texts) & ~leak
            report.add(split, f"dropped_overlap_with_{other}", int(hit.sum()))
            leak |= hit
        out[split] = df[~leak].reset_index(drop=True)
        kept[split] = set(text_key(out[split]))
    return out


STEP_TEXT = {
    "dropped_missing_label": "dropped {n} rows without a label",
    "dropped_empty": "dropped {n} texts empty after cleaning",
    "dropped_too_short": "dropped {n} texts shorter than data.clean.min_chars",
    "dropped_too_long": "dropped {n} texts longer than data.clean.max_chars",
    "dropped_low_confidence": "dropped {n} rows below data.clean.min_confidence",
    "dropped_duplicates": "dropped {n} duplicate texts",
    "dropped_by_sample_cap": "left out {n} rows over data.max_train_samples / max_eval_samples",
    "changed_by_normalisation": "repaired or normalised {n} texts (ftfy, NFC, whitespace)",
}


def describe_cleaning(steps: dict[str, dict[str, int]]) -> list[str]:
    """One line per cleaning step that removed or changed rows, with the count per split."""
    lines = []
    names = dict.fromkeys(k for counts in steps.values() for k in counts)
    for name in names:
        if name in ("rows_in", "rows_out"):
            continue
        per = {split: counts.get(name, 0) for split, counts in steps.items()}
        total = sum(per.values())
        if not total:
            continue
        where = ", ".join(f"{s} {n:,}" for s, n in per.items() if n)
        if name.startswith("dropped_overlap_with_"):
            other = name.removeprefix("dropped_overlap_with_")
            text = f"dropped {total:,} texts that are also in {other} (no leakage)"
        else:
            text = STEP_TEXT.get(name, f"{name}: {{n}}").format(n=f"{total:,}")
        lines.append(f"{text}: {where}")
    return lines
