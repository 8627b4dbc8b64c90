"""A searchable copy of the memory's CPU faiss index, kept in step with it: on a GPU, a faiss GPU index.

The CPU index stays the one that is mutated and saved. Adds reach the copy in place. faiss GPU
indexes cannot remove entries, and copying the whole index over again after every removal would
cost a transfer per training step (a model that deletes entries removes some on most passes), so
removed entries stay in the copy as tombstones: the memory over-fetches and drops them, as it does
for CPU indexes that cannot remove. Once they exceed the memory's tombstone fraction of the copy,
the copy is dropped and the next search makes it afresh. Training or rebuilding the CPU index
drops it too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import faiss
import numpy as np

from xlab.common.errors import last_line
from xlab.memory.indexes import GPU_MAX_K, gpu_available


class IndexCopy:
    """A copy made by `make(index)` (None: it cannot be made, search the index itself)."""

    def __init__(self, make: Callable[[faiss.Index], faiss.Index | None]) -> None:
        self._make = make
        self._copy: faiss.Index | None = None

    def invalidate(self) -> None:
        self._copy = None

    def added(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """The CPU index gained these entries: add them to the copy in place."""
        if self._copy is None:
            return
        try:
            self._copy.add_with_ids(vectors, ids)
        except (RuntimeError, AttributeError):
            self._copy = None

    def removed(self, live: int, tombstone_fraction: float) -> None:
        """Entries left the CPU index, which now holds `live`: the copy keeps them as tombstones
        until they exceed `tombstone_fraction` of it."""
        if self._copy is not None and self._copy.ntotal - live > tombstone_fraction * self._copy.ntotal:
            self._copy = None

    def total(self, index: faiss.Index) -> int:
        """How many entries (live or tombstones) a search goes through: the copy's, or the
        index's when there is no copy yet (the next search copies it as it is)."""
        return index.ntotal if self._copy is None else self._copy.ntotal

    def search(self, index: faiss.Index, queries: np.ndarray, k: int):
        if self._copy is None:
            self._copy = self._make(index)
        return (index if self._copy is None else self._copy).search(queries, k)


class GpuSearcher(IndexCopy):
    """Searches on a faiss GPU copy of the CPU index when faiss sees a GPU (and `device`
    allows it), else on the CPU index itself."""

    def __init__(self, device: str) -> None:
        super().__init__(self._to_gpu)
        self.enabled = device != "cpu" and gpu_available()
        if device == "cuda" and not self.enabled:
            warnings.warn("device='cuda' but faiss sees no GPU; the memory index runs on the CPU")
        self._resources = None

    def search(self, index: faiss.Index, queries: np.ndarray, k: int):
        if self.enabled and k <= GPU_MAX_K and gpu_available():
            return super().search(index, queries, k)
        return index.search(queries, k)

    def _to_gpu(self, index: faiss.Index) -> faiss.Index | None:
        try:
            if self._resources is None:
                self._resources = faiss.StandardGpuResources()
            copy = faiss.index_cpu_to_gpu(self._resources, 0, index)
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                # Set explicitly: not every faiss version's cloner carries nprobe over.
                faiss.GpuParameterSpace().set_index_parameter(copy, "nprobe", ivf.nprobe)
            return copy
        except (RuntimeError, AttributeError) as error:
            warnings.warn(f"faiss cannot put this index on the GPU, searching on the CPU: {last_line(error)}")
            self.enabled = False
            return None
