"""Cut a token split into fixed-size chunks, the unit that RETRO embeds, indexes and retrieves.

Input: one split as `tokens` (1-D token ids, documents concatenated, each wrapped as
sos + text + eos) and `doc_offsets` (int64, n_docs + 1: document i is
tokens[doc_offsets[i]:doc_offsets[i + 1]]).

Output, in `out_dir` (`.npy` files, opened later with `np.load(..., mmap_mode="r")`):

- `chunks.npy`            (N, chunk_size) int32. Every document is padded with `pad_id` up to a
                          multiple of chunk_size, so no chunk spans two documents.
- `chunk_doc_ids.npy`     (N,) int64, the document of every chunk.
- `doc_chunk_offsets.npy` (n_docs + 1,) int64: document i owns chunks [o[i], o[i + 1]).
- `seq_starts.npy`        (S,) int64, the first chunk of every training sequence (below).

Training sequences. A sequence is m = seq_len // chunk_size consecutive chunks of ONE document.
Keeping a sequence inside one document is what makes "never retrieve from the query's own
document" sufficient to stop a sequence from retrieving its own future text. Each document of
n >= m chunks is tiled from its first chunk with stride m; when m does not divide n, one last
window is aligned to the document's end (it overlaps the previous one), so every chunk of such a
document is in some sequence. Documents shorter than m chunks yield no sequence; the returned
`seq_coverage` says which fraction of chunks the sequences cover.

Neighbours and the continuation rule. A retrieved neighbour is 2 * chunk_size tokens: the
neighbour chunk i followed by chunk i + 1 when that chunk belongs to the same document, else by
padding (`neighbour_tokens`).

Everything streams: tokens are copied in windows of `batch_tokens`, document offsets in batches,
so memory beyond the memmaps stays bounded whatever the corpus size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xlab.common.errors import XLabError
from xlab.common.files import written_aside_together_

CHUNKS, CHUNK_DOC_IDS, DOC_CHUNK_OFFSETS, SEQ_STARTS = (
    "chunks.npy", "chunk_doc_ids.npy", "doc_chunk_offsets.npy", "seq_starts.npy")
CHUNK_FILES = (CHUNKS, CHUNK_DOC_IDS, DOC_CHUNK_OFFSETS, SEQ_STARTS)

DOC_BATCH = 1 << 16  # documents per batch when walking offsets
ROW_BATCH = 1 << 16  # chunk rows per batch when writing per-chunk arrays

Progress = Callable[[int], None]


def chunk_tokens_(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    out_dir: str | Path,
    chunk_size: int = 64,
    pad_id: int = 0,
    seq_len: int = 2048,
    batch_tokens: int = 1 << 20,
    progress: Progress | None = None,
) -> dict:
    """Write the four chunk files into `out_dir` (each aside, then renamed); return a summary.

    `progress(n)` is called with the number of tokens copied since the last call.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_inputs(tokens, doc_offsets, chunk_size, seq_len)
    n_docs = len(doc_offsets) - 1
    m = seq_len // chunk_size

    names = (CHUNK_DOC_IDS, DOC_CHUNK_OFFSETS, SEQ_STARTS, CHUNKS)
    with written_aside_together_(*(out_dir / name for name in names)) as (ids_tmp, dco_tmp, seq_tmp, chunks_tmp):
        # Pass 1 over the offsets: chunk counts per document (written as offsets) and sequence counts.
        dco = np.lib.format.open_memmap(dco_tmp, mode="w+", dtype=np.int64, shape=(n_docs + 1,))
        n_chunks, n_seqs, covered = 0, 0, 0
        dco[0] = 0
        for d0 in range(0, n_docs, DOC_BATCH):
            d1 = min(n_docs, d0 + DOC_BATCH)
            lengths = np.diff(np.asarray(doc_offsets[d0:d1 + 1], dtype=np.int64))
            per_doc = (lengths + chunk_size - 1) // chunk_size
            dco[d0 + 1:d1 + 1] = n_chunks + np.cumsum(per_doc)
            n_chunks += int(per_doc.sum())
            n_seqs += int(_seq_counts(per_doc, m).sum())
            covered += int(per_doc[per_doc >= m].sum())
        dco.flush()

        # Pass 2 over the tokens: copy every window to its padded position. The file starts zeroed
        # (open_memmap extends a sparse file), so padding only needs writing when pad_id is not 0.
        chunks = np.lib.format.open_memmap(chunks_tmp, mode="w+", dtype=np.int32, shape=(n_chunks, chunk_size))
        if pad_id != 0:
            for r0 in range(0, n_chunks, ROW_BATCH):
                chunks[r0:r0 + ROW_BATCH] = pad_id
        flat = chunks.reshape(-1)
        n_tokens = int(doc_offsets[-1])
        for t0 in range(0, n_tokens, batch_tokens):
            t1 = min(n_tokens, t0 + batch_tokens)
            first, owners = _owners(doc_offsets, t0, t1)
            # Token p of document d lands at dco[d] * chunk_size + (p - doc_offsets[d]).
            local = slice(first, first + len(owners) + 1)
            shift = np.asarray(dco[local][:-1]) * chunk_size - np.asarray(doc_offsets[local][:-1], dtype=np.int64)
            dest = np.arange(t0, t1, dtype=np.int64) + np.repeat(shift, owners)
            flat[dest] = tokens[t0:t1]
            if progress:
                progress(t1 - t0)
        chunks.flush()

        # The document of every chunk, in row windows.
        doc_ids = np.lib.format.open_memmap(ids_tmp, mode="w+", dtype=np.int64, shape=(n_chunks,))
        for r0 in range(0, n_chunks, ROW_BATCH):
            r1 = min(n_chunks, r0 + ROW_BATCH)
            first, owners = _owners(dco, r0, r1)
            doc_ids[r0:r1] = np.repeat(np.arange(first, first + len(owners), dtype=np.int64), owners)
        doc_ids.flush()

        seqs = np.lib.format.open_memmap(seq_tmp, mode="w+", dtype=np.int64, shape=(n_seqs,))
        written = 0
        for d0 in range(0, n_docs, DOC_BATCH):
            starts = sequence_starts(np.asarray(dco[d0:min(n_docs, d0 + DOC_BATCH) + 1]), m)
            seqs[written:written + len(starts)] = starts
            written += len(starts)
        seqs.flush()

        del chunks, flat, doc_ids, seqs, dco  # unmapped before they are renamed into place
    return {
        "n_tokens": n_tokens, "n_docs": n_docs, "n_chunks": n_chunks, "n_seqs": n_seqs,
        "chunk_size": chunk_size, "seq_len": seq_len, "pad_id": pad_id,
        "pad_fraction": 1 - n_tokens / max(1, n_chunks * chunk_size),
        "seq_coverage": covered / max(1, n_chunks),
    }


