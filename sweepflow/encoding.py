"""How a text longer than `max_length` tokens becomes model inputs: the one definition that
tokenization for training, evaluation, `predict`, the int8 twin and `serve-model` share.

- `truncation: head` keeps the first tokens (the tokenizer's own truncation), `tail` the last,
  `head_tail` the first `head_share` of the token budget and the last rest (Sun et al. 2019,
  "How to Fine-Tune BERT for Text Classification": head 128 + tail 382 of 512 on IMDB).
  head/tail/head_tail cut the text at the character offsets of the kept tokens and tokenize
  the cut text, so any fast tokenizer works the same way.
- `long_text: chunk` cuts a text into windows of `max_length` tokens overlapping by `stride`
  (the tokenizer's overflowing tokens); every window is a training row with its document's
  label, and a document's prediction is the mean of its windows' probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LongText:
    max_length: int
    truncation: str = "head"  # head | tail | head_tail
    head_share: float = 0.25  # head_tail: share of the token budget kept from the head
    long_text: str = "truncate"  # truncate | chunk
    stride: int = 16  # chunk: tokens shared by neighbouring windows

    @property
    def plain(self) -> bool:
        """The tokenizer's own head truncation, one row per text."""
        return self.truncation == "head" and self.long_text == "truncate"

    def describe(self) -> str:
        if self.long_text == "chunk":
            return f"chunks of {self.max_length} tokens, stride {self.stride}"
        if self.truncation == "head_tail":
            return f"head+tail truncation at {self.max_length} ({self.head_share:.0%} head)"
        return f"{self.truncation} truncation at {self.max_length}"


def cut(tokenizer: Any, texts: list[str], lt: LongText) -> list[str]:
    """Each text cut to the characters of the tokens `lt.truncation` keeps."""
    budget = lt.max_length - tokenizer.num_special_tokens_to_add(pair=False)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, return_token_type_ids=False)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
        if len(offsets) <= budget:
            out.append(text)
            continue
        head = 0 if lt.truncation == "tail" else (
            budget if lt.truncation == "head" else round(budget * lt.head_share))
        tail = budget - head
        kept = text[:offsets[head - 1][1]] if head else ""
        if tail:
            kept = f"{kept} {text[offsets[-tail][0]:]}" if kept else text[offsets[-tail][0]:]
        out.append(kept)
    return out


def encode(tokenizer: Any, texts: list[str], lt: LongText, **kwargs: Any
           ) -> tuple[dict[str, Any], list[int]]:
    """Tokenized rows and, for each row, the index of its text (windows share one)."""
    if lt.long_text == "chunk":
        enc = tokenizer(texts, truncation=True, max_length=lt.max_length, stride=lt.stride,
                        return_overflowing_tokens=True, **kwargs)
        docs = [int(d) for d in enc.pop("overflow_to_sample_mapping")]
        return enc, docs
    if lt.truncation != "head":
        texts = cut(tokenizer, texts, lt)
    return tokenizer(texts, truncation=True, max_length=lt.max_length, **kwargs), list(
        range(len(texts)))


def mean_by_doc(probs: np.ndarray, docs: list[int] | np.ndarray, n: int) -> np.ndarray:
    """(n, labels): the mean of each document's rows of `probs` (rows in any order)."""
    docs = np.asarray(docs)
    out = np.zeros((n, probs.shape[1]), dtype=np.float64)
    np.add.at(out, docs, probs)
    return (out / np.bincount(docs, minlength=n)[:, None]).astype(np.float32)
