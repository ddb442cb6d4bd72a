"""Long texts: head / tail / head_tail truncation and chunks with stride, one definition
(sweepflow/encoding.py) shared by tokenization, evaluation, predict and the served models."""

from __future__ import annotations

import numpy as np
import pytest
from sweepflow.tasks.tokenize import load_tokenizer

from sweepflow.config import ConfigError, load_config
from sweepflow.encoding import LongText, cut, encode, mean_by_doc

WORDS = "the car road today news report city meeting great love happy best".split()


@pytest.fixture
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.mark.parametrize(("truncation", "kept"), [
    ("head", WORDS[:6]), ("tail", WORDS[-6:]), ("head_tail", WORDS[:3] + WORDS[-3:])])
def test_truncation_keeps_the_named_tokens(tokenizer, truncation, kept):
    lt = LongText(max_length=8, truncation=truncation, head_share=0.5)  # 6 + [CLS] [SEP]
    assert cut(tokenizer, [" ".join(WORDS), "short text"], lt) == [" ".join(kept), "short text"]
    enc, docs = encode(tokenizer, [" ".join(WORDS)], lt)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0])[1:-1] == kept and docs == [0]


def test_chunks_overlap_by_the_stride_and_average_per_text(tokenizer):
    lt = LongText(max_length=8, long_text="chunk", stride=2)
    enc, docs = encode(tokenizer, [" ".join(WORDS), "great day"], lt)
    windows = [tokenizer.convert_ids_to_tokens(ids)[1:-1] for ids in enc["input_ids"]]
    assert docs == [0, 0, 0, 1]  # 12 words: windows of 6 starting every 4
    assert windows[:3] == [WORDS[:6], WORDS[4:10], WORDS[8:]]
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [1.0, 0.0]])
    np.testing.assert_allclose(mean_by_doc(probs, docs, 2), [[0.4, 0.6], [1.0, 0.0]])


def test_chunked_tokenization_has_windows_with_their_text_and_label(tiny_overrides):
    from sweepflow.tasks.ingest import ingest, load_ingested
    from sweepflow.tasks.tokenize import load_tokenized, tokenize

    config = load_config(overrides=[*tiny_overrides, "tokenize.max_length=8",
                                    "tokenize.long_text=chunk", "tokenize.stride=2"])
    tokens = tokenize(config, ingest(config))
    assert tokens.chunked and tokens.long.describe() == "chunks of 8 tokens, stride 2"
    texts = load_ingested(tokens.data)["train"]
    rows = load_tokenized(tokens.path)["train"]
    assert len(rows) > len(texts) and max(rows["length"]) <= 8
    docs, labels = rows["doc"], rows["label"]
    assert sorted(set(docs)) == list(range(len(texts)))
    assert all(labels[i] == texts[d]["label"] for i, d in enumerate(docs))


def test_stride_over_half_the_window_is_a_config_error():
    with pytest.raises(ConfigError, match="tokenize.stride=40 must be at most half"):
        load_config(overrides=["tokenize.long_text=chunk", "tokenize.stride=40"])


@pytest.mark.parametrize(("setting", "named"), [
    (["tokenize.truncation=head_tail", "tokenize.head_share=0.5"],
     "head+tail truncation at 8 (50% head)"),
    (["tokenize.long_text=chunk", "tokenize.stride=2"], "chunks of 8 tokens, stride 2")])
def test_the_token_line_names_the_strategy(tiny_overrides, caplog, setting, named):
    import logging

    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize_task

    from sweepflow.console import REPORT

    config = load_config(overrides=[*tiny_overrides, "tokenize.max_length=8", *setting])
    with caplog.at_level(logging.INFO, logger=REPORT):
        tokenize_task.fn(config, ingest(config))
    line = next(m for m in caplog.messages if m.startswith("tokens:"))
    assert line.endswith(f"of texts longer than 8: {named}"), line
