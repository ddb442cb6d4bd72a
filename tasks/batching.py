"""Batching: which training rows go into one batch, and in what order the batches come.

Batches are padded to their own longest text, so rows of like length in one batch save
padding; but a batch order sorted by length is not a random order, and SGD pays for that in
quality. Three ways (`train.batching`):

- `shuffle` (conf/base.yaml): a random permutation per epoch (no padding saved; what HF
  Trainer does by default).
- `bucketed`: randomised bucketing. Each epoch: a random permutation, cut into "mega-batches"
  of `train.bucket_batches` batches, each sorted by length and cut into batches, and the
  batches shuffled. A batch is like-length rows drawn from a random few hundred rows, so batch
  order and batch contents stay random while most of the padding goes (docs/performance.md).
- `grouped`: transformers' `LengthGroupedSampler` (mega-batches of 50 batches sorted by length,
  the longest batch first): least padding, but on the bundled tweets it cost 2 points of
  macro-F1 at one epoch (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from sweepflow.config import TrainConfig


class EpochPermutation(Sampler[int]):
    """A random permutation of range(n) per epoch, from `seed` and the epoch number."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, stream: int = 0) -> torch.Generator:
        """Stream 0 draws the permutation; others are free for the user of the epoch."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 2 + stream)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator()).tolist())


class BucketedBatchSampler(Sampler[list[int]]):
    """Randomised bucketing: yields lists of row indices, random per epoch from `seed`.

    Like torch's BatchSampler it draws from `.sampler`, whose `set_epoch` Lightning calls at
    each epoch start (it looks there, not at the batch sampler), so epochs differ.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int,
                 mega_batches: int) -> None:
        if batch_size < 1 or mega_batches < 1:
            raise ValueError("batch_size and mega_batches must be at least 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.chunk = batch_size * mega_batches
        self.sampler = EpochPermutation(len(self.lengths), seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        order = list(self.sampler)
        out: list[list[int]] = []
        for start in range(0, len(order), self.chunk):
            # Stable sort: rows of equal length keep the permutation's random order.
            chunk = sorted(order[start:start + self.chunk], key=self.lengths.__getitem__)
            out += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        shuffle = torch.randperm(len(out), generator=self.sampler.generator(1))
        return [out[i] for i in shuffle.tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


def train_batches(lengths: Sequence[int], cfg: TrainConfig, seed: int) -> dict[str, Any]:
    """DataLoader arguments that draw training batches as `cfg.batching` says, random per
    epoch from `seed` (sweepflow's trainer and the bench's bare script both use them)."""
    if cfg.batching == "bucketed":
        return {"batch_sampler": BucketedBatchSampler(lengths, cfg.batch_size, seed,
                                                      cfg.bucket_batches)}
    gen = torch.Generator().manual_seed(seed)
    if cfg.batching == "grouped":
        return {"batch_size": cfg.batch_size, "sampler": LengthGroupedSampler(
            cfg.batch_size, lengths=list(lengths), generator=gen)}
    return {"batch_size": cfg.batch_size, "shuffle": True, "generator": gen}


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the padded tokens that are padding, when each batch pads to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - real / padded if padded else 0.0
