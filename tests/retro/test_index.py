"""Index: automatic choice from the memory budget, quality report, explicit factories, errors."""

import json

import numpy as np
import pytest

from xlab.common.errors import XLabError
from xlab.retro.index import build_index_, choose_index_factory, exact_search, load_index, parse_memory, report_path


def clustered(n, dim=32, clusters=50, seed=0):
    """Unit vectors around random centres: structure an IVF index can exploit, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    # Stored as a memmap, as the database does.
    path = tmp_path_factory.mktemp("emb") / "embeddings.npy"
    np.save(path, clustered(3000))
    return np.load(path, mmap_mode="r")


def test_large_budget_picks_flat_and_reports_recall(embeddings, tmp_path):
    report = build_index_(embeddings, tmp_path / "index.faiss", max_index_memory_usage="1G")
    assert report["factory"] == "Flat" and report["chosen_automatically"]
    saved = json.loads(report_path(tmp_path / "index.faiss").read_text())
    assert saved["recall"] == pytest.approx(1.0, abs=0.01)
    assert saved["queries_per_s"] > 0 and saved["index_bytes"] > 3000 * 32 * 4
    assert load_index(tmp_path / "index.faiss").ntotal == 3000
    assert not list(tmp_path.glob("*.tmp"))


def test_tiny_budget_picks_a_compressed_ivf_that_fits(embeddings, tmp_path):
    with pytest.warns(UserWarning, match="no index that fits the memory budget"):  # PQ codes cap its recall
        report = build_index_(embeddings, tmp_path / "index.faiss", max_index_memory_usage="60K")
    assert report["factory"].startswith("IVF") and ",PQ" in report["factory"]
    assert report["estimated_bytes"] <= 60 * 1024
    assert report["index_bytes"] < 3000 * 32 * 4  # smaller than the raw vectors
    assert report["train_size"] > 0 and report["search_params"]["nprobe"] >= 1
    assert 0.2 < report["recall"] <= 1.0 and report["tuning"]
    assert json.loads(report_path(tmp_path / "index.faiss").read_text())["factory"] == report["factory"]


def test_automatic_choice_rules():
    assert choose_index_factory(1000, 64, 1 << 30)[0] == "Flat"
    # Flat would fit, but a million vectors are too many to brute-force every chunk's neighbours.
    assert choose_index_factory(1_000_000, 64, 1 << 40) == ("IVF2048,SQ8", 2048 * 64 * 4 + 1_000_000 * (64 + 8))
    assert choose_index_factory(1_000_000, 64, 50 << 20)[0] == "IVF2048,SQ4"
    factory, size = choose_index_factory(1_000_000, 64, 30 << 20)
    assert ",PQ" in factory and size <= 30 << 20
    assert "HNSW" in choose_index_factory(100_000_000, 64, 1 << 40)[0]  # many lists: HNSW coarse quantizer
    with pytest.raises(XLabError, match="too small"):
        choose_index_factory(1_000_000, 64, 1 << 20)


def test_explicit_factories_are_tuned(embeddings, tmp_path):
    report = build_index_(embeddings, tmp_path / "ivf.faiss", index_factory="IVF16,Flat")
    assert report["factory"] == "IVF16,Flat" and not report["chosen_automatically"]
    assert report["recall"] >= 0.9
    assert load_index(tmp_path / "ivf.faiss").nprobe == report["search_params"]["nprobe"]  # saved with the index
    # A search-time budget too small for more than the first nprobe keeps that one.
    with pytest.warns(UserWarning, match="search time budget stopped"):
        report = build_index_(embeddings, tmp_path / "ivf.faiss", index_factory="IVF16,Flat", target_recall=1.01,
                              search_time_budget_s=1e-6)
    assert report["search_params"]["nprobe"] == 1 and report["tuning"][-1]["over_time_budget"]
    report = build_index_(embeddings, tmp_path / "hnsw.faiss", index_factory="HNSW16")
    assert "efSearch" in report["search_params"] and report["recall"] >= 0.9
    with pytest.raises(XLabError, match="faiss cannot build"):
        build_index_(embeddings, tmp_path / "bad.faiss", index_factory="NoSuchIndex")


def test_errors_for_empty_database_and_tiny_budget(tmp_path):
    with pytest.raises(XLabError, match="empty"):
        build_index_(np.zeros((0, 16), np.float32), tmp_path / "index.faiss")
    with pytest.raises(XLabError, match="too small"):
        build_index_(clustered(2000), tmp_path / "index.faiss", max_index_memory_usage="1K")
    with pytest.raises(XLabError, match="not a size"):
        parse_memory("lots")
    assert parse_memory("1G") == 1 << 30 and parse_memory("512MB") == 512 << 20 and parse_memory(123) == 123
    assert not (tmp_path / "index.faiss").exists()


def test_exact_search_streams_blocks():
    x = clustered(500, dim=8)
    whole = exact_search(x, x[:20], 5, batch_size=10_000)
    streamed = exact_search(x, x[:20], 5, batch_size=37)
    np.testing.assert_array_equal(whole[:, 0], np.arange(20))  # each vector is its own best match
    assert all(set(a) == set(b) for a, b in zip(whole, streamed))


def test_recall_target_moves_to_finer_codes_within_the_budget(embeddings, tmp_path):
    """Quantised codes that cap the recall below the target give way to full vectors when those
    fit the budget; a target nothing reaches is a warning and says so in the report."""
    report = build_index_(embeddings, tmp_path / "index.faiss", exact_max_vectors=100, target_recall=0.999)
    assert report["kinds_tried"][0]["factory"].endswith(",SQ8") and len(report["kinds_tried"]) >= 2
    assert report["factory"].endswith("Flat") and report["recall"] >= 0.999 and report["target_reached"]
    assert report["kinds_tried"][0]["recall"] < 0.999
    with pytest.warns(UserWarning, match="target_recall"):
        report = build_index_(embeddings, tmp_path / "small.faiss", max_index_memory_usage="60K", target_recall=0.99)
    assert not report["target_reached"] and report["recall"] < 0.99 and report["target_recall"] == 0.99
