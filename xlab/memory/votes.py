"""Delete votes waiting one forward pass.

The tokens that read an entry vote on deleting it from their final hidden states. A vote is
acted on one pass later; until then it weights the next pass's reads of that entry (by the
keep probability), which is how the delete decision learns from the language model loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


class PendingDeletes:
    """The voted entries' ids (sorted), the weighted mean final state of the tokens that read
    them, and the entries' vectors, all detached."""

    def __init__(self, ids: Tensor, states: Tensor, entries: Tensor):
        self.ids, self.states, self.entries = ids, states, entries

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

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> PendingDeletes:
        return PendingDeletes(self.ids.to(device), self.states.to(device), self.entries.to(device))

    def lookup(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Index into the votes for each id in `ids` (any shape) and whether it has a vote."""
        if not len(self.ids):
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        position = torch.searchsorted(self.ids, ids.contiguous()).clamp(max=len(self.ids) - 1)
        return position, self.ids[position] == ids
