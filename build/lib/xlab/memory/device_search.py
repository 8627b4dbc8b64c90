"""Exact search on the device the queries live on: one matmul and a top-k over a device copy.

On a GPU, handing probes to a host faiss index and the retrieved vectors back costs two
transfers and a wait for the device on every forward pass; a flat index is a matmul, which the
GPU does faster than the round trip. The host arrays stay the memory's truth (what is saved,
evicted and aged); this copy mirrors their slots and is updated in place as entries come and go.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


# Most scores computed at once (queries x stored entries): 512 MiB of float32.
SCORE_CELLS = 2**27


class DeviceFlatSearch:
    """A copy of the memory's slots (vectors and ids, -1 where empty) on one device."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.vectors: Tensor | None = None  # (capacity, D)
        self.ids: Tensor | None = None  # (capacity,) int64, -1 at empty slots

    def ready_for(self, device: torch.device) -> bool:
        return self.vectors is not None and self.vectors.device == device

    def load(self, vectors: np.ndarray, slot_ids: np.ndarray, device: torch.device) -> None:
        """Copy every slot to `device` (on first use, and after the memory was rebuilt). A copy
        on the CPU too: a tensor of torch's own allocation, so BLAS, whose rounding can follow
        the alignment of its operands, scores exactly as over a DeviceMemory's slots."""
        self.vectors = torch.tensor(vectors, device=device)
        self.ids = torch.tensor(slot_ids, device=device)

    def drop(self) -> None:
        self.vectors = self.ids = None

    def write(self, slots: np.ndarray, vectors: Tensor, ids: np.ndarray) -> None:
        """New entries `ids` in `slots`, their vectors taken from wherever the caller had them."""
        if self.vectors is None:
            return
        where = torch.from_numpy(slots).to(self.vectors.device)
        self.vectors[where] = vectors.detach().to(self.vectors.device, torch.float32)
        self.ids[where] = torch.from_numpy(ids).to(self.vectors.device)

    def clear(self, slots: np.ndarray) -> None:
        if self.vectors is not None:
            self.ids[torch.from_numpy(slots).to(self.ids.device)] = -1

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(vectors (B, k, D), scores (B, k), ids (B, k), valid (B, k)) of the k best live slots,
        as faiss scores them: inner products, or squared L2 distances (smallest first)."""
        q = queries.detach().float()
        # A block of queries at a time, so the (queries x capacity) scores stay within SCORE_CELLS.
        step = max(1, SCORE_CELLS // self.vectors.shape[0])
        parts = [self._search(q[start: start + step], k) for start in range(0, len(q), step)]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(columns) for columns in zip(*parts))

    def _search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        similarity = q @ self.vectors.T  # (B, capacity)
        if self.metric == "l2":  # rank by -|q - v|^2 = 2 q.v - |v|^2 - |q|^2
            similarity = 2 * similarity - self.vectors.square().sum(1) - q.square().sum(1, keepdim=True)
        similarity = similarity.masked_fill(self.ids < 0, float("-inf"))
        best, slots = similarity.topk(min(k, similarity.shape[1]), dim=1)
        valid = best > float("-inf")
        ids = torch.where(valid, self.ids[slots], -1)
        scores = torch.where(valid, -best if self.metric == "l2" else best, 0.0)
        vectors = torch.where(valid[..., None], self.vectors[slots], 0.0)
        if slots.shape[1] < k:  # a memory smaller than k: pad as the host path does
            pad = k - slots.shape[1]
            vectors = torch.nn.functional.pad(vectors, (0, 0, 0, pad))
            scores, ids = torch.nn.functional.pad(scores, (0, pad)), torch.nn.functional.pad(ids, (0, pad), value=-1)
            valid = torch.nn.functional.pad(valid, (0, pad))
        return vectors, scores, ids, valid
