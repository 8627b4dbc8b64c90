"""Build a faiss index over the chunk embeddings, sized to a memory budget, with a quality report.

Automatic choice (no factory string given), in the spirit of autofaiss:

1. `Flat` (exact search) when the database is small enough to brute-force
   (n <= `exact_max_vectors`, default 65,536) and n * dim * 4 bytes fit the budget. Above that
   size exact search makes precomputing every chunk's neighbours quadratic, so even when flat
   would fit we go approximate.
2. Otherwise an inverted file with nlist ~ 2 * sqrt(n) lists (a power of two, at most n / 39 so
   k-means has enough points per centroid; coarse quantizer HNSW32 from 16,384 lists, where a
   flat one gets slow) and the first code that fits the budget, in order:
   `IVF,SQ8` (dim bytes/vector), `IVF,SQ4` (dim / 2 bytes), then `IVF,PQ{m}` for m from dim / 4
   down to dim / 32 (m bytes; small databases get codebooks of fewer than 8 bits, sized to their
   training set). Inverted lists add 8 bytes of id per vector. `IVF,Flat` is not on the list:
   scanning inverted lists is memory-bound, and on unit vectors SQ8 keeps ~99% of its recall
   while reading a quarter of the bytes (measured 2.3x more queries/s at equal nprobe); pass
   "IVF...,Flat" (or "HNSW32", ...) as index_factory to get it anyway.
3. Nothing fits: XLabError naming the smallest budget that would.

The budget counts the index as it will be saved (and searched); the resident size while adding
can be somewhat higher because inverted lists grow in steps.

IVF indexes are trained on a random sample of the real embeddings (rows that are not all zero),
vectors are added in batches. The search knob (IVF `nprobe`, HNSW `efSearch`) is tuned on a
sample of the database's own vectors, which is exactly what neighbour precomputation searches
with: powers of two, stopping at the first value that reaches `target_recall` (0.9 by default)
or when recall stops improving; an optional `search_time_budget_s` also stops it before the
projected time to search all n chunks exceeds it. When the codes cap the recall below the target
at every nprobe (quantisation), the automatic choice moves to finer codes that still fit the
budget (`IVF...,Flat`, then exact `Flat`); a target no index within the budget reaches is a
warning, and the report says `target_reached: false` and lists the kinds tried.

Outputs: the index at `out_path` (written aside, then renamed) and a JSON report next to it
(`report_path`): chosen factory, search parameters, recall@k against exact search, queries/s,
index bytes, the tuning curve. With a GPU (faiss.get_num_gpus() > 0) training and adding run
there; the CPU index is what gets saved.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from xlab.common.errors import XLabError, last_line
from xlab.common.files import written_aside_together_

Progress = Callable[[int], None]

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(budget: str | int) -> int:
    """"1G", "512M", "300K", "2GB", "1.5g" or a byte count -> bytes (binary units)."""
    if isinstance(budget, (int, np.integer)):
        return int(budget)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(budget).upper())
    if not match:
        raise XLabError(f"max_index_memory_usage={budget!r} is not a size: write e.g. '4G', '512M' or a byte count.")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def report_path(index_path: str | Path) -> Path:
    """The quality report that sits next to an index: index.faiss -> index.report.json."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.stem + ".report.json")


def choose_index_factory(n: int, dim: int, budget_bytes: int, exact_max_vectors: int = 1 << 16) -> tuple[str, int]:
    """The factory string the automatic choice picks, and its estimated size in bytes."""
    if n < 1:
        raise XLabError("the retrieval database is empty: there are no chunk embeddings to index.")
    flat = n * dim * 4
    if n <= exact_max_vectors and flat <= budget_bytes:
        return "Flat", flat
    candidates = ivf_candidates(n, dim)
    for factory, size in candidates:
        if size <= budget_bytes:
            return factory, size
    smallest, size = candidates[-1]
    raise XLabError(f"max_index_memory_usage={_human(budget_bytes)} is too small for {n} vectors of dim {dim}: "
                    f"the smallest index ({smallest}) needs about {_human(size)}; raise the budget.")


