"""Deterministic assignment of documents to splits by a hash of their id.

A hash, not a shuffle: a document keeps its split when the corpus grows or is read in another
order, so nothing seen in training can later turn up in validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from xlab.common.errors import XLabError

SPLITS = ("train", "val", "test", "predict")


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise XLabError(f"split_fractions {list(fractions)} must be {len(SPLITS)} non-negative numbers "
                        f"({'/'.join(SPLITS)}) summing to 1, e.g. [0.9, 0.05, 0.025, 0.025].")
    if fractions[0] == 0:
        raise XLabError("split_fractions gives the train split nothing: make its first number positive.")
    return fractions


def split_of(doc_id: str, fractions: Sequence[float], salt: int = 0) -> str:
    digest = hashlib.blake2b(f"{salt}:{doc_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return next(name for name, f in reversed(list(zip(SPLITS, fractions))) if f > 0)
