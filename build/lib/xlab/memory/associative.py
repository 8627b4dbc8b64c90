"""A fixed-capacity associative memory: vectors in, nearest stored vectors out.

The model searches it with learned queries, reads the stored vectors, then writes new vectors
and deletes read ones. faiss only *selects* entries; the vectors come back as plain tensors so
the caller can score them differentiably against its own queries.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from xlab.common.errors import XLabError
from xlab.memory import indexes
from xlab.memory.checks import check_choice, check_float, check_int
from xlab.memory.device_search import DeviceFlatSearch
from xlab.memory.index_copy import GpuSearcher
from xlab.memory.selection import GatherBuffer, padded, select, select_skipping_tombstones

EVICTIONS = ("lowest_weight", "oldest")
DEVICES = ("auto", "cpu", "cuda")
# Devices whose queries are answered where they live (see the class docstring); a CPU query
# goes to faiss, which searches the host arrays faster than torch does.
SEARCH_ON_DEVICE_TYPES = frozenset({"cuda"})
COUNTERS = ("adds", "removes", "evictions", "faded", "searches")
STATE_KEYS = (
    "memory_size", "memory_dim", "index_type", "metric", "ids", "vectors", "ages", "weights",
    "next_id", "index", "index_trained", "counters",
)


class MemoryReadout(NamedTuple):
    """Top-k entries per query. Invalid cells (fewer than k entries found) hold id -1, score 0
    and a zero vector, so they are safe in arithmetic; `mask` is the authority on validity."""

    vectors: torch.Tensor  # (B, k, D) float32
    scores: torch.Tensor  # (B, k) inner product ("ip") or squared L2 distance ("l2")
    ids: torch.Tensor  # (B, k) int64
    mask: torch.Tensor  # (B, k) bool


class AssociativeMemory:
    """Stores up to `memory_size` vectors under stable int64 ids and finds the nearest ones.

    Index types:
      * "flat": exact search (IndexFlat in an IndexIDMap).
      * "ivf": IndexIVFFlat with `num_clusters` lists, `nprobe` probed. It is trained once, on
        the real stored vectors, as soon as `train_multiple * num_clusters` vectors are stored
        (capped by `memory_size`, so a full memory always trains). Until then searches are
        exact (a flat index stands in). Centroids are never retrained afterwards; `reset()`
        returns to the untrained state.
      * "hnsw": IndexHNSWFlat with `hnsw_m` links and `hnsw_ef_search`. faiss cannot delete
        from HNSW, so removed and evicted entries become tombstones: they stay in the graph,
        searches over-fetch (2k, doubling for rows still short) and drop them, and the graph is
        rebuilt from the live vectors once tombstones exceed `tombstone_fraction` of it.
      * anything else is a faiss index_factory string, trained like "ivf" when it needs
        training (per IVF list, or per PQ centroid if it has no IVF) and tombstoned like
        "hnsw" when faiss cannot remove from it.

    Ids grow monotonically and are never reused, not even after `reset()`. When full, `add`
    evicts existing entries first (new vectors always get in): "lowest_weight" drops the
    lowest weights, oldest first among ties; "oldest" drops in insertion order. Each `step()`
    ages every entry and multiplies its weight (1.0 at insertion unless given) by
    `1 - forgetfulness_factor`; entries below `min_weight` are dropped.

    Queries on a GPU (with `device` "auto" or "cuda") are answered there: an exact index
    (flat, or the stand-in before training) as a matmul and top-k over a device copy of the
    stored vectors, updated in place by adds and removals, so nothing crosses to the host;
    other indexes through a faiss GPU copy when faiss sees a GPU, which adds update in place
    and removals leave tombstones in (faiss GPU indexes cannot remove; see `index_copy`). The
    host arrays and the CPU index stay the ones that are aged, evicted and saved.
    """

    def __init__(
        self,
        memory_size: int,
        memory_dim: int,
        index_type: str = "flat",
        num_search_results: int = 5,
        forgetfulness_factor: float = 0.0,
        min_weight: float = 0.01,
        metric: str = "ip",
        eviction: str = "lowest_weight",
        num_clusters: int = 64,
        nprobe: int = 8,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 64,
        tombstone_fraction: float = 0.25,
        train_multiple: int = indexes.POINTS_PER_CENTROID,
        device: str = "auto",
    ) -> None:
        self.capacity = check_int("memory_size", memory_size, 1)
        self.dim = check_int("memory_dim", memory_dim, 1)
        self.num_search_results = check_int("num_search_results", num_search_results, 1)
        self.forgetfulness_factor = check_float("forgetfulness_factor", forgetfulness_factor)
        if not 0.0 <= self.forgetfulness_factor < 1.0:
            raise XLabError(f"forgetfulness_factor must be in [0, 1), got {forgetfulness_factor}")
        self.min_weight = check_float("min_weight", min_weight)
        if self.min_weight < 0.0:
            raise XLabError(f"min_weight must be >= 0, got {min_weight}")
        self.tombstone_fraction = check_float("tombstone_fraction", tombstone_fraction)
        if not 0.0 < self.tombstone_fraction <= 1.0:
            raise XLabError(f"tombstone_fraction must be in (0, 1], got {tombstone_fraction}")
        self.metric = check_choice("metric", metric, tuple(indexes.METRICS))
        self.eviction = check_choice("eviction", eviction, EVICTIONS)
        if not isinstance(index_type, str) or not index_type.strip():
            raise XLabError(f"index_type must be a non-empty string, got {index_type!r}")
        self.index_type = index_type.strip()
        self._index_args = dict(
            dim=self.dim, metric=self.metric, capacity=self.capacity,
            num_clusters=check_int("num_clusters", num_clusters, 1),
            nprobe=check_int("nprobe", nprobe, 1),
            hnsw_m=check_int("hnsw_m", hnsw_m, 1),
            hnsw_ef_search=check_int("hnsw_ef_search", hnsw_ef_search, 1),
        )
        self._train_multiple = check_int("train_multiple", train_multiple, 1)
        self.device = check_choice("device", device, DEVICES)
        self._gpu = GpuSearcher(self.device)
        self._device_copy = DeviceFlatSearch(self.metric)
        self._gathered = GatherBuffer(self.dim)
        self._next_id = 0
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._clear()

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self._live_ids)

    def __repr__(self) -> str:
        return (
            f"AssociativeMemory({len(self)}/{self.capacity} x {self.dim}, "
            f"index_type={self.index_type!r}, metric={self.metric!r}, trained={self.is_trained})"
        )

    @property
    def index(self):
        """The faiss index searched right now (the exact stand-in until a trainable trains)."""
        return self._index

    @property
    def is_trained(self) -> bool:
        """False while a trainable index waits for enough stored vectors."""
        return self._pending is None

    def add(self, vectors: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Store `vectors` (N, D); returns their new ids (N,). Evicts first when full; if N
        exceeds the capacity only the last `memory_size` vectors are kept."""
        x = self._as_matrix(vectors, "vectors")
        if not np.isfinite(x).all():
            raise XLabError("vectors to add contain NaN or inf")
        w = self._initial_weights(weights, len(x))
        ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        self._next_id += len(x)
        self._counters["adds"] += len(x)
        if len(x) > self.capacity:
            self._counters["evictions"] += len(x) - self.capacity
            x, w, new_ids = x[-self.capacity :], w[-self.capacity :], ids[-self.capacity :]
        else:
            new_ids = ids
        overflow = len(self) + len(new_ids) - self.capacity
        if overflow > 0:
            self._forget(self._eviction_victims(overflow))
            self._counters["evictions"] += overflow
        if len(new_ids):
            slots = np.flatnonzero(self._slot_ids < 0)[: len(new_ids)]
            if not len(self):  # an empty memory fills slots 0.. in id order
                self._offset = int(new_ids[0])
            elif self._offset is not None and new_ids[0] - self._offset != slots[0]:
                self._offset = None
            self._vectors[slots] = x
            self._slot_ids[slots] = new_ids
            self._ages[slots] = 0
            self._weights[slots] = w
            # New ids exceed every stored id, so appending keeps `_live_ids` sorted.
            self._live_ids = np.concatenate([self._live_ids, new_ids])
            self._live_slots = np.concatenate([self._live_slots, slots])
            self._insert(x, new_ids)
            self._device_copy.write(slots, torch.as_tensor(vectors)[-len(new_ids):], new_ids)
            self._train_when_ready()
        return torch.from_numpy(ids).to(_device_of(vectors))

    def search(self, queries: torch.Tensor, k: int | None = None) -> MemoryReadout:
        """The k nearest stored entries for each query (B, D), best first."""
        k = self.num_search_results if k is None else check_int("k", k, 1)
        if self._on_device(queries):
            self._check_shape(queries, "queries")
            self._counters["searches"] += len(queries)
            if not self._device_copy.ready_for(queries.device):
                self._device_copy.load(self._vectors, self._slot_ids, queries.device)
            return MemoryReadout(*self._device_copy.search(queries, k))
        q = self._as_matrix(queries, "queries")
        self._counters["searches"] += len(q)
        labels, scores, slots, valid = self._select(q, k)
        vectors = self._gathered.take(self._vectors, slots)
        if not valid.all():
            invalid = ~valid
            vectors[invalid] = 0.0
            scores[invalid] = 0.0
            labels[invalid] = -1
        device = _device_of(queries)
        return MemoryReadout(
            vectors=torch.from_numpy(vectors).to(device),
            scores=torch.from_numpy(scores).to(device),
            ids=torch.from_numpy(labels).to(device),
            mask=torch.from_numpy(valid).to(device),
        )

    def remove(self, ids: torch.Tensor) -> int:
        """Delete entries by id (any shape; -1 and unknown ids are ignored); returns how many."""
        wanted = torch.as_tensor(ids).detach().to("cpu", torch.int64).reshape(-1).numpy()
        wanted = np.unique(wanted[wanted >= 0])
        if not len(wanted) or not len(self):
            return 0
        slots, found = self._lookup(wanted)
        self._forget(slots[found])
        self._counters["removes"] += int(found.sum())
        return int(found.sum())

    def step(self) -> int:
        """Age every entry by one step, fade weights, drop the faded; returns how many."""
        live = self._live_slots
        self._ages[live] += 1
        if self.forgetfulness_factor:
            self._weights[live] *= np.float32(1.0 - self.forgetfulness_factor)
        faded = live[self._weights[live] < self.min_weight]
        self._forget(faded)
        self._counters["faded"] += len(faded)
        return len(faded)

    def reset(self) -> None:
        """Empty the memory (an untrained index again); ids keep counting, counters too."""
        self._clear()

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Occupancy, mean age and weight, tombstones, and per-vector counters since the last
        `reset_stats()` (searches counts query vectors)."""
        live = self._live_slots
        out = {
            "occupancy": len(self) / self.capacity,
            "mean_age": float(self._ages[live].mean()) if len(live) else 0.0,
            "mean_weight": float(self._weights[live].mean()) if len(live) else 0.0,
            "tombstones": float(self._tombstones()),
        }
        out.update({name: float(value) for name, value in self._counters.items()})
        if reset:
            self.reset_stats()
        return out

    def reset_stats(self) -> None:
        self._counters = dict.fromkeys(COUNTERS, 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly, as tensors only (loads with weights_only)."""
        live = self._live_slots
        return {
            "memory_size": torch.tensor(self.capacity, dtype=torch.int64),
            "memory_dim": torch.tensor(self.dim, dtype=torch.int64),
            "index_type": encode_text(self.index_type),
            "metric": encode_text(self.metric),
            "ids": torch.from_numpy(self._live_ids.copy()),
            "vectors": torch.from_numpy(self._vectors[live]),
            "ages": torch.from_numpy(self._ages[live]),
            "weights": torch.from_numpy(self._weights[live]),
            "next_id": torch.tensor(self._next_id, dtype=torch.int64),
            "index": torch.from_numpy(indexes.serialize(self._index)),
            "index_trained": torch.tensor(self.is_trained),
            "counters": torch.tensor([self._counters[name] for name in COUNTERS]),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise XLabError(f"not an AssociativeMemory state: missing {', '.join(missing)}")
        state = {key: torch.as_tensor(state[key]).detach().cpu() for key in STATE_KEYS}
        size, dim = int(state["memory_size"]), int(state["memory_dim"])
        if (size, dim) != (self.capacity, self.dim):
            raise XLabError(
                f"memory state has memory_size={size}, memory_dim={dim} but this memory has "
                f"memory_size={self.capacity}, memory_dim={self.dim}"
            )
        for key, mine in (("index_type", self.index_type), ("metric", self.metric)):
            if _decode(state[key]) != mine:
                raise XLabError(f"memory state has {key}={_decode(state[key])!r}, not {mine!r}")
        ids = state["ids"].to(torch.int64).numpy()
        vectors = state["vectors"].to(torch.float32).numpy()
        n = len(ids)
        if vectors.shape != (n, dim) or len(state["ages"]) != n or len(state["weights"]) != n:
            raise XLabError("memory state is inconsistent: ids, vectors, ages, weights differ")
        index = indexes.deserialize(state["index"].numpy())
        if index.d != dim or index.ntotal < n:
            raise XLabError("memory state is inconsistent: faiss index and vectors differ")
        self._clear()
        slots = np.arange(n, dtype=np.int64)
        self._vectors[:n] = vectors
        self._slot_ids[:n] = ids
        self._ages[:n] = state["ages"].to(torch.int64).numpy()
        self._weights[:n] = state["weights"].to(torch.float32).numpy()
        order = np.argsort(ids, kind="stable")
        self._live_ids, self._live_slots = ids[order].copy(), slots[order]
        if n and (ids == ids[0] + slots).all():
            self._offset = int(ids[0])
        self._next_id = int(state["next_id"])
        indexes.configure(index, self._index_args["nprobe"], self._index_args["hnsw_ef_search"])
        self._index = index
        if bool(state["index_trained"]):
            self._pending = None
        self._removable = indexes.supports_removal(index)
        self._counters = dict(zip(COUNTERS, (int(c) for c in state["counters"].tolist())))

    # ------------------------------------------------------------------ internals

    def _clear(self) -> None:
        # np.zeros maps untouched pages lazily, so a large, mostly empty memory costs little RAM.
        self._vectors = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self._slot_ids = np.full(self.capacity, -1, dtype=np.int64)
        self._ages = np.zeros(self.capacity, dtype=np.int64)
        self._weights = np.zeros(self.capacity, dtype=np.float32)
        # Live ids sorted ascending with their slots: id -> slot is one np.searchsorted.
        self._live_ids = np.empty(0, dtype=np.int64)
        self._live_slots = np.empty(0, dtype=np.int64)
        # While nothing was removed, id i sits in slot i - offset; None once slots have holes.
        self._offset: int | None = None
        self._device_copy.drop()
        target = indexes.build_index(self.index_type, **self._index_args)
        if target.is_trained:
            self._index, self._pending = target, None
        else:
            self._index, self._pending = indexes.exact_index(self.dim, self.metric), target
            self._train_at = indexes.train_threshold(target, self.capacity, self._train_multiple)
        self._removable = indexes.supports_removal(self._index)
        self._changed()

    def _train_when_ready(self) -> None:
        if self._pending is None or len(self) < self._train_at:
            return
        live = self._vectors[self._live_slots]
        indexes.train(self._pending, live, self.index_type)
        self._pending.add_with_ids(live, self._live_ids)
        self._index, self._pending = self._pending, None
        self._removable = indexes.supports_removal(self._index)
        self._device_copy.drop()  # searches go to the trained index from now on
        self._changed()

    def _forget(self, slots: np.ndarray) -> None:
        """The one way entries leave: removal, eviction and fading all come through here."""
        if not len(slots):
            return
        ids = self._slot_ids[slots]
        keep = np.ones(len(self._live_ids), dtype=bool)
        keep[np.searchsorted(self._live_ids, ids)] = False
        self._live_ids, self._live_slots = self._live_ids[keep], self._live_slots[keep]
        self._slot_ids[slots] = -1
        self._weights[slots] = 0.0
        self._ages[slots] = 0
        self._offset = None
        self._device_copy.clear(slots)
        if self._removable:
            self._index.remove_ids(ids)
        elif self._tombstones() > self.tombstone_fraction * self._index.ntotal:
            self._rebuild()
        self._gpu.removed(len(self), self.tombstone_fraction)

    def _rebuild(self) -> None:
        # reset() keeps the graph parameters and any trained codebooks; only the entries go.
        self._index.reset()
        self._changed()
        if len(self):
            self._insert(self._vectors[self._live_slots], self._live_ids)

    def _insert(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        indexes.reseed(self._index, int(ids[0]))
        self._index.add_with_ids(vectors, ids)
        self._gpu.added(vectors, ids)

    def _tombstones(self) -> int:
        return 0 if self._removable else self._index.ntotal - len(self)

    def _eviction_victims(self, count: int) -> np.ndarray:
        if self.eviction == "oldest":
            return self._live_slots[:count]
        order = np.lexsort((self._live_ids, self._weights[self._live_slots]))
        return self._live_slots[order[:count]]

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots for `ids` (any shape) and whether each id is live; needs a non-empty memory."""
        if self._offset is not None:
            slots = ids - self._offset
            live = (slots >= 0) & (slots < len(self._live_ids))
            return np.clip(slots, 0, len(self._live_ids) - 1, out=slots), live
        positions = np.minimum(np.searchsorted(self._live_ids, ids), len(self._live_ids) - 1)
        return self._live_slots[positions], self._live_ids[positions] == ids

    def _select(self, q: np.ndarray, k: int):
        """faiss search padded to (B, k): labels, scores, slots, valid."""
        if not len(self) or not len(q):
            return padded(len(q), k)
        total = self._gpu.total(self._index)  # a GPU copy may still hold removed entries
        if total > len(self):
            return select_skipping_tombstones(self._faiss_search, self._lookup, q, k, len(self), total)
        return select(self._faiss_search, self._lookup, q, k, len(self))

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._gpu.search(self._index, q, k)

    def _changed(self) -> None:
        self._gpu.invalidate()

    def _on_device(self, queries) -> bool:
        """Whether to search on the queries' device: a GPU allowed by `device`, and an exact index."""
        on_gpu = isinstance(queries, torch.Tensor) and queries.device.type in SEARCH_ON_DEVICE_TYPES
        return on_gpu and self.device != "cpu" and indexes.is_exact(self._index)

    def _check_shape(self, t: torch.Tensor, name: str) -> None:
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise XLabError(f"{name} must have shape (N, {self.dim}), got {tuple(t.shape)}")

    def _as_matrix(self, x: torch.Tensor, name: str) -> np.ndarray:
        t = torch.as_tensor(x)
        self._check_shape(t, name)
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    def _initial_weights(self, weights: torch.Tensor | None, n: int) -> np.ndarray:
        if weights is None:
            return np.ones(n, dtype=np.float32)
        w = torch.as_tensor(weights).detach().to("cpu", torch.float32).reshape(-1).numpy()
        if len(w) != n or not np.isfinite(w).all() or (w < 0).any():
            raise XLabError(f"weights must be {n} finite values >= 0, one per vector")
        return w


def _device_of(x) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def encode_text(text: str) -> torch.Tensor:
    """`text` as a uint8 tensor: how states hold strings and still load with weights_only."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _decode(data: torch.Tensor) -> str:
    return bytes(data.to(torch.uint8).tolist()).decode("utf-8", errors="replace")
