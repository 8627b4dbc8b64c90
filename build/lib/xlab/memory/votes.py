"""Delete votes waiting one forward pass.

The tokens that read an entry vote on deleting it from their final hidden states. A vote is
acted on one pass later; until then it weights the next pass's reads of that entry (by the
keep probability), which is how the delete decision learns from the language model loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The id of a padding vote in fixed-size votes: above every real id, so the ids stay sorted.
PAD = torch.iinfo(torch.long).max


class PendingDeletes:
    """The voted entries' ids (sorted), the weighted mean final state of the tokens that read
    them, and the entries' vectors, all detached."""

    def __init__(self, ids: Tensor, states: Tensor, entries: Tensor, fixed: bool = False):
        self.ids, self.states, self.entries = ids, states, entries
        self.fixed = fixed  # sized by the batch that cast them (`from_reads_fixed`), not by the data

    @classmethod
    def from_reads(cls, ids: Tensor, weights: Tensor, valid: Tensor, entries: Tensor, hidden: Tensor,
                   threshold: float) -> PendingDeletes | None:
        """Per entry that was read (ids (B, T, k), the weight each token gave it (B, T, k), their
        vectors (B, T, k, D)): the final states (B, T, C) of the tokens that read it, averaged
        with those weights. Entries given less than `threshold` by every token get no vote, so
        the decision is about entries the model actually used. None when nothing was read."""
        weights = weights.detach() * valid
        read = weights > threshold
        where = read.nonzero()  # (V, 3): b, t, slot
        if not len(where):
            return None
        unique, inverse = torch.unique(ids[read], return_inverse=True)  # sorted, as `lookup` wants
        w = weights[read].to(hidden.dtype)[:, None]
        states = hidden.new_zeros(len(unique), hidden.shape[-1]).index_add_(0, inverse, w * hidden[where[:, 0], where[:, 1]])
        total = hidden.new_zeros(len(unique), 1).index_add_(0, inverse, w)
        vectors = entries.new_zeros(len(unique), entries.shape[-1])
        vectors[inverse] = entries[read].detach()
        return cls(unique, states / total, vectors)

    @classmethod
    def from_reads_fixed(cls, ids: Tensor, weights: Tensor, valid: Tensor, entries: Tensor, hidden: Tensor,
                         threshold: float) -> PendingDeletes:
        """`from_reads` in fixed sizes, for a memory on a device the host must not wait for: one
        vote per read cell (B * T * k), the real ones first in id order, the rest padding (id
        PAD, zero state and vector; `real` tells them apart). Each entry's readers are summed in
        the order `from_reads` sums them (row-major), so on a CPU the states are the same."""
        B, T, k = ids.shape
        cells = B * T * k
        weights = (weights.detach() * valid).reshape(cells)
        key, order = torch.sort(torch.where(weights > threshold, ids.reshape(cells), PAD), stable=True)
        real = key < PAD
        first = torch.ones_like(real)
        first[1:] = key[1:] != key[:-1]
        group = torch.where(real, (first & real).long().cumsum(0) - 1, cells)  # padding to a spare row
        unique = torch.full((cells + 1,), PAD, dtype=key.dtype, device=key.device).index_put_((group,), key)
        w = weights[order].to(hidden.dtype)[:, None]
        readers = hidden.reshape(B * T, -1)[order // k]
        states = hidden.new_zeros(cells + 1, hidden.shape[-1]).index_add_(0, group, w * readers)
        total = hidden.new_zeros(cells + 1, 1).index_add_(0, group, w)
        vectors = entries.new_zeros(cells + 1, entries.shape[-1])
        vectors[group] = entries.detach().reshape(cells, -1)[order]
        states = torch.where(total > 0, states / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)
        return cls(unique[:cells], states[:cells], vectors[:cells], fixed=True)

    def padded(self, size: int) -> PendingDeletes:
        """These votes padded to `size` (fixed-size from here on)."""
        extra = size - len(self.ids)
        pad = torch.full((extra,), PAD, dtype=self.ids.dtype, device=self.ids.device)  # F.pad's value is a float
        return PendingDeletes(torch.cat([self.ids, pad]),
                              torch.nn.functional.pad(self.states, (0, 0, 0, extra)),
                              torch.nn.functional.pad(self.entries, (0, 0, 0, extra)), fixed=True)

    @property
    def real(self) -> Tensor:
        """Which votes are real (all of them, unless they are fixed-size)."""
        return self.ids < PAD

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> PendingDeletes:
        return PendingDeletes(self.ids.to(device), self.states.to(device), self.entries.to(device), self.fixed)

    def lookup(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Index into the votes for each id in `ids` (any shape) and whether it has a vote."""
        if not len(self.ids):
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        position = torch.searchsorted(self.ids, ids.contiguous()).clamp(max=len(self.ids) - 1)
        return position, self.ids[position] == ids
