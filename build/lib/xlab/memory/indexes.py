"""Building, probing and serializing the faiss indexes behind `AssociativeMemory`.

Every index built here is addressed by the memory's stable ids (`add_with_ids`): IVF indexes
store ids natively, everything else is wrapped in `IndexIDMap`. IVF is never wrapped, because
`IndexIDMap.remove_ids` assumes the inner index renumbers its rows after a removal, which IVF
does not do.
"""

from __future__ import annotations

import faiss
import numpy as np

from xlab.common.errors import XLabError, last_line

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}

# faiss' k-means warns below 39 points per centroid; 256 is the usual PQ codebook size, assumed
# for trainable factory indexes whose centroid count we cannot read.
POINTS_PER_CENTROID = 39
PQ_CENTROIDS = 256

# Largest k the faiss GPU kernels accept; bigger searches go to the CPU index.
GPU_MAX_K = 2048


def exact_index(dim: int, metric: str) -> faiss.Index:
    """Brute-force index with stable ids and removal: the "flat" type, and the stand-in that
    serves trainable indexes until enough real vectors exist to train them."""
    return faiss.IndexIDMap(faiss.IndexFlat(dim, METRICS[metric]))


def build_index(
    index_type: str,
    dim: int,
    metric: str,
    capacity: int,
    num_clusters: int,
    nprobe: int,
    hnsw_m: int,
    hnsw_ef_search: int,
) -> faiss.Index:
    """The target index for `index_type`, possibly untrained. Raises XLabError for settings
    faiss would only reject later, deep inside an add or a train."""
    faiss_metric = METRICS[metric]
    if index_type == "flat":
        return exact_index(dim, metric)
    if index_type == "ivf":
        if num_clusters < 1 or num_clusters > capacity:
            raise XLabError(
                f"ivf needs 1 <= num_clusters <= memory_size, got num_clusters={num_clusters}, "
                f"memory_size={capacity}: it can never hold enough vectors to train"
            )
        if nprobe < 1 or nprobe > num_clusters:
            raise XLabError(f"nprobe must be in [1, num_clusters={num_clusters}], got {nprobe}")
        quantizer = faiss.IndexFlat(dim, faiss_metric)
        index = faiss.IndexIVFFlat(quantizer, dim, num_clusters, faiss_metric)
        configure(index, nprobe, hnsw_ef_search)
        return index
    if index_type == "hnsw":
        if hnsw_m < 2:
            raise XLabError(f"hnsw_m must be >= 2, got {hnsw_m}")
        if hnsw_ef_search < 1:
            raise XLabError(f"hnsw_ef_search must be >= 1, got {hnsw_ef_search}")
        index = faiss.IndexIDMap(faiss.IndexHNSWFlat(dim, hnsw_m, faiss_metric))
        configure(index, nprobe, hnsw_ef_search)
        return index
    index = _from_factory(index_type, dim, faiss_metric, capacity)
    configure(index, nprobe, hnsw_ef_search)
    return index


def configure(index: faiss.Index, nprobe: int, hnsw_ef_search: int) -> None:
    """Apply the search-time settings; also after deserializing, so the memory's settings win
    over whatever a checkpoint was saved with."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    inner = _innermost(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = hnsw_ef_search


def reseed(index: faiss.Index, seed: int) -> None:
    """HNSW draws each new vector's level from an RNG that faiss does not serialize; seeding it
    from the first new id makes inserts after a checkpoint reload build the same graph."""
    inner = _innermost(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.rng = faiss.RandomGenerator(seed)


def _from_factory(spec: str, dim: int, faiss_metric: int, capacity: int) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, spec, faiss_metric)
    except RuntimeError as error:
        raise XLabError(
            f"unknown index_type {spec!r}: use 'flat', 'ivf', 'hnsw' or a faiss index_factory "
            f"string ({last_line(error)})"
        ) from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        if isinstance(index, faiss.IndexIDMap):
            raise XLabError(
                f"index_type {spec!r}: drop the IDMap prefix, the memory assigns ids itself "
                "(and IDMap over IVF breaks removal)"
            )
        if ivf.nlist > capacity:
            raise XLabError(
                f"index_type {spec!r} has {ivf.nlist} clusters but memory_size is {capacity}: "
                "it can never hold enough vectors to train"
            )
        return index
    if isinstance(index, faiss.IndexIDMap):
        return index
    return faiss.IndexIDMap(index)


def train_threshold(index: faiss.Index, capacity: int, multiple: int) -> int:
    """How many stored vectors a trainable index waits for: `multiple` per centroid of its
    largest k-means (IVF lists or a PQ codebook), capped by capacity so a full memory trains."""
    ivf = faiss.try_extract_index_ivf(index)
    centroids = ivf.nlist if ivf is not None else PQ_CENTROIDS
    pq = getattr(faiss.downcast_index(ivf) if ivf is not None else _innermost(index), "pq", None)
    if pq is not None:
        centroids = max(centroids, pq.ksub)
    return max(1, min(capacity, multiple * centroids))


def _innermost(index: faiss.Index) -> faiss.Index:
    """The index under IDMap / PreTransform wrappers (where an HNSW graph or PQ lives)."""
    while hasattr(index, "index"):
        index = faiss.downcast_index(index.index)
    return index


def train(index: faiss.Index, vectors: np.ndarray, spec: str) -> None:
    """Train on the real stored vectors; a faiss refusal becomes a one-line XLabError."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        # The threshold is our documented choice, so faiss' "too few points" warning is noise.
        ivf.cp.min_points_per_centroid = 1
    try:
        index.train(vectors)
    except RuntimeError as error:
        raise XLabError(
            f"index_type {spec!r} could not be trained on {len(vectors)} stored vectors: "
            f"{last_line(error)}"
        ) from None


def is_exact(index: faiss.Index) -> bool:
    """Brute force on the stored vectors themselves (what a matmul and a top-k reproduce): an
    IndexFlat under id wrappers only, not under a transform."""
    while isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexFlat)


def supports_removal(index: faiss.Index) -> bool:
    """Graph indexes (HNSW, NSG) raise on remove_ids; an empty removal tells us without
    changing anything."""
    try:
        index.remove_ids(np.empty(0, dtype=np.int64))
    except RuntimeError:
        return False
    return True


def serialize(index: faiss.Index) -> np.ndarray:
    return faiss.serialize_index(index)


def deserialize(data: np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))


def gpu_available() -> bool:
    return faiss.get_num_gpus() > 0


