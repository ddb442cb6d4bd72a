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

Whatever the order, a batch can also run as a few **micro-batches** (`train.micro_batches`):
its rows sorted by length and cut where that saves the most padding, each piece padded to its
own longest row, the losses weighted by rows and summed before one backward. The optimizer
sees the gradient of the same rows as one padded batch (only dropout masks are drawn
differently), so it saves work without changing what is learned (docs/performance.md
"Micro-batches").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
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


# The fixed cost of one forward + backward of MiniLM on a CPU, in tokens of work: a 1-row
# batch took 99 ms, a token of a 32 x 64 batch 0.87 ms (2-core AMD EPYC, fp32).
PIECE_COST_TOKENS = 128


def micro_batch_cuts(lengths: Sequence[int], max_pieces: int,
                     piece_cost: int = PIECE_COST_TOKENS) -> list[int]:
    """Where to cut rows sorted by length (ascending) into at most `max_pieces` pieces so that
    the padded tokens plus `piece_cost` per piece are fewest: the end index of each piece."""
    n = len(lengths)
    if max_pieces <= 1 or n <= 1:
        return [n]
    ends = np.arange(n + 1)
    # piece[i, j]: the cost of rows [i, j) as one piece, padded to lengths[j - 1] (i < j).
    longest = np.concatenate(([0.0], np.asarray(lengths, dtype=np.float64)))
    piece = (ends[None, :] - ends[:, None]) * longest[None, :] + piece_cost
    piece[ends[:, None] >= ends[None, :]] = np.inf
    best = np.full(n + 1, np.inf)  # least cost of the first j rows in k pieces
    best[0] = 0.0
    backs, totals = [], []
    for _ in range(max_pieces):  # k = 1, 2, ...: O(pieces x rows^2) in numpy
        total = best[:, None] + piece
        back = total.argmin(axis=0)
        best = total[back, ends]
        backs.append(back)
        totals.append(best[n])
    k = int(np.argmin(totals)) + 1  # the first of equal costs: fewer pieces
    cuts, j = [], n
    while k:
        cuts.append(j)
        j, k = int(backs[k - 1][j]), k - 1
    return cuts[::-1]


class MicroBatchCollator:
    """Collates a batch as length-sorted micro-batches (a list of padded batches) when
    cutting saves work, else as one padded batch."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], Any], max_pieces: int,
                 piece_cost: int = PIECE_COST_TOKENS) -> None:
        self.collate, self.max_pieces, self.piece_cost = collate, max_pieces, piece_cost

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        rows = [features[i] for i in order]
        cuts = micro_batch_cuts([len(f["input_ids"]) for f in rows], self.max_pieces,
                                self.piece_cost)
        if len(cuts) == 1:
            return self.collate(features)
        return [self.collate(rows[a:b]) for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]


def micro_batches(setting: int | str) -> int:
    """`train.micro_batches` as a piece count: auto = 4 on a CPU, 1 (whole batches) on a GPU,
    whose wide kernels lose more to small pieces than padding costs them."""
    if setting == "auto":
        return 1 if torch.cuda.is_available() else 4
    return int(setting)


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the padded tokens that are padding, when each batch pads to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - real / padded if padded else 0.0
