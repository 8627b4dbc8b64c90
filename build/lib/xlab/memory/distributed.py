"""Keeping every data-parallel rank's memory identical: gather what each rank writes, in rank order.

Each rank reads different blocks, so each proposes different entries and deletions. If every
rank applied only its own, the memories would fork; instead every rank applies the union, in
rank order, so all of them add the same entries under the same ids and remove the same ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _alone() -> bool:
    """No process group of two or more: nothing to gather from or agree with."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1


def gather_rows(rows: Tensor) -> tuple[Tensor, int]:
    """Every rank's (N_r, ...) rows concatenated in rank order, and where this rank's start.
    Without an initialized process group (one process, or sampling) the rows come back as is."""
    if _alone():
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    # all_gather wants equal shapes: pad to the longest and cut each rank's part back out.
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)]), sum(counts[:rank])


def gather_equal(rows: Tensor) -> tuple[Tensor, int]:
    """`gather_rows` for rows of the same shape on every rank (fixed-size writes): one
    all_gather and no count exchanged first, so the host never waits to learn a size."""
    if _alone():
        return rows, 0
    gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, rows.contiguous())
    return torch.cat(gathered), dist.get_rank() * rows.shape[0]


def largest(count: int, device: torch.device) -> int:
    """The largest `count` over the ranks (`count` itself in one process). Waits for every rank."""
    if _alone():
        return count
    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def world_and_rank() -> tuple[int, int]:
    """(world size, rank): (1, 0) without an initialized process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def gather_objects(value: object) -> list | None:
    """Every rank's `value` in rank order (pickled across); None without a process group of two
    or more, where there is nothing to gather."""
    if _alone():
        return None
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
