"""Training loaders that a checkpoint taken mid-epoch resumes exactly.

Lightning stores a train loader's `state_dict()` in every checkpoint and hands it back on resume,
but only for loaders that have one; any other loader starts the interrupted epoch over (Lightning
warns "your dataloader is not resumable"), so the resumed run sees other batches than an
uninterrupted one. torchdata's `StatefulDataLoader` has that state and knows how many batches
reached the training loop, worker processes included.

The order within an epoch must be recomputable too: a shuffle drawn from a generator lives in a
state the resumed process lacks. `EpochShuffle` derives each epoch's order from the seed and the
epoch number alone, and carries its own position, so a resumed run skips the indices already
served without loading them.

Under DDP, Lightning would wrap a sampler in its own distributed sampler, which keeps no state:
a run resumed in a later epoch would then fast-forward through epoch 0's order. So a train loader
built inside a process group of several ranks gets `RankShuffle`, a distributed sampler (Lightning
leaves those alone) with `EpochShuffle`'s state: each rank takes its share of the epoch's order.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader


class EpochShuffle(Sampler[int]):
    """Indices 0..size-1 in an order fixed by (seed, epoch); Lightning calls `set_epoch` each epoch.

    Under DDP Lightning wraps this sampler in its distributed sampler, which shares the indices
    out among the ranks (each rank computes the same order: the seed is the run's global seed).
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch = 0
        self.served = 0  # indices of this epoch's order already handed out
        self._resume_at = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        self.served = start
        for index in self.order()[start:]:
            self.served += 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        # A checkpoint from the end of an epoch resumes at the start of the next one.
        self._resume_at = state["served"] if state["served"] < self.size else 0


class RankShuffle(DistributedSampler, EpochShuffle):
    """This rank's share of `EpochShuffle`'s order: positions rank, rank + world, ... of the order,
    padded with its first indices to a multiple of the ranks (as torch's DistributedSampler does)."""

    def __init__(self, size: int, seed: int, world: int, rank: int):
        DistributedSampler.__init__(self, range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        EpochShuffle.__init__(self, size, seed)
        self.world, self.rank = world, rank
        self.per_rank = -(-size // world)

    def __len__(self) -> int:
        return self.per_rank

    def order(self) -> list[int]:
        whole = EpochShuffle.order(self)
        whole += whole[: self.per_rank * self.world - len(whole)]
        return whole[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return EpochShuffle.__iter__(self)

    def set_epoch(self, epoch: int) -> None:
        EpochShuffle.set_epoch(self, epoch)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self._resume_at = state["served"] if state["served"] < self.per_rank else 0


def run_seed() -> int:
    """The run's global seed (`seed_everything` sets it, and Lightning's distributed sampler uses it too)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def resumable_loader(dataset: Dataset, shuffle: bool, batch_size: int | None, **kwargs: Any) -> StatefulDataLoader:
    """A train loader whose position Lightning saves and restores (see the module doc)."""
    sampler = None
    if shuffle:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        sampler = (RankShuffle(len(dataset), run_seed(), world, dist.get_rank()) if world > 1
                   else EpochShuffle(len(dataset), run_seed()))
    with warnings.catch_warnings():  # torchdata 0.11 calls a torch function that torch 2.9+ deprecates
        warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated")
        return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