def sequence_starts(doc_chunk_offsets: np.ndarray, m: int) -> np.ndarray:
    """First chunks of the m-chunk windows of each document (see the module docstring).

    `doc_chunk_offsets` is any consecutive run of chunk offsets (k + 1 values for k documents).
    """
    per_doc = np.diff(doc_chunk_offsets)
    counts = _seq_counts(per_doc, m)
    doc_start = np.repeat(doc_chunk_offsets[:-1], counts)
    doc_end = np.repeat(doc_chunk_offsets[1:], counts)
    # j-th window of its document: j * m chunks in, clamped so the last one ends at the document end.
    j = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.minimum(doc_start + j * m, doc_end - m)


def neighbour_tokens(chunks: np.ndarray, chunk_doc_ids: np.ndarray, ids: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """Token arrays of neighbours: ids of any shape -> ids.shape + (2 * chunk_size,) int32.

    Neighbour i is chunk i followed by its continuation, chunk i + 1, when that chunk is in the
    same document, else by padding. Id -1 (no neighbour) gives a row of padding.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n, chunk_size = chunks.shape
    flat = ids.reshape(-1)
    out = np.full((len(flat), 2 * chunk_size), pad_id, dtype=np.int32)
    valid = flat >= 0
    if (flat >= n).any():
        raise IndexError(f"neighbour id {int(flat.max())} is out of range for {n} chunks")
    rows = flat[valid]
    out[valid, :chunk_size] = _gather(chunks, rows)
    nxt = rows + 1
    has_next = nxt < n
    has_next[has_next] = _gather(chunk_doc_ids, nxt[has_next]) == _gather(chunk_doc_ids, rows[has_next])
    target = np.flatnonzero(valid)[has_next]
    out[target, chunk_size:] = _gather(chunks, nxt[has_next])
    return out.reshape(*ids.shape, 2 * chunk_size)


def chunks_sha256(chunks: np.ndarray, batch_rows: int = ROW_BATCH) -> str:
    """sha256 of the chunk array's bytes (int32, C order), read in row batches."""
    digest = hashlib.sha256()
    for r0 in range(0, len(chunks), batch_rows):
        digest.update(np.ascontiguousarray(chunks[r0:r0 + batch_rows], dtype=np.int32).tobytes())
    return digest.hexdigest()


def open_chunks(out_dir: str | Path) -> dict[str, np.ndarray]:
    """The four chunk files of `out_dir` as read-only memmaps, by name without `.npy`."""
    out_dir = Path(out_dir)
    return {name[:-4]: np.load(out_dir / name, mmap_mode="r") for name in CHUNK_FILES}


# --- helpers ------------------------------------------------------------------------------------

def _check_inputs(tokens: np.ndarray, doc_offsets: np.ndarray, chunk_size: int, seq_len: int) -> None:
    if chunk_size < 1:
        raise XLabError(f"chunk_size={chunk_size} must be a positive number of tokens (RETRO uses 64).")
    if seq_len < chunk_size or seq_len % chunk_size:
        raise XLabError(f"seq_len={seq_len} must be a positive multiple of chunk_size={chunk_size}.")
    if tokens.ndim != 1 or doc_offsets.ndim != 1 or len(doc_offsets) < 1:
        raise XLabError("tokens must be 1-D and doc_offsets 1-D with n_docs + 1 entries.")
    if int(doc_offsets[0]) != 0 or int(doc_offsets[-1]) != len(tokens):
        raise XLabError(f"doc_offsets must run from 0 to len(tokens)={len(tokens)}, "
                        f"got {int(doc_offsets[0])}..{int(doc_offsets[-1])}: pass the offsets of this split.")
    if int(doc_offsets[-1]) == 0:
        raise XLabError("the split has no tokens: the retrieval database needs at least one document.")


def _seq_counts(chunks_per_doc: np.ndarray, m: int) -> np.ndarray:
    return np.where(chunks_per_doc >= m, (chunks_per_doc + m - 1) // m, 0)


def _owners(offsets: np.ndarray, lo: int, hi: int) -> tuple[int, np.ndarray]:
    """For positions [lo, hi) in a space split by `offsets`: the first owning segment and how many
    of the positions each segment from there on owns (empty segments own 0)."""
    first = int(np.searchsorted(offsets, lo, side="right")) - 1
    last = int(np.searchsorted(offsets, hi - 1, side="right")) - 1
    bounds = np.clip(np.asarray(offsets[first:last + 2], dtype=np.int64), lo, hi)
    return first, np.diff(bounds)


def _gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    # Fancy indexing a memmap reads pages in index order; sorting first keeps reads sequential.
    if len(rows) < 2:
        return np.asarray(array[rows])
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    return out
