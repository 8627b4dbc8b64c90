"""The whole pipeline: files and manifest, resumability, reading neighbours, searching new chunks."""

import json
import pickle

import numpy as np
import pytest

from xlab.common.errors import XLabError
from xlab.retro.database import RetrievalDatabase, build_retrieval_database_

from .helpers import WordTokenizer, corpus_of, make_corpus

CHUNK = 16
ARTEFACTS = ("chunks.npy", "chunk_doc_ids.npy", "doc_chunk_offsets.npy", "seq_starts.npy", "embedder_state.npz",
             "embeddings.npy", "index.faiss", "index.report.json", "neighbours.npy")


def corpus_with_a_duplicate(seed=0):
    """40 random documents; document 39 is an exact copy of document 5."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[2], rng.integers(4, 3000, int(rng.integers(20, 200))), [3]]) for _ in range(39)]
    docs.append(docs[5].copy())
    return corpus_of(docs)


def build(out_dir, **overrides):
    tokens, offsets = corpus_with_a_duplicate()
    settings = dict(chunk_size=CHUNK, embedder={"kind": "hashed", "dim": 64}, k=2, num_extra_neighbors=8,
                    progress=False, seq_len=4 * CHUNK)
    return build_retrieval_database_(tokens, offsets, out_dir, **(settings | overrides))


def mtimes(out_dir):
    # Every write is a new file renamed into place, so the inode tells a rewrite even within one clock tick.
    return {name: ((out_dir / name).stat().st_ino, (out_dir / name).stat().st_mtime_ns) for name in ARTEFACTS}


def test_build_writes_every_artefact_and_a_manifest(tmp_path):
    db = build(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == db.manifest
    n = manifest["sizes"]["n_chunks"]
    files = manifest["files"]
    assert {key: files["chunks.npy"][key] for key in ("dtype", "shape")} == {"dtype": "int32", "shape": [n, CHUNK]}
    assert {key: files["neighbours.npy"][key] for key in ("dtype", "shape")} == {"dtype": "int64", "shape": [n, 2]}
    assert {key: files["embeddings.npy"][key] for key in ("dtype", "shape")} == {"dtype": "float32", "shape": [n, 64]}
    assert all(files[name]["bytes"] == (tmp_path / name).stat().st_size for name in ARTEFACTS)
    assert manifest["embedder"]["fingerprint"].startswith("hashed-ngram")
    assert len(manifest["chunks_sha256"]) == 64 and manifest["index"]["factory"] == "Flat"
    assert manifest["settings"]["k"] == 2 and manifest["sizes"]["n_docs"] == 40
    assert not list(tmp_path.rglob("*.tmp*"))
    assert db.identity()["chunks_sha256"] == manifest["chunks_sha256"]
    db.check_identity(db.identity())
    with pytest.raises(XLabError, match="differs"):
        db.check_identity({**db.identity(), "chunks_sha256": "0" * 64})


def test_second_build_reuses_everything_and_a_changed_k_redoes_only_neighbours(tmp_path):
    build(tmp_path)
    first = mtimes(tmp_path)
    build(tmp_path)
    assert mtimes(tmp_path) == first
    db = build(tmp_path, k=3)
    after = mtimes(tmp_path)
    assert after["neighbours.npy"] != first["neighbours.npy"]
    assert {name: t for name, t in after.items() if name != "neighbours.npy"} == {
        name: t for name, t in first.items() if name != "neighbours.npy"}
    assert db.k == 3 and db.neighbour_ids([0]).shape == (1, 3)


def test_an_interrupted_build_resumes_at_the_missing_step(tmp_path):
    build(tmp_path)
    first = mtimes(tmp_path)
    # As if the build died during the index step: its stamp is missing, the manifest too.
    (tmp_path / "steps" / "index.json").unlink()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(XLabError, match="not a complete"):
        RetrievalDatabase(tmp_path)
    build(tmp_path)
    after = mtimes(tmp_path)
    for name in ("chunks.npy", "embeddings.npy", "embedder_state.npz"):
        assert after[name] == first[name]
    assert after["index.faiss"] != first["index.faiss"]  # rebuilt, and with it the neighbours
    assert after["neighbours.npy"] != first["neighbours.npy"]
    assert (tmp_path / "manifest.json").is_file()


def test_neighbours_come_from_other_documents_and_find_the_duplicate(tmp_path):
    db = build(tmp_path)
    doc_ids = np.asarray(db.chunk_doc_ids)
    original, copy = (np.flatnonzero(doc_ids == d) for d in (5, 39))
    # The copy's chunks are exact duplicates: each one's first neighbour is its twin.
    np.testing.assert_array_equal(db.neighbour_ids(original)[:, 0], copy)
    np.testing.assert_array_equal(db.neighbour_ids(copy)[:, 0], original)
    ids = db.neighbour_ids(np.arange(len(db)))
    assert (doc_ids[ids[ids >= 0]] != np.repeat(doc_ids, 2)[(ids >= 0).reshape(-1)]).all()
    tokens = db.neighbours(original[:2])
    assert tokens.shape == (2, 2, 2 * CHUNK) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[0, 0, :CHUNK], db.chunks[copy[0]])
    # Excluding the twin's document as well leaves a valid neighbour from elsewhere (or -1).
    without = db.neighbour_ids(original[:2], exclude_doc_ids=39)
    assert not np.isin(without, copy).any()


def test_search_new_chunks(tmp_path):
    db = build(tmp_path)
    doc_ids = np.asarray(db.chunk_doc_ids)
    original, copy = (np.flatnonzero(doc_ids == d) for d in (5, 39))
    queries = np.asarray(db.chunks[original])
    found = db.search_ids(queries)
    assert np.isin(found[:, 0], np.concatenate([original, copy])).all()  # itself or its twin
    found = db.search_ids(queries, exclude_doc_ids=5)
    np.testing.assert_array_equal(found[:, 0], copy)
    assert db.search(queries, k=4).shape == (len(queries), 4, 2 * CHUNK)
    # A fresh handle rebuilds the hashed embedder from the manifest and its saved IDF.
    fresh = RetrievalDatabase(tmp_path)
    np.testing.assert_array_equal(fresh.search_ids(queries, exclude_doc_ids=5), found)
    with pytest.raises(XLabError, match="shape"):
        db.search(queries[:, :4])


def test_training_sequences_and_pickling(tmp_path):
    db = build(tmp_path)
    assert db.n_sequences == len(db.seq_starts) > 0
    seq, retrieved = db.sequence(0)
    assert seq.shape == (4 * CHUNK,) and retrieved.shape == (4, 2, 2 * CHUNK)
    start = int(db.seq_starts[0])
    assert len(set(np.asarray(db.chunk_doc_ids[start:start + 4]).tolist())) == 1  # one document
    clone = pickle.loads(pickle.dumps(db))  # e.g. into a DataLoader worker: reopens, copies no data
    assert len(pickle.dumps(db)) < 10_000
    np.testing.assert_array_equal(clone.sequence(0)[1], retrieved)


def test_empty_split_gives_xlab_error(tmp_path):
    tokens, offsets = corpus_of([])
    with pytest.raises(XLabError, match="no tokens"):
        build_retrieval_database_(tokens, offsets, tmp_path, progress=False)
    with pytest.raises(XLabError, match="not a complete"):
        RetrievalDatabase(tmp_path)


def test_build_with_a_local_hf_encoder(tmp_path, tiny_bert):  # noqa: F811
    tokens, offsets = make_corpus([30, 50, 70, 20], vocab=104)
    spec = {"kind": "hf", "name_or_path": tiny_bert, "device": "cpu", "max_length": 32}
    db = build_retrieval_database_(tokens, offsets, tmp_path, chunk_size=CHUNK, embedder=spec, k=2,
                                   tokenizer=WordTokenizer(), progress=True, seq_len=CHUNK)
    assert db.manifest["embedder"]["fingerprint"].startswith("hf-encoder")
    assert db.manifest["embedder"]["dim"] == 32
    assert db.neighbours(np.arange(3)).shape == (3, 2, 2 * CHUNK)
    assert RetrievalDatabase(tmp_path, tokenizer=WordTokenizer()).search(np.asarray(db.chunks[:2])).shape == (
        2, 2, 2 * CHUNK)


def cut_short(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


@pytest.mark.parametrize("name", ["neighbours.npy", "index.faiss", "manifest.json", "embedder_state.npz"])
def test_a_file_cut_short_since_the_build_is_refused(tmp_path, name):
    build(tmp_path)
    cut_short(tmp_path / name)
    with pytest.raises(XLabError, match=f"is damaged \\({name}.*delete that folder"):
        RetrievalDatabase(tmp_path)


def test_a_manifest_that_recorded_shapes_only_still_finds_a_file_cut_short(tmp_path):
    build(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for record in manifest["files"].values():
        if "shape" in record:
            del record["bytes"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    RetrievalDatabase(tmp_path)  # intact: opens
    cut_short(tmp_path / "chunks.npy")
    with pytest.raises(XLabError, match="damaged \\(chunks.npy is unreadable"):
        RetrievalDatabase(tmp_path)


def test_a_step_output_cut_short_during_an_interrupted_build_is_built_again(tmp_path):
    build(tmp_path)
    first = mtimes(tmp_path)
    (tmp_path / "manifest.json").unlink()  # the build died after the embeddings step ...
    cut_short(tmp_path / "embeddings.npy")  # ... whose file a full disk had cut short
    db = build(tmp_path)
    after = mtimes(tmp_path)
    assert after["embeddings.npy"] != first["embeddings.npy"] and after["chunks.npy"] == first["chunks.npy"]
    assert len(db) == len(np.load(tmp_path / "embeddings.npy", mmap_mode="r"))