def ivf_candidates(n: int, dim: int) -> list[tuple[str, int]]:
    """IVF factories from best recall to smallest, each with its estimated size in bytes."""
    nlist = _nlist(n)
    quantizer, coarse = f"IVF{nlist}", nlist * dim * 4
    if nlist >= 16384:
        quantizer, coarse = f"IVF{nlist}_HNSW32", nlist * (dim * 4 + 32 * 2 * 4)
    ids = 8 * n
    out = [(f"{quantizer},SQ8", coarse + ids + dim * n), (f"{quantizer},SQ4", coarse + ids + math.ceil(dim / 2) * n)]
    nbits = _pq_bits(n)
    for m in sorted((m for m in range(1, dim + 1) if dim % m == 0 and dim // 32 <= m <= dim // 4), reverse=True):
        codebooks = (1 << nbits) * dim * 4
        suffix = "" if nbits == 8 else f"x{nbits}"
        out.append((f"{quantizer},PQ{m}{suffix}", coarse + ids + codebooks + math.ceil(m * nbits / 8) * n))
    return out


def build_index_(
    embeddings: np.ndarray,
    out_path: str | Path,
    index_factory: str | None = None,
    max_index_memory_usage: str | int = "1G",
    metric: str = "ip",
    *,
    exact_max_vectors: int = 1 << 16,
    train_size: int | None = None,
    batch_size: int | None = None,
    report_queries: int = 1000,
    report_k: int = 10,
    target_recall: float = 0.9,
    search_time_budget_s: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Build, tune, report on and save an index of `embeddings` (N, D) float32; return the report.

    `progress(n)` is called with the number of vectors added since the last call.
    """
    started = time.time()
    out_path = Path(out_path)
    n, dim = embeddings.shape if embeddings.ndim == 2 else (0, 0)
    if n == 0:
        raise XLabError("the retrieval database is empty: there are no chunk embeddings to index.")
    if metric not in METRICS:
        raise XLabError(f"metric={metric!r} is not supported: use one of {sorted(METRICS)}.")
    budget = parse_memory(max_index_memory_usage)
    automatic = index_factory is None
    estimated = None
    if automatic:
        index_factory, estimated = choose_index_factory(n, dim, budget, exact_max_vectors)
    rng = np.random.default_rng(seed)
    batch_size = batch_size or _rows_per_batch(dim)
    index, trained_on, on_gpu = _build(embeddings, index_factory, metric, train_size, batch_size, rng, progress)
    queries = np.ascontiguousarray(embeddings[np.sort(rng.choice(n, size=min(report_queries, n), replace=False))],
                                   dtype=np.float32)
    k = min(report_k, n)
    truth = exact_search(embeddings, queries, k, metric, batch_size)
    seconds_per_query = search_time_budget_s / n if search_time_budget_s else float("inf")

    tried = []
    while True:
        tuning = _tune(index, queries, truth, k, target_recall, seconds_per_query)
        recall, qps = _recall(index, queries, truth, k)
        tried.append({"factory": index_factory, "recall": recall, "search_params": _search_params(index)})
        capped = bool(tuning) and tuning[-1].get("over_time_budget", False)
        upgrade = _finer_index(index_factory, n, dim, budget) if automatic and recall < target_recall else None
        if recall >= target_recall or capped or upgrade is None:
            break
        # The codes cap the recall below the target at every nprobe: finer codes, if they fit.
        index_factory, estimated = upgrade
        index, trained_on, on_gpu = _build(embeddings, index_factory, metric, train_size, batch_size, rng, progress)
    if recall < target_recall:
        reason = ("the search time budget stopped the tuning" if capped else
                  "no index that fits the memory budget reaches it")
        warnings.warn(f"the retrieval index reaches recall@{k} {recall:.3f} < target_recall {target_recall}: {reason}.",
                      stacklevel=2)

    # The report is renamed first: an index file with no report next to it cannot happen.
    with written_aside_together_(report_path(out_path), out_path) as (report_tmp, tmp):
        faiss.write_index(index, str(tmp))
        report = {
            "factory": index_factory, "chosen_automatically": automatic, "metric": metric, "n": int(n),
            "dim": int(dim), "budget_bytes": budget, "estimated_bytes": estimated, "index_bytes": tmp.stat().st_size,
            "train_size": trained_on, "search_params": _search_params(index),
            f"recall_at_{k}": recall, "recall": recall, "k": k, "n_queries": len(queries), "queries_per_s": qps,
            "target_recall": target_recall, "target_reached": recall >= target_recall, "kinds_tried": tried,
            "projected_search_all_s": round(n / qps, 1), "tuning": tuning, "gpu": on_gpu,
            "build_seconds": round(time.time() - started, 2),
        }
        report_tmp.write_text(json.dumps(report, indent=2))
    return report


def _build(embeddings: np.ndarray, factory: str, metric: str, train_size: int | None, batch_size: int,
           rng: np.random.Generator, progress: Progress | None) -> tuple[faiss.Index, int, bool]:
    """(index of every embedding, vectors trained on, whether a GPU built it)."""
    n = len(embeddings)
    try:
        index = faiss.index_factory(embeddings.shape[1], factory, METRICS[metric])
    except RuntimeError as error:
        raise XLabError(f"faiss cannot build index_factory={factory!r}: {last_line(error)}") from None
    _no_polysemous_training(index)
    gpu = to_gpu_if_available(index)
    work = gpu if gpu is not None else index
    trained_on = 0
    if not index.is_trained:
        sample = _training_sample(embeddings, _train_size(index, n, train_size), rng)
        trained_on = len(sample)
        work.train(sample)
    for r0 in range(0, n, batch_size):
        work.add(np.ascontiguousarray(embeddings[r0:r0 + batch_size], dtype=np.float32))
        if progress:
            progress(min(batch_size, n - r0))
    if gpu is not None:
        index = faiss.index_gpu_to_cpu(gpu)
    return index, trained_on, gpu is not None


def _finer_index(factory: str, n: int, dim: int, budget: int) -> tuple[str, int] | None:
    """The next index kind with more exact codes than `factory` that fits the budget: an IVF
    with full vectors after quantised codes, then exact search; None when none is left."""
    quantizer = factory.split(",")[0]
    steps = []
    if quantizer.startswith("IVF") and not factory.endswith(",Flat"):
        size = next(size for f, size in ivf_candidates(n, dim) if f.startswith(quantizer + ","))
        steps.append((f"{quantizer},Flat", size - dim * n + 4 * dim * n))  # the SQ8 estimate with 4 bytes a dim
    if factory != "Flat":
        steps.append(("Flat", 4 * dim * n))
    return next(((f, size) for f, size in steps if size <= budget), None)


def load_index(path: str | Path) -> faiss.Index:
    """Read a saved index; its tuned search parameters (nprobe / efSearch) are saved inside it."""
    path = Path(path)
    if not path.is_file():
        raise XLabError(f"no faiss index at {path}: build the retrieval database first.")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:  # faiss's C++ read error, for a file cut short or not an index
        raise XLabError(f"{path} is not a readable faiss index ({last_line(error)}): delete its retrieval database "
                        "folder and run again to rebuild it.") from None


def to_gpu_if_available(index: faiss.Index) -> faiss.Index | None:
    """A GPU copy of `index` when faiss sees GPUs and supports this index type there, else None."""
    if faiss.get_num_gpus() <= 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as error:  # e.g. an HNSW quantizer or PQ sizes the GPU lacks
        warnings.warn(f"faiss GPU cannot take this index ({last_line(error)}); using the CPU.", stacklevel=2)
        return None


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip",
                 batch_size: int | None = None) -> np.ndarray:
    """Ids of the exact top-k of each query, streaming the database in blocks (never all in RAM)."""
    batch_size = batch_size or _rows_per_batch(embeddings.shape[1])
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == "ip")
    for r0 in range(0, len(embeddings), batch_size):
        block = np.ascontiguousarray(embeddings[r0:r0 + batch_size], dtype=np.float32)
        scores, ids = faiss.knn(queries, block, min(k, len(block)), metric=METRICS[metric])
        if ids.shape[1] < k:  # a last block smaller than k: pad with no-results
            fill = -np.inf if metric == "ip" else np.inf
            scores = np.pad(scores, ((0, 0), (0, k - ids.shape[1])), constant_values=fill)
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.where(ids >= 0, ids + r0, -1))
    heap.finalize()
    return heap.I


# --- helpers ------------------------------------------------------------------------------------

def _rows_per_batch(dim: int, batch_bytes: int = 32 << 20) -> int:
    # Vectors read per batch: a fixed number of bytes, so memory does not grow with dim or n.
    return max(1, batch_bytes // (4 * max(1, dim)))


def _nlist(n: int) -> int:
    target = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n))))
    return max(1, min(target, n // 39))


def _pq_bits(n: int) -> int:
    # 8-bit codebooks need ~39 * 256 training points; small databases get smaller codebooks.
    return max(1, min(8, int(math.log2(max(2, n // 39)))))


def _train_size(index: faiss.Index, n: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, min(n, requested))
    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 1
    # ~64 points per centroid (faiss warns below 39), enough for 8-bit PQ codebooks, capped.
    return min(n, max(64 * nlist, 256 * 39), 1 << 18)


def _training_sample(embeddings: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.sort(rng.choice(len(embeddings), size=size, replace=False))
    sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    nonzero = np.abs(sample).sum(axis=1) > 0  # all-zero rows (empty chunks) would pull centroids to 0
    return sample[nonzero] if nonzero.any() else sample


def _no_polysemous_training(index: faiss.Index) -> None:
    # Factory-made PQ indexes do "polysemous training" (a slow annealing of code order, minutes
    # even on small data) that only pays off for Hamming-filtered search, which we do not use.
    for part in (index, faiss.try_extract_index_ivf(index)):
        part = faiss.downcast_index(part) if part is not None else None
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def _search_params(index: faiss.Index) -> dict:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return {"nprobe": int(ivf.nprobe), "nlist": int(ivf.nlist)}
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    return {"efSearch": int(hnsw.efSearch)} if hnsw is not None else {}


def _tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, k: int, target: float,
          max_seconds_per_query: float) -> list[dict]:
    """Pick the search knob (IVF nprobe or HNSW efSearch) and leave it set; return the curve tried."""
    ivf = faiss.try_extract_index_ivf(index)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if ivf is not None:
        name, values, setter = "nprobe", _powers(1, min(ivf.nlist, 2048)), lambda v: setattr(ivf, "nprobe", v)
    elif hnsw is not None:
        name, values, setter = "efSearch", _powers(max(16, k), 2048), lambda v: setattr(hnsw, "efSearch", v)
    else:
        return []
    curve, chosen = [], None
    for value in values:
        setter(value)
        recall, qps = _recall(index, queries, truth, k)
        curve.append({name: value, "recall": recall, "queries_per_s": qps})
        if len(curve) > 1 and 1 / qps > max_seconds_per_query:
            curve[-1]["over_time_budget"] = True
            break  # searching every chunk this way would overrun the time budget: keep the previous value
        if chosen is None or recall > chosen[1] + 0.005:
            chosen = (value, recall)
        if recall >= target or (len(curve) > 2 and recall <= curve[-3]["recall"] + 0.005):
            break  # good enough, or no longer improving (quantised codes cap the recall)
    setter(chosen[0] if chosen[1] < target else curve[-1][name])
    return curve


def _recall(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    started = time.perf_counter()
    _, found = index.search(queries, k)
    seconds = max(time.perf_counter() - started, 1e-9)
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth))
    return round(hits / max(1, int((truth >= 0).sum())), 4), round(len(queries) / seconds, 1)


def _powers(lo: int, hi: int) -> list[int]:
    values, v = [], 1
    while v < hi:
        if v >= lo:
            values.append(v)
        v *= 2
    return values + [hi]


def _human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"


