"""Training batch order (tasks/batching.py): every row once per epoch, like lengths in a
batch, a new random order each epoch that Lightning really asks for, and the config's choice
reaching the train loader."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import pytest
import torch
from sweepflow.tasks.batching import (
    BucketedBatchSampler,
    MicroBatchCollator,
    micro_batch_cuts,
    padding_share,
)
from torch.utils.data import DataLoader, Dataset


def lengths(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 64) for _ in range(n)]


def test_each_epoch_holds_every_row_once_in_full_batches():
    sampler = BucketedBatchSampler(lengths(1000), batch_size=32, seed=1, mega_batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert sorted(len(b) for b in batches)[1:] == [32] * 31  # one short batch at most


def test_batches_hold_like_lengths_in_a_random_order():
    lens = lengths(3200)
    bucketed = list(BucketedBatchSampler(lens, 32, seed=3, mega_batches=50))
    perm = torch.randperm(len(lens), generator=torch.Generator().manual_seed(3)).tolist()
    shuffled = [perm[i:i + 32] for i in range(0, len(perm), 32)]
    assert padding_share(bucketed, lens) < padding_share(shuffled, lens) / 4
    longest = [max(lens[i] for i in b) for b in bucketed]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_epochs_differ_and_a_seed_repeats():
    lens = lengths(500)
    a, b = (BucketedBatchSampler(lens, 16, seed=5, mega_batches=8) for _ in range(2))
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    assert list(BucketedBatchSampler(lens, 16, seed=6, mega_batches=8)) != first


def test_the_defaults_are_the_configs():
    """No second source of defaults: the trainer takes batching from conf/base.yaml."""
    import inspect

    from sweepflow.tasks import batching
    from sweepflow.tasks.train import train_loader

    from sweepflow.config import load_config

    train = load_config().train
    assert (train.batching, train.bucket_batches) == ("shuffle", 8)  # as README documents
    for fn in (batching.BucketedBatchSampler, batching.train_batches, train_loader):
        params = inspect.signature(fn).parameters.values()
        assert all(p.default is inspect.Parameter.empty for p in params), fn


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size and mega_batches"):
        BucketedBatchSampler([3, 4], batch_size=0, seed=0, mega_batches=8)


class Numbers(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)])


class Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch: torch.Tensor, _: int) -> torch.Tensor:
        self.seen.append(batch[:, 0].long().tolist())
        return self.layer(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_draws_a_new_order_each_epoch():
    n = 64
    sampler = BucketedBatchSampler(lengths(n), batch_size=8, seed=2, mega_batches=2)
    module = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, DataLoader(Numbers(n), batch_sampler=sampler))
    first, second = module.seen[:8], module.seen[8:]
    assert len(second) == 8 and first != second
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(n))
    assert first == BucketedBatchSampler(lengths(n), 8, seed=2, mega_batches=2).batches()


@pytest.mark.parametrize("batching", ["shuffle", "bucketed", "grouped"])
def test_the_configured_batching_feeds_the_train_loader(tiny_config, batching):
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize
    from sweepflow.tasks.train import load_rows, train_loader

    tokens = tokenize(tiny_config, ingest(tiny_config))
    rows = load_rows(tokens.path)["train"]
    cfg = tiny_config.train.model_copy(update={"batch_size": 8, "batching": batching})
    loader = train_loader(rows, tokens, cfg, seed=0)
    ids = [row for batch in loader for piece in (batch if isinstance(batch, list) else [batch])
           for row in piece["input_ids"].tolist()]
    assert len(ids) == len(rows)
    assert isinstance(loader.batch_sampler, BucketedBatchSampler) == (batching == "bucketed")


def test_bucket_batches_sets_the_chunk_of_the_bucketed_sampler(tiny_config):
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize
    from sweepflow.tasks.train import load_rows, train_loader

    tokens = tokenize(tiny_config, ingest(tiny_config))
    rows = load_rows(tokens.path)["train"]
    cfg = tiny_config.train.model_copy(update={"batch_size": 4, "batching": "bucketed",
                                               "bucket_batches": 3})
    loader = train_loader(rows, tokens, cfg, seed=0)
    assert loader.batch_sampler.chunk == 4 * 3


def test_micro_batch_cuts_save_padding_within_the_piece_limit():
    assert micro_batch_cuts([12] * 32, 4) == [32]  # like lengths: nothing to save
    two_sizes = [8] * 16 + [64] * 16
    assert micro_batch_cuts(two_sizes, 4) == [16, 32]
    assert micro_batch_cuts(two_sizes, 1) == [32]
    for seed in range(20):
        lens = sorted(lengths(32, seed))
        cuts = micro_batch_cuts(lens, 4)
        assert 1 <= len(cuts) <= 4 and cuts[-1] == 32 and cuts == sorted(set(cuts))
        padded = sum((b - a) * lens[b - 1] for a, b in zip([0, *cuts[:-1]], cuts, strict=True))
        assert padded <= 32 * lens[-1]


def test_micro_batches_give_the_whole_batch_loss_and_gradient(tiny_config):
    """The optimizer sees what one padded batch of the same rows would give it."""
    from sweepflow.tasks.ingest import ingest
    from sweepflow.tasks.tokenize import tokenize
    from sweepflow.tasks.train import TextClassifier, _collate, load_rows

    tokens = tokenize(tiny_config, ingest(tiny_config))
    rows = load_rows(tokens.path)["train"]
    module = TextClassifier(tokens.model_path, list(tokens.data.label_names), tiny_config.train)
    module.model.eval()  # no dropout: the two must agree to rounding
    features = [rows[i] for i in range(32)]
    whole = _collate(tokens)(features)
    pieces = MicroBatchCollator(_collate(tokens), 4, piece_cost=1)(features)  # short texts
    assert isinstance(pieces, list) and len(pieces) > 1
    assert sum(len(p["labels"]) for p in pieces) == 32
    assert sum(p["input_ids"].numel() for p in pieces) < whole["input_ids"].numel()
    results = []
    for batch in (whole, pieces):
        module.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.parameters()
                                         if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
