from __future__ import annotations

import logging
import shutil

from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.tokenize import load_tokenized, tokenize, tokenize_key

from sweepflow.config import load_config


def test_tokenize_unpadded_truncated_with_stats(tiny_config):
    data = ingest(tiny_config)
    tokens = tokenize(tiny_config, data)
    dd = load_tokenized(tokens.path)
    lengths = [len(ids) for ids in dd["train"]["input_ids"]]
    assert max(lengths) <= 16 and len(set(lengths)) > 1  # truncated, not padded
    full = [len(ids) for ids in ingest_texts_ids(tiny_config, data)]
    assert tokens.stats.max == max(full) and tokens.stats.p50 > 0
    assert tokens.stats.share_truncated == sum(n > 16 for n in full) / len(full)


def ingest_texts_ids(config, data):
    """Every split's texts, tokenized without truncation (what the stats describe)."""
    from sweepflow.tasks.ingest import load_ingested
    from sweepflow.tasks.tokenize import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model.name_or_path))
    texts = [t for split in load_ingested(data).values() for t in split["text"]]
    return tokenizer(texts)["input_ids"]


def test_the_console_lines_say_when_a_step_was_reused(tiny_config):
    """The data and tokens lines end with "(reused from cache)" on a cache hit only."""
    from sweepflow.tasks.ingest import describe, ingest_cached
    from sweepflow.tasks.tokenize import tokenize_cached

    first = ingest_cached(tiny_config)
    assert not first.reused and not describe(first.value, first.reused)[0].endswith(
        "(reused from cache)")
    again = ingest_cached(tiny_config)
    assert again.reused and again.value == first.value
    assert describe(again.value, again.reused)[0].endswith("(reused from cache)")
    assert not tokenize_cached(tiny_config, again.value).reused
    assert tokenize_cached(tiny_config, again.value).reused


def test_cache_hits_when_unchanged_and_misses_when_changed(tiny_config, tiny_overrides,
                                                           tiny_model_dir, tmp_path, caplog):
    data = ingest(tiny_config)
    key = tokenize_key(tiny_config, data)
    first = tokenize(tiny_config, data)
    with caplog.at_level(logging.INFO, logger="sweepflow.tasks.tokenize"):
        assert tokenize(tiny_config, data) == first
    assert "cache hit" in caplog.text
    longer = load_config(overrides=[*tiny_overrides, "tokenize.max_length=32"])
    assert tokenize_key(longer, data) != key
    # A tokenizer whose files differ (one more vocab entry) gets a different key.
    other = tmp_path / "other-tok"
    shutil.copytree(tiny_model_dir, other)
    with (other / "vocab.txt").open("a") as f:
        f.write("extraword\n")
    (other / "tokenizer.json").unlink()
    changed = load_config(overrides=[*tiny_overrides, f"model.name_or_path={other}"])
    assert tokenize_key(changed, data) != key


def test_truncation_warning(tiny_overrides, caplog):
    """Many truncated texts: a console line naming the key and what to try, every time
    (reused from cache too); and the same texts below the baseline say it is the cause."""
    from sweepflow.tasks.evaluate import Evaluation, Scores, below_baseline
    from sweepflow.tasks.tokenize import tokenize_task, truncation_warning

    from sweepflow.console import REPORT

    config = load_config(overrides=[*tiny_overrides, "tokenize.max_length=8"])
    data = ingest(config)
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=REPORT):
            tokens = tokenize_task.fn(config, data)
        assert tokens.stats.share_truncated > 0.05
        assert "are longer than tokenize.max_length=8" in caplog.text, caplog.text
    assert truncation_warning(tokenize(load_config(overrides=[
        *tiny_overrides, "tokenize.max_length=8", "tokenize.long_text=chunk",
        "tokenize.stride=2"]), data)) is None

    def scored(f1: float) -> Scores:
        return Scores(accuracy=f1, precision_macro=f1, recall_macro=f1, f1_macro=f1)

    worse = Evaluation(model=scored(0.6), baseline=scored(0.7), test_digest="x", report={})
    assert "10.0 pt below the TF-IDF baseline's 0.7000; most likely the truncated" in \
        below_baseline(worse, tokens)
    better = worse.model_copy(update={"model": scored(0.8)})
    assert below_baseline(better, tokens) is None


def test_a_damaged_cache_entry_is_rebuilt(tiny_config, caplog):
    """A truncated Arrow file fails its checksum: reported, moved aside and rebuilt."""
    from pathlib import Path

    data = ingest(tiny_config)
    first = tokenize(tiny_config, data)
    arrow = next(Path(first.path).rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="sweepflow.cache"):
        again = tokenize(tiny_config, data)
    assert "does not match its checksum" in caplog.text
    assert again == first and len(load_tokenized.__wrapped__(again.path)["train"]) > 0
    leftovers = [p.name for p in Path(first.path).parent.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_max_length_auto_is_the_training_p95_within_floor_and_cap(tiny_overrides, caplog):
    """`auto`: short texts keep the floor, long ones get their p95, up to the
    cap; the resolved length is the one tokenized, recorded and printed on the token line."""
    import numpy as np
    from sweepflow.tasks.ingest import load_ingested
    from sweepflow.tasks.tokenize import load_tokenizer, tokenize_task

    from sweepflow.config import AutoLengthConfig
    from sweepflow.console import REPORT

    auto = AutoLengthConfig(percentile=95, floor=64, cap=256)
    assert auto.pick([20] * 99 + [500]) == 64 and auto.pick([300] * 10) == 256
    assert auto.pick([100] * 20) == 100
    config = load_config(overrides=[*tiny_overrides, "tokenize.max_length=auto",
                                    "tokenize.auto.floor=8", "tokenize.auto.cap=12"])
    data = ingest(config)
    train = list(load_ingested(data)["train"]["text"])
    p95 = np.percentile([len(i) for i in load_tokenizer(config.model.name_or_path)(
        train)["input_ids"]], 95)
    with caplog.at_level(logging.INFO, logger=REPORT):
        tokens = tokenize_task.fn(config, data)
    assert tokens.max_length == min(12, max(8, int(np.ceil(p95))))
    assert max(len(i) for i in load_tokenized(tokens.path)["train"]["input_ids"]) <= \
        tokens.max_length
    assert f"truncated at {tokens.max_length} (max_length auto: p95 of the training texts " \
           "within [8, 12])" in caplog.text, caplog.text


def test_auto_floor_above_cap_is_a_config_error():
    import pytest

    from sweepflow.config import ConfigError

    with pytest.raises(ConfigError, match="tokenize.auto.floor=300 is above tokenize.auto.cap"):
        load_config(overrides=["tokenize.auto.floor=300"])
