"""An exact memory held in tensors on one device, changed without the host ever waiting for it.

`AssociativeMemory` keeps its truth on the host (numpy arrays and a faiss index), so every
write from a GPU waits for the device: the stored vectors must arrive before faiss can take
them. For an exact ("flat") memory nothing needs the host: a search is a matmul and a top-k, and
adds, removals, eviction and fading are all fixed-size tensor operations, whose sizes follow the
batch and the capacity and never the data. How many entries a pass stores or removes stays a
tensor on the device; nothing asks for it.

The rules are `AssociativeMemory`'s, slot for slot: ids count up and are never reused, a full
memory evicts before it adds (the lowest weight first, the oldest among equals; or the oldest),
new entries take the lowest free slots in id order, `step` ages and fades. `state_dict` and
`load_state_dict` speak its format, so a checkpoint does not know which of the two wrote it.

Each slot also carries a tag, the row of this process's batch whose open document wrote it (-1
for none): closing a row's document is then a comparison over the slots, not a list that grows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from xlab.common.errors import XLabError
from xlab.memory import indexes
from xlab.memory.associative import COUNTERS, AssociativeMemory, MemoryReadout, encode_text
from xlab.memory.device_search import DeviceFlatSearch

ADDS, REMOVES, EVICTIONS, FADED, SEARCHES = (COUNTERS.index(name) for name in
                                             ("adds", "removes", "evictions", "faded", "searches"))


class DeviceMemory:
    """A flat memory of `capacity` slots of `dim` floats on `device` (see the module docstring)."""

    index_type = "flat"
    is_trained = True

    def __init__(self, capacity: int, dim: int, metric: str, forgetfulness_factor: float, min_weight: float,
                 eviction: str, device: torch.device | str, num_search_results: int = 5) -> None:
        self.capacity, self.dim, self.metric, self.eviction = capacity, dim, metric, eviction
        self.num_search_results = num_search_results
        self.min_weight = min_weight
        self.device = torch.device(device)
        self._fade = torch.tensor(np.float32(1.0 - forgetfulness_factor), device=self.device)
        self._fades = forgetfulness_factor != 0.0
        self._search = DeviceFlatSearch(metric)
        self._counters = torch.zeros(len(COUNTERS), dtype=torch.long, device=self.device)
        self._next_id = torch.zeros((), dtype=torch.long, device=self.device)
        self._clear()

    @classmethod
    def like(cls, memory: AssociativeMemory, device: torch.device) -> DeviceMemory:
        """An empty device memory with the settings of the host one."""
        return cls(memory.capacity, memory.dim, memory.metric, memory.forgetfulness_factor, memory.min_weight,
                   memory.eviction, device, memory.num_search_results)

    # --- the slots ------------------------------------------------------------------------------
    # Every per-slot tensor has one row more than the capacity: writes that must go nowhere go
    # there, so a masked write keeps a fixed size. Searches and states see only the first rows.
    def _clear(self) -> None:
        n, device = self.capacity + 1, self.device
        self._vectors = torch.zeros(n, self.dim, device=device)
        self._ids = torch.full((n,), -1, dtype=torch.long, device=device)
        self._ages = torch.zeros(n, dtype=torch.long, device=device)
        self._weights = torch.zeros(n, device=device)
        self._tags = torch.full((n,), -1, dtype=torch.long, device=device)
        self._search.vectors, self._search.ids = self._vectors[:-1], self._ids[:-1]

    def _live(self) -> Tensor:
        return self._ids[:-1] >= 0

    def _forget(self, slots: Tensor) -> None:
        """Empty the slots where `slots` (capacity,) is True."""
        gone = torch.nn.functional.pad(slots, (0, 1))
        self._ids.masked_fill_(gone, -1)
        self._ages.masked_fill_(gone, 0)
        self._weights.masked_fill_(gone, 0.0)
        self._tags.masked_fill_(gone, -1)

    # --- the memory's operations ----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._live().sum())

    def add(self, vectors: Tensor, keep: Tensor | None = None, weights: Tensor | None = None,
            tags: Tensor | None = None) -> Tensor:
        """Store the rows of `vectors` (N, D) where `keep` (N,) is True (all without it), in
        row order; returns their ids (N,), -1 where not kept. `weights` (N,) start each entry's
        weight (1.0 without), `tags` (N,) its tag (-1 without). Evicts first when full; of more
        kept rows than the capacity only the last `capacity` get in, as in AssociativeMemory."""
        x = vectors.detach().to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise XLabError(f"vectors must have shape (N, {self.dim}), got {tuple(x.shape)}")
        N = len(x)
        keep = torch.ones(N, dtype=torch.bool, device=self.device) if keep is None else keep.to(self.device)
        ids = torch.full((N,), -1, dtype=torch.long, device=self.device)
        if not N:
            return ids.to(vectors.device)
        place = keep.long().cumsum(0)  # 1-based place among the kept rows
        n = place[-1]
        ids = torch.where(keep, self._next_id + place - 1, ids)
        self._next_id = self._next_id + n
        stored = keep & (place > n - self.capacity)
        m = n.clamp(max=self.capacity)
        overflow = (self._live().sum() + m - self.capacity).clamp(min=0)
        self._counters[ADDS] += n
        self._counters[EVICTIONS] += (n - self.capacity).clamp(min=0) + overflow
        self._forget(self._victims(overflow))
        # The r-th stored row goes to the r-th free slot, counting slots from 0; the others to the spare.
        free = torch.argsort((self._ids[:-1] >= 0).to(torch.uint8), stable=True)
        rank = (place - 1 - (n - m)).clamp(0, self.capacity - 1)
        slots = torch.where(stored, free[rank], self.capacity)
        self._vectors.index_put_((slots,), x)
        self._ids.index_put_((slots,), ids)
        self._ages.index_put_((slots,), torch.zeros_like(ids))
        w = torch.ones(N, device=self.device) if weights is None else weights.detach().to(self.device, torch.float32)
        self._weights.index_put_((slots,), w)
        t = torch.full_like(ids, -1) if tags is None else tags.to(self.device, torch.long)
        self._tags.index_put_((slots,), t)
        self._ids[-1] = -1  # the spare row never holds an entry
        return ids.to(vectors.device)

    def _victims(self, count: Tensor) -> Tensor:
        """The `count` live slots eviction picks (capacity,) bool: the lowest weights, oldest
        first among equals ("lowest_weight"), or the oldest ("oldest"). Ids are ages: they grow."""
        live = self._live()
        biggest = torch.iinfo(torch.long).max
        order = torch.argsort(torch.where(live, self._ids[:-1], biggest), stable=True)
        if self.eviction == "lowest_weight":
            weights = torch.where(live, self._weights[:-1], float("inf"))
            order = order[torch.argsort(weights[order], stable=True)]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.capacity, device=self.device)
        return live & (rank < count)

    def search(self, queries: Tensor, k: int | None = None) -> MemoryReadout:
        """The k best live entries for each query (B, D) on this device, as AssociativeMemory
        scores them; cells past the live entries hold id -1, score 0 and a zero vector."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise XLabError(f"queries must have shape (N, {self.dim}), got {tuple(queries.shape)}")
        self._counters[SEARCHES] += len(queries)
        found = self._search.search(queries.to(self.device), self.num_search_results if k is None else k)
        return MemoryReadout(*(t.to(queries.device) for t in found))

    def remove(self, ids: Tensor) -> None:
        """Delete entries by id (any shape; -1, unknown and repeated ids are ignored)."""
        wanted = torch.sort(ids.detach().to(self.device, torch.long).reshape(-1)).values
        if not len(wanted):
            return
        stored = self._ids[:-1]
        hit = _find(wanted, stored)[1] & (stored >= 0)
        self._counters[REMOVES] += hit.sum()
        self._forget(hit)

    def step(self) -> None:
        """Age every entry by one step, fade weights, drop the faded."""
        live = self._live()
        self._ages[:-1] += live
        if self._fades:
            self._weights[:-1] = torch.where(live, self._weights[:-1] * self._fade, self._weights[:-1])
        faded = live & (self._weights[:-1] < self.min_weight)
        self._counters[FADED] += faded.sum()
        self._forget(faded)

    def close_tags(self, closing: Tensor) -> Tensor:
        """Untag the entries whose tag is a row where `closing` (B,) is True; their ids
        (capacity,), -1 elsewhere. Tags of rows past the batch stay."""
        tags = self._tags[:-1]
        hit = (tags >= 0) & (tags < len(closing)) & closing[tags.clamp(0, len(closing) - 1)]
        self._tags[:-1] = torch.where(hit, -1, tags)
        return torch.where(hit, self._ids[:-1], -1)

    def reset(self) -> None:
        """Empty the memory; ids keep counting, counters too."""
        self._clear()

    def stats(self, reset: bool = False) -> dict[str, float]:
        live = self._live()
        count = live.sum().clamp(min=1).double()  # in float64, as the host's numbers are
        summary = torch.stack([live.sum().double() / self.capacity, (self._ages[:-1] * live).sum().double() / count,
                               (self._weights[:-1] * live).sum().double() / count]).tolist()
        out = dict(zip(("occupancy", "mean_age", "mean_weight"), summary), tombstones=0.0)
        out.update(zip(COUNTERS, (float(c) for c in self._counters.tolist())))
        if reset:
            self.reset_stats()
        return out

    def reset_stats(self) -> None:
        self._counters.zero_()

    # --- states in AssociativeMemory's format ---------------------------------------------------
    def _live_in_id_order(self) -> tuple[Tensor, Tensor]:
        """The live slots in id order and every slot's id, on the host (this waits for the device)."""
        ids = self._ids[:-1].cpu()
        live = torch.nonzero(ids >= 0).flatten()
        return live[torch.argsort(ids[live])], ids

    def tagged(self) -> tuple[Tensor, Tensor]:
        """The tags and ids of the tagged entries, in id order, on the host."""
        live, ids = self._live_in_id_order()
        tags = self._tags[:-1].cpu()[live]
        return tags[tags >= 0], ids[live][tags >= 0]

    def state_dict(self) -> dict[str, Tensor]:
        """AssociativeMemory's state (live entries in id order, a faiss flat index of them) plus
        `open_rows` and `open_ids`: the tagged entries' tags and ids, in id order."""
        live, ids = self._live_in_id_order()
        vectors = self._vectors[:-1].cpu()[live].contiguous()
        index = indexes.exact_index(self.dim, self.metric)
        if len(live):
            index.add_with_ids(vectors.numpy(), ids[live].numpy())
        open_rows, open_ids = self.tagged()
        return {
            "memory_size": torch.tensor(self.capacity), "memory_dim": torch.tensor(self.dim),
            "index_type": encode_text(self.index_type), "metric": encode_text(self.metric),
            "ids": ids[live], "vectors": vectors, "ages": self._ages[:-1].cpu()[live],
            "weights": self._weights[:-1].cpu()[live], "next_id": self._next_id.cpu(),
            "index": torch.from_numpy(indexes.serialize(index)), "index_trained": torch.tensor(True),
            "counters": self._counters.cpu(), "open_rows": open_rows, "open_ids": open_ids,
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load an AssociativeMemory state of a flat memory (checked by loading it into one), and
        tag the live entries named by `open_rows` and `open_ids` when it has them."""
        check = AssociativeMemory(self.capacity, self.dim, metric=self.metric, eviction=self.eviction)
        check.load_state_dict(state)  # one-line errors for states that do not fit
        self._clear()
        n = len(state["ids"])
        self._vectors[:n] = state["vectors"].to(self.device, torch.float32)
        self._ids[:n] = state["ids"].to(self.device, torch.long)
        self._ages[:n] = state["ages"].to(self.device, torch.long)
        self._weights[:n] = state["weights"].to(self.device, torch.float32)
        self._next_id = torch.as_tensor(state["next_id"]).to(self.device, torch.long).reshape(())
        self._counters = torch.as_tensor(state["counters"]).to(self.device, torch.long).clone()
        if n and len(state.get("open_ids", ())):
            open_ids, order = torch.sort(state["open_ids"].to(self.device, torch.long))
            open_rows = state["open_rows"].to(self.device, torch.long)[order]
            at, found = _find(open_ids, self._ids[:n])
            self._tags[:n] = torch.where(found, open_rows[at], -1)


def _find(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """For each of `values`, its position in the sorted, non-empty `keys` and whether it is there."""
    at = torch.searchsorted(keys, values).clamp(max=len(keys) - 1)
    return at, keys[at] == values
