"""xlab.memory.indexes: which faiss index each index_type builds, its settings, training,
removal support and serialization, and HNSW reseeding."""

import faiss
import numpy as np
import pytest

from xlab.common.errors import XLabError
from xlab.memory import indexes

DIM = 8


def build(index_type, capacity=1000, num_clusters=4, nprobe=2, hnsw_m=8, hnsw_ef_search=40, metric="ip"):
    return indexes.build_index(index_type, dim=DIM, metric=metric, capacity=capacity, num_clusters=num_clusters,
                               nprobe=nprobe, hnsw_m=hnsw_m, hnsw_ef_search=hnsw_ef_search)


def vectors(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)


def test_flat_is_an_exact_trained_index_with_ids_and_removal():
    index = build("flat", metric="l2")
    assert isinstance(index, faiss.IndexIDMap) and index.is_trained and index.metric_type == faiss.METRIC_L2
    assert indexes.supports_removal(index)
    stored = vectors(50)
    index.add_with_ids(stored, np.arange(100, 150))
    _, labels = index.search(stored[:5], 1)
    assert labels[:, 0].tolist() == list(range(100, 105))  # an exact index finds each vector itself
    index.remove_ids(np.array([100], dtype=np.int64))
    assert index.ntotal == 49


def test_ivf_is_not_wrapped_and_waits_for_training():
    index = build("ivf", num_clusters=4, nprobe=3)
    # IDMap over IVF would break removal (see the module docstring): IVF keeps ids itself.
    assert isinstance(index, faiss.IndexIVFFlat) and not index.is_trained
    assert index.nlist == 4 and index.nprobe == 3
    assert indexes.train_threshold(index, capacity=1000, multiple=39) == 4 * 39
    assert indexes.train_threshold(index, capacity=100, multiple=39) == 100  # a full memory always trains
    indexes.train(index, vectors(200), "ivf")
    assert index.is_trained and indexes.supports_removal(index)


def test_hnsw_gets_its_settings_and_cannot_remove():
    index = build("hnsw", hnsw_m=12, hnsw_ef_search=77)
    inner = faiss.downcast_index(index.index)
    assert isinstance(inner, faiss.IndexHNSWFlat) and inner.hnsw.efSearch == 77
    assert not indexes.supports_removal(index)
    assert index.ntotal == 0  # probing for removal changed nothing


def test_a_factory_string_is_wrapped_for_ids_and_pq_waits_for_its_codebook():
    index = build("PQ2x8")
    assert isinstance(index, faiss.IndexIDMap) and not index.is_trained
    assert indexes.train_threshold(index, capacity=100000, multiple=39) == 39 * 256
    ivf = build("IVF4,Flat")
    assert isinstance(ivf, faiss.IndexIVFFlat) and ivf.nprobe == 2


def test_configure_caps_nprobe_at_the_lists_and_wins_over_a_saved_index():
    index = build("ivf", num_clusters=4, nprobe=4)
    indexes.train(index, vectors(200), "ivf")
    restored = indexes.deserialize(indexes.serialize(index))
    indexes.configure(restored, nprobe=99, hnsw_ef_search=1)
    assert faiss.extract_index_ivf(restored).nprobe == 4
    indexes.configure(restored, nprobe=1, hnsw_ef_search=1)
    assert faiss.extract_index_ivf(restored).nprobe == 1


def test_serialize_round_trip_searches_the_same():
    index = build("flat")
    stored = vectors(60)
    index.add_with_ids(stored, np.arange(60))
    data = indexes.serialize(index)
    assert data.dtype == np.uint8
    restored = indexes.deserialize(data.astype(np.int64))  # any integer array of the bytes loads
    queries = vectors(7, seed=1)
    for a, b in zip(index.search(queries, 5), restored.search(queries, 5)):
        assert np.array_equal(a, b)


def test_reseeding_makes_hnsw_inserts_reproducible():
    def graph(seed):
        index = build("hnsw")
        indexes.reseed(index, seed)
        index.add_with_ids(vectors(300), np.arange(300))
        return indexes.serialize(index).tobytes()

    assert graph(5) == graph(5)
    assert graph(5) != graph(6)  # the seed does pick the levels


@pytest.mark.parametrize("settings, message", [
    (dict(index_type="ivf", num_clusters=11, capacity=10), "num_clusters <= memory_size, got num_clusters=11"),
    (dict(index_type="ivf", num_clusters=4, nprobe=5), r"nprobe must be in \[1, num_clusters=4\], got 5"),
    (dict(index_type="hnsw", hnsw_m=1), "hnsw_m must be >= 2, got 1"),
    (dict(index_type="hnsw", hnsw_ef_search=0), "hnsw_ef_search must be >= 1, got 0"),
    (dict(index_type="NoSuchIndex"), "unknown index_type 'NoSuchIndex': use 'flat', 'ivf', 'hnsw'"),
    (dict(index_type="IDMap,IVF2,Flat"), "drop the IDMap prefix"),
    (dict(index_type="IVF16,Flat", capacity=10), "has 16 clusters but memory_size is 10"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(XLabError, match=message) as error:
        build(**settings)
    assert "\n" not in str(error.value)


def test_a_failed_training_is_a_one_line_error():
    index = build("PQ2x8")
    with pytest.raises(XLabError, match=r"index_type 'PQ2x8' could not be trained on 10 stored vectors: ") as error:
        indexes.train(index, vectors(10), "PQ2x8")
    assert "\n" not in str(error.value)
