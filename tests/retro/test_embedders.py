"""Embedders: hashed n-gram TF-IDF, a locally saved tiny BERT, the factory, offline errors."""

import numpy as np
import pytest

from xlab.common.errors import XLabError
from xlab.retro.embedders import HashedNgramEmbedder, embed_chunks_, make_embedder

from .helpers import WordTokenizer, random_chunks


def test_hashed_embedder_finds_an_exact_duplicate_first():
    chunks = random_chunks(200, seed=1)
    chunks[150] = chunks[17]  # an exact duplicate
    embedder = HashedNgramEmbedder(dim=128, ngram=3).fit(chunks)
    vectors = embedder.embed(chunks)
    assert vectors.dtype == np.float32 and vectors.shape == (200, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    scores = vectors @ vectors[17]
    scores[17] = -np.inf  # not itself
    assert int(np.argmax(scores)) == 150
    assert scores[150] == pytest.approx(1.0, abs=1e-5)


def test_hashed_embedder_ignores_padding_and_is_deterministic():
    chunks = random_chunks(50, seed=2)
    padded = chunks.copy()
    padded[:, 20:] = 0
    embedder = HashedNgramEmbedder(dim=64).fit(chunks)
    again = HashedNgramEmbedder(dim=64).fit(chunks)
    np.testing.assert_array_equal(embedder.embed(chunks), again.embed(chunks))
    # A padded chunk resembles its own prefix more than any other chunk.
    sims = embedder.embed(padded) @ embedder.embed(chunks).T
    assert (np.argmax(sims, axis=1) == np.arange(50)).all()
    # Only its data-fitted IDF is state, and it round-trips.
    restored = HashedNgramEmbedder(dim=64)
    restored.load_state(embedder.state())
    np.testing.assert_array_equal(restored.embed(chunks), embedder.embed(chunks))
    assert embedder.fingerprint() == restored.fingerprint() != HashedNgramEmbedder(dim=32).fingerprint()


def test_embed_chunks_writes_a_memmap(tmp_path):
    chunks = random_chunks(300)
    embedder = make_embedder({"kind": "hashed", "dim": 32}).fit(chunks)
    path = embed_chunks_(embedder, chunks, tmp_path / "embeddings.npy", batch_size=64)
    stored = np.load(path, mmap_mode="r")
    assert stored.shape == (300, 32) and stored.dtype == np.float32
    np.testing.assert_array_equal(stored, embedder.embed(chunks))
    assert not (tmp_path / "embeddings.npy.tmp").exists()


def test_factory_rejects_unknown_kinds_and_keys():
    with pytest.raises(XLabError, match="unknown embedder kind"):
        make_embedder({"kind": "word2vec"})
    with pytest.raises(XLabError, match="unknown key"):
        make_embedder({"kind": "hashed", "dims": 64})
    with pytest.raises(XLabError, match="needs"):
        make_embedder({"kind": "hf"})
    assert make_embedder(None).fingerprint().startswith("hashed")


def test_hf_embedder_from_a_local_tiny_bert(tiny_bert):
    chunks = random_chunks(40, seed=3, pad_tail=5)
    chunks[30] = chunks[4]
    spec = {"kind": "hf", "name_or_path": tiny_bert, "batch_size": 16, "device": "cpu", "max_length": 64}
    embedder = make_embedder(spec, tokenizer=WordTokenizer())
    vectors = embedder.embed(chunks)
    assert vectors.shape == (40, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[30], vectors[4], atol=1e-6)
    # Batching and the length sort do not change a chunk's vector.
    np.testing.assert_allclose(embedder.embed(chunks[:7]), vectors[:7], atol=1e-5)
    cls = make_embedder({**spec, "pooling": "cls"}, tokenizer=WordTokenizer())
    assert not np.allclose(cls.embed(chunks[:3]), vectors[:3])
    # The fingerprint names the function (config and weights), and is stable across loads.
    fingerprint = embedder.fingerprint()
    assert "config=" in fingerprint and fingerprint == make_embedder(spec, tokenizer=WordTokenizer()).fingerprint()
    assert fingerprint != cls.fingerprint()


def test_hf_embedder_needs_the_corpus_tokenizer(tiny_bert):
    embedder = make_embedder({"kind": "hf", "name_or_path": tiny_bert, "device": "cpu"})
    with pytest.raises(XLabError, match="tokenizer"):
        embedder.embed(random_chunks(2))


@pytest.mark.parametrize("local_files_only", [True, False])
def test_hub_name_that_cannot_be_loaded_gives_one_line_error(local_files_only):
    # Not cached here and not on the hub: offline it fails on the cache, online with a 404; never a download.
    spec = {"kind": "hf", "name_or_path": "xlab-tests/no-such-encoder", "local_files_only": local_files_only}
    with pytest.raises(XLabError) as error:
        make_embedder(spec, tokenizer=WordTokenizer())
    message = str(error.value)
    assert "\n" not in message and "local" in message and "no-such-encoder" in message


def test_missing_local_directory_files_give_xlab_error(tmp_path):
    with pytest.raises(XLabError, match="directory"):
        make_embedder({"kind": "hf", "name_or_path": str(tmp_path)})
