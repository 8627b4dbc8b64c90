"""The KV cache MemoryGPT2 hands the sampler: transformers' DynamicCache plus the entry each row
leaves waiting for the token that follows it."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache


class MemoryCache:
    """KV cache for sampling: transformers' DynamicCache plus what memory writes need.

    `carry` is each row's last entry, waiting for the token that follows it. After `reset()` of
    a non-empty cache the sampler re-runs a slid window whose tokens were all written before
    except the last one, so that pass completes only the waiting entry.
    """

    def __init__(self, config, batch_size: int, max_len: int, device: torch.device):
        self.config, self.batch_size, self.max_len = config, batch_size, max_len
        self.layers = DynamicCache(config=config)
        self.carry: Tensor | None = None
        self.replaying = False

    @property
    def length(self) -> int:
        return self.layers.get_seq_length()

    def take_carry(self, rows: int) -> Tensor | None:
        carry, self.carry = self.carry, None
        return carry if carry is not None and len(carry) == rows else None

    def reset(self) -> None:
        self.replaying = self.length > 0
        self.layers = DynamicCache(config=self.config)

    def reorder(self, index: Tensor) -> None:
        self.layers.reorder_cache(index)
        if self.carry is not None:
            self.carry = self.carry.index_select(0, index.to(self.carry.device))
