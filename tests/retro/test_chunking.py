"""Chunking: shapes, padding at document ends, document ids, sequence starts, continuation rule."""

import numpy as np
import pytest

from xlab.common.errors import XLabError
from xlab.retro.chunking import chunk_tokens_, chunks_sha256, neighbour_tokens, open_chunks, sequence_starts

from .helpers import PAD, corpus_of, make_corpus


def test_chunks_are_padded_per_document(tmp_path):
    # Wrapped lengths 8, 5, 12 and chunk_size 4 -> 2 + 2 + 3 chunks; no chunk spans two documents.
    docs = [np.arange(10, 18), np.arange(20, 25), np.arange(30, 42)]
    tokens, offsets = corpus_of(docs)
    info = chunk_tokens_(tokens, offsets, tmp_path, chunk_size=4, pad_id=PAD, seq_len=8)
    files = open_chunks(tmp_path)
    chunks = files["chunks"]
    assert chunks.dtype == np.int32 and chunks.shape == (7, 4)
    assert info["n_chunks"] == 7 and info["n_docs"] == 3
    np.testing.assert_array_equal(chunks[0:2].reshape(-1), np.arange(10, 18))
    np.testing.assert_array_equal(chunks[2:4].reshape(-1), [20, 21, 22, 23, 24, PAD, PAD, PAD])
    np.testing.assert_array_equal(chunks[4:7].reshape(-1), np.arange(30, 42))
    np.testing.assert_array_equal(files["chunk_doc_ids"], [0, 0, 1, 1, 2, 2, 2])
    assert files["chunk_doc_ids"].dtype == np.int64
    np.testing.assert_array_equal(files["doc_chunk_offsets"], [0, 2, 4, 7])
    # m = 2 chunks per sequence: doc 0 -> [0], doc 1 -> [2], doc 2 (3 chunks) -> [4, 5] (end-aligned).
    np.testing.assert_array_equal(files["seq_starts"], [0, 2, 4, 5])


def test_streaming_matches_one_batch_and_handles_empty_documents(tmp_path):
    docs = [np.arange(4, 4 + n) % 97 + 4 for n in (1, 0, 130, 64, 0, 3, 200)]
    tokens, offsets = corpus_of(docs, dtype=np.uint32)
    chunk_tokens_(tokens, offsets, tmp_path / "one", chunk_size=16, pad_id=1, seq_len=64, batch_tokens=1 << 20)
    chunk_tokens_(tokens, offsets, tmp_path / "many", chunk_size=16, pad_id=1, seq_len=64, batch_tokens=7)
    one, many = open_chunks(tmp_path / "one"), open_chunks(tmp_path / "many")
    for name in one:
        np.testing.assert_array_equal(one[name], many[name])
    chunks, doc_ids = one["chunks"], one["chunk_doc_ids"]
    # Every document's tokens come back in order, followed only by padding (pad_id=1 here).
    for d, doc in enumerate(docs):
        rows = chunks[doc_ids == d].reshape(-1)
        assert len(rows) == -(-len(doc) // 16) * 16
        np.testing.assert_array_equal(rows[:len(doc)], doc)
        assert (rows[len(doc):] == 1).all()
    assert chunks_sha256(one["chunks"]) == chunks_sha256(many["chunks"])


def test_sequence_starts_stay_inside_documents():
    doc_chunk_offsets = np.array([0, 3, 4, 12, 19])  # 3, 1, 8, 7 chunks
    starts = sequence_starts(doc_chunk_offsets, m=4)
    np.testing.assert_array_equal(starts, [4, 8, 12, 15])
    doc_of = np.searchsorted(doc_chunk_offsets, starts, side="right") - 1
    assert (starts + 4 <= doc_chunk_offsets[doc_of + 1]).all()


def test_continuation_rule(tmp_path):
    docs = [np.arange(10, 18), np.arange(20, 25)]  # doc 0: chunks 0, 1; doc 1: chunks 2, 3
    tokens, offsets = corpus_of(docs)
    chunk_tokens_(tokens, offsets, tmp_path, chunk_size=4, seq_len=4)
    files = open_chunks(tmp_path)
    out = neighbour_tokens(files["chunks"], files["chunk_doc_ids"], np.array([[0, 1], [3, -1]]), pad_id=PAD)
    assert out.shape == (2, 2, 8) and out.dtype == np.int32
    np.testing.assert_array_equal(out[0, 0], np.arange(10, 18))  # chunk 0 + its continuation chunk 1
    np.testing.assert_array_equal(out[0, 1], [14, 15, 16, 17, PAD, PAD, PAD, PAD])  # next chunk is another doc
    np.testing.assert_array_equal(out[1, 0], [24, PAD, PAD, PAD, PAD, PAD, PAD, PAD])  # last chunk of the array
    assert (out[1, 1] == PAD).all()  # -1: no neighbour


def test_empty_split_and_bad_settings_raise(tmp_path):
    tokens, offsets = corpus_of([])
    with pytest.raises(XLabError, match="no tokens"):
        chunk_tokens_(tokens, offsets, tmp_path, chunk_size=4, seq_len=8)
    tokens, offsets = make_corpus([5, 6])
    with pytest.raises(XLabError, match="multiple of chunk_size"):
        chunk_tokens_(tokens, offsets, tmp_path, chunk_size=4, seq_len=10)
    with pytest.raises(XLabError, match="doc_offsets"):
        chunk_tokens_(tokens, offsets[:-1], tmp_path, chunk_size=4, seq_len=8)
