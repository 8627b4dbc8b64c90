"""The KV cache MemoryGPT2 hands the sampler: per layer, keys and values written into buffers
allocated once for the whole window, plus the entry each row leaves waiting for the token that
follows it."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values (B, H, max_len, D), written in place; attention reads the
    filled part as a view. transformers' DynamicLayer concatenates on every token, copying the
    whole cache each step; this writes one token's worth. A window longer than `max_len` grows
    the buffers rather than failing."""

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len, self.length = max_len, 0
        self._keys: Tensor | None = None
        self._values: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        B, H, _, D = key_states.shape
        self._keys = key_states.new_empty(B, H, self.max_len, D)
        self._values = value_states.new_empty(B, H, self.max_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._grow(end)
        self._keys[:, :, self.length: end] = key_states
        self._values[:, :, self.length: end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def _grow(self, length: int) -> None:
        grown = [buffer.new_empty(*buffer.shape[:2], length, buffer.shape[-1]) for buffer in (self._keys, self._values)]
        for new, old in zip(grown, (self._keys, self._values)):
            new[:, :, : self.length] = old[:, :, : self.length]
        self._keys, self._values = grown

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        """Empty again; the buffers stay for the next window."""
        self.length = 0
        self.keys = self.values = None

    def reorder_cache(self, beam_idx: Tensor) -> None:
        if self.length:
            index = beam_idx.to(self._keys.device)
            for buffer in (self._keys, self._values):
                buffer[:, :, : self.length] = buffer[:, :, : self.length].index_select(0, index)
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]


class MemoryCache:
    """KV cache for sampling: a transformers Cache of preallocated layers plus what memory
    writes need.

    `carry` is each row's last entry, waiting for the token that follows it. After `reset()` of
    a non-empty cache the sampler re-runs a slid window whose tokens were all written before
    except the last one, so that pass completes only the waiting entry.
    """

    def __init__(self, config, batch_size: int, max_len: int, device: torch.device):
        self.config, self.batch_size, self.max_len = config, batch_size, max_len
        self.layers = Cache(layers=[PreallocatedLayer(max_len) for _ in range(config.n_layer)])
        self.carry: Tensor | None = None
        self.replaying = False

    @property
    def length(self) -> int:
        return self.layers.get_seq_length()

    def take_carry(self, rows: int) -> Tensor | None:
        carry, self.carry = self.carry, None
        return carry if carry is not None and len(carry) == rows else None

    def keep_carry(self, entries: Tensor) -> None:
        self.carry = entries

    def reset(self) -> None:
        self.replaying = self.length > 0
        self.layers.reset()

    def reorder(self, index: Tensor) -> None:
        self.layers.reorder_cache(index)
        if self.carry is not None:
            self.carry = self.carry.index_select(0, index.to(self.carry.device))
