"""Precompute every chunk's k retrieved neighbours, never from the chunk's own document.

RETRO trains on its own retrieval database, so a chunk would otherwise retrieve itself and the
text around it (the very tokens it must learn to predict). We search k + num_extra_neighbors
candidates, drop those from the query chunk's document (which includes the chunk itself) and
keep the first k in rank order. Rows with too few survivors are padded with -1; raise
num_extra_neighbors if the returned `short_rows` is large.

Output: (N, k) int64 `.npy` memmap of chunk ids, written in query batches aside, then renamed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from xlab.common.errors import XLabError
from xlab.common.files import written_aside_
from xlab.retro.index import load_index, to_gpu_if_available

Progress = Callable[[int], None]


def precompute_neighbours_(
    index: faiss.Index | str | Path,
    embeddings: np.ndarray,
    chunk_doc_ids: np.ndarray,
    k: int,
    num_extra_neighbors: int,
    out_path: str | Path,
    batch_size: int = 8192,
    progress: Progress | None = None,
) -> dict:
    """Write the (N, k) neighbour ids of all N chunks; return counts of short rows."""
    if k < 1 or num_extra_neighbors < 0:
        raise XLabError(f"need k >= 1 and num_extra_neighbors >= 0, got k={k}, "
                        f"num_extra_neighbors={num_extra_neighbors}.")
    if isinstance(index, (str, Path)):
        index = load_index(index)
    n = len(embeddings)
    if n == 0:
        raise XLabError("the retrieval database is empty: there are no chunks to find neighbours for.")
    if len(chunk_doc_ids) != n:
        raise XLabError(f"{n} embeddings but {len(chunk_doc_ids)} chunk document ids: they come from different builds.")
    gpu = to_gpu_if_available(index)
    searcher = gpu if gpu is not None else index
    short, missing = 0, 0
    with written_aside_(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(n, k))
        for r0 in range(0, n, batch_size):
            queries = np.ascontiguousarray(embeddings[r0:r0 + batch_size], dtype=np.float32)
            _, candidates = searcher.search(queries, min(k + num_extra_neighbors, n))
            rows = np.arange(r0, r0 + len(queries), dtype=np.int64)
            kept = filter_neighbours(candidates, chunk_doc_ids, k, np.asarray(chunk_doc_ids[r0:r0 + len(queries)]),
                                     rows)
            out[r0:r0 + len(queries)] = kept
            found = (kept >= 0).sum(axis=1)
            short += int((found < k).sum())
            missing += int(k * len(kept) - found.sum())
            if progress:
                progress(len(queries))
        out.flush()
        del out  # unmapped before it is renamed into place
    return {"n": n, "k": k, "num_extra_neighbors": num_extra_neighbors, "short_rows": short,
            "missing_neighbours": missing}


def filter_neighbours(candidates: np.ndarray, chunk_doc_ids: np.ndarray, k: int,
                      exclude_doc_ids: np.ndarray | None = None, self_ids: np.ndarray | None = None) -> np.ndarray:
    """Keep the first k candidate ids per row that are valid (not -1), not the query chunk itself
    (`self_ids`) and not from the row's `exclude_doc_ids` (-1 there excludes nothing); pad with -1.

    candidates: (B, K) ids in rank order -> (B, k) int64.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    keep = candidates >= 0
    if self_ids is not None:
        keep &= candidates != np.asarray(self_ids, dtype=np.int64)[:, None]
    if exclude_doc_ids is not None:
        docs = np.full(candidates.shape, -1, dtype=np.int64)
        docs[keep] = _lookup(chunk_doc_ids, candidates[keep])
        keep &= docs != np.asarray(exclude_doc_ids, dtype=np.int64).reshape(-1, 1)
    # Rank among the survivors of each row; the first k go to columns 0..k-1 in order.
    rank = np.cumsum(keep, axis=1) - 1
    take = keep & (rank < k)
    out = np.full((len(candidates), k), -1, dtype=np.int64)
    rows = np.nonzero(take)[0]
    out[rows, rank[take]] = candidates[take]
    return out


def _lookup(array: np.ndarray, ids: np.ndarray) -> np.ndarray:
    # Sorted reads touch each memmap page once instead of jumping around.
    order = np.argsort(ids, kind="stable")
    values = np.empty(len(ids), dtype=np.int64)
    values[order] = array[ids[order]]
    return values
