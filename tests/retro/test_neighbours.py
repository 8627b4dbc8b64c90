"""Neighbour precomputation: never the query's own document, shape (N, k), -1 padding."""

import numpy as np

from xlab.retro.chunking import chunk_tokens_, open_chunks
from xlab.retro.embedders import HashedNgramEmbedder
from xlab.retro.index import build_index_
from xlab.retro.neighbours import filter_neighbours, precompute_neighbours_

from .helpers import corpus_of


def repetitive_corpus(n_docs=40, seed=0):
    """Each document repeats its own phrase, so its nearest chunks are its own: the hard case."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        phrase = rng.integers(4, 2000, 16)
        docs.append(np.concatenate([[2], np.tile(phrase, int(rng.integers(2, 12))), [3]]))
    return corpus_of(docs)


def build(tmp_path, k, extra, corpus=None):
    tokens, offsets = corpus or repetitive_corpus()
    chunk_tokens_(tokens, offsets, tmp_path, chunk_size=16, seq_len=16)
    files = open_chunks(tmp_path)
    embedder = HashedNgramEmbedder(dim=64).fit(files["chunks"])
    embeddings = embedder.embed(files["chunks"])
    build_index_(embeddings, tmp_path / "index.faiss")
    stats = precompute_neighbours_(tmp_path / "index.faiss", embeddings, files["chunk_doc_ids"], k, extra,
                                   tmp_path / "neighbours.npy", batch_size=50)
    return np.load(tmp_path / "neighbours.npy", mmap_mode="r"), files["chunk_doc_ids"], stats


def test_same_document_neighbours_are_never_returned(tmp_path):
    neighbours, doc_ids, stats = build(tmp_path, k=3, extra=60)
    assert neighbours.shape == (len(doc_ids), 3) and neighbours.dtype == np.int64
    found = neighbours >= 0
    assert found.mean() > 0.9
    rows = np.broadcast_to(np.arange(len(doc_ids))[:, None], neighbours.shape)
    assert (doc_ids[neighbours[found]] != doc_ids[rows[found]]).all()
    assert stats["short_rows"] == int((~found).any(axis=1).sum())
    assert not (tmp_path / "neighbours.npy.tmp").exists()


def test_too_few_candidates_are_padded_with_minus_one(tmp_path):
    # No extra candidates: the own-document chunks found first leave most rows short.
    neighbours, doc_ids, stats = build(tmp_path, k=4, extra=0)
    assert neighbours.shape == (len(doc_ids), 4)
    assert (neighbours == -1).any() and stats["short_rows"] > 0
    # Padding only at the end of a row: found neighbours first, in rank order.
    found = neighbours >= 0
    assert (np.sort(found, axis=1)[:, ::-1] == found).all()


def test_k_larger_than_the_database(tmp_path):
    tokens, offsets = corpus_of([np.arange(4, 36), np.arange(40, 56)])  # 3 chunks in 2 documents
    neighbours, doc_ids, _ = build(tmp_path, k=5, extra=5, corpus=(tokens, offsets))
    np.testing.assert_array_equal(neighbours[:2], [[2, -1, -1, -1, -1], [2, -1, -1, -1, -1]])
    assert sorted(neighbours[2, :2]) == [0, 1] and (neighbours[2, 2:] == -1).all()


def test_filter_neighbours_keeps_rank_order():
    candidates = np.array([[5, 1, -1, 7, 2], [3, 4, 0, 6, 1]])
    doc_ids = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    kept = filter_neighbours(candidates, doc_ids, k=2, exclude_doc_ids=np.array([2, 1]), self_ids=np.array([1, 0]))
    np.testing.assert_array_equal(kept, [[7, 2], [4, 6]])
    np.testing.assert_array_equal(filter_neighbours(candidates, doc_ids, k=3), [[5, 1, 7], [3, 4, 0]])
