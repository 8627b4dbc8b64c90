"""From faiss hits to the memory's readout: padding to k, skipping tombstones, gathering vectors.

faiss returns ids; the memory hands back the stored vectors of those ids too. Turning an id into
the slot that holds its vector is arithmetic while nothing has been removed (ids then sit in
consecutive slots), and one binary search over the live ids otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> scores, labels
Lookup = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # ids -> slots, live


def padded(rows: int, k: int):
    """Empty (labels, scores, slots, valid) results: id -1, score 0, invalid."""
    return (
        np.full((rows, k), -1, dtype=np.int64),
        np.zeros((rows, k), dtype=np.float32),
        np.zeros((rows, k), dtype=np.int64),
        np.zeros((rows, k), dtype=bool),
    )


def select(search: Search, lookup: Lookup, q: np.ndarray, k: int, live: int):
    """faiss search padded to (B, k) when every indexed entry is live: labels, scores, slots, valid."""
    scores, labels = search(q, min(k, live))
    slots, valid = lookup(labels)
    if labels.shape[1] == k:
        return labels, scores, slots, valid
    out = padded(len(q), k)
    for pad, found in zip(out, (labels, scores, slots, valid)):
        pad[:, : found.shape[1]] = found
    return out


def select_skipping_tombstones(search: Search, lookup: Lookup, q: np.ndarray, k: int, live: int, total: int):
    """Over-fetch 2k and drop dead hits; rows still short of k live hits are searched again
    with twice the fetch, until they fill up or the fetch covers the whole index (`total`)."""
    labels, scores, slots, valid = padded(len(q), k)
    fetch = min(total, 2 * k)
    rows = np.arange(len(q))
    while True:
        found_scores, found = search(q[rows], fetch)
        found_slots, found_valid = lookup(found)
        # Push dead hits behind the live ones without disturbing the ranking.
        order = np.argsort(~found_valid, axis=1, kind="stable")[:, :k]
        found, found_scores, found_slots, found_valid = (
            np.take_along_axis(a, order, axis=1) for a in (found, found_scores, found_slots, found_valid)
        )
        width = found.shape[1]
        labels[rows, :width], scores[rows, :width] = found, found_scores
        slots[rows, :width], valid[rows, :width] = found_slots, found_valid
        short = found_valid.sum(axis=1) < min(k, live)
        if fetch >= total or not short.any():
            return labels, scores, slots, valid
        rows, fetch = rows[short], min(total, 2 * fetch)


class GatherBuffer:
    """Where the retrieved vectors are gathered: one buffer, reused while nothing holds the last
    result. A fresh array of B x k x D floats per search costs more than the gather itself (its
    pages are faulted in and zeroed on every call); a result still held elsewhere (an autograd
    graph, a caller's variable) keeps the numpy buffer referenced, so it is never overwritten."""

    def __init__(self, dim: int) -> None:
        self._buffer = np.empty((0, dim), dtype=np.float32)

    def take(self, table: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """table[slots] as (*slots.shape, D); slots out of range are clipped (callers zero
        the rows they mark invalid)."""
        n = slots.size
        # Two references when idle: the attribute and getrefcount's own argument.
        if len(self._buffer) < n or sys.getrefcount(self._buffer) > 2:
            self._buffer = np.empty((n, table.shape[1]), dtype=np.float32)
        out = self._buffer[:n]
        np.take(table, slots.reshape(-1), axis=0, out=out, mode="clip")  # "clip" writes in place, "raise" via a copy
        return out.reshape(*slots.shape, table.shape[1])
