"""xlab/memory/associative.py: AssociativeMemory against brute force (flat, ivf, hnsw), eviction, fading,
removals, its state round trip, and bad settings."""

import io

import faiss
import numpy as np
import pytest
import torch

from xlab.common.errors import XLabError
from xlab.memory import AssociativeMemory

DIM = 16


def randn(n, dim=DIM, seed=0, offset=0.0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + offset


def brute_force(stored, ids, queries, k, metric):
    """Expected (ids, vectors, scores) of the k best stored entries per query."""
    if metric == "ip":
        scores = queries @ stored.T
        best = scores.topk(k, dim=1).indices
    else:
        scores = torch.cdist(queries, stored) ** 2
        best = scores.topk(k, dim=1, largest=False).indices
    return ids[best], stored[best], scores.gather(1, best)


def make(index_type="flat", size=1000, **kwargs):
    kwargs.setdefault("num_clusters", 4)
    kwargs.setdefault("nprobe", kwargs["num_clusters"])
    kwargs.setdefault("hnsw_ef_search", 200)
    return AssociativeMemory(size, DIM, index_type=index_type, **kwargs)


def assert_same_readout(a, b):
    for name in ("vectors", "scores", "ids", "mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_matches_brute_force(metric):
    memory = make("flat", metric=metric)
    stored, queries = randn(300, seed=1), randn(20, seed=2)
    ids = memory.add(stored)
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(300))
    readout = memory.search(queries, k=7)
    want_ids, want_vectors, want_scores = brute_force(stored, ids, queries, 7, metric)
    assert readout.vectors.shape == (20, 7, DIM) and readout.vectors.dtype == torch.float32
    assert torch.equal(readout.ids, want_ids)
    assert torch.equal(readout.vectors, want_vectors)
    assert torch.allclose(readout.scores, want_scores, rtol=1e-4, atol=1e-3)
    assert readout.mask.all()


def test_defaults_and_input_conversion():
    memory = AssociativeMemory(100, DIM, num_search_results=3)
    memory.add(randn(10).double())
    readout = memory.search(randn(2, seed=3).double())
    assert readout.ids.shape == (2, 3) and readout.vectors.dtype == torch.float32
    assert readout.ids.device == torch.device("cpu")


def test_ids_are_never_reused():
    memory = make("flat", size=5)
    first = memory.add(randn(5))
    memory.remove(first[:2])
    memory.reset()
    assert len(memory) == 0
    assert memory.add(randn(3, seed=1)).tolist() == [5, 6, 7]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_removed_ids_disappear_from_results(index_type):
    memory = make(index_type, metric="l2")
    stored = randn(400, seed=4)
    ids = memory.add(stored)
    queries = stored[:10]
    before = memory.search(queries, k=5)
    assert torch.equal(before.ids[:, 0], ids[:10])
    gone = before.ids.unique()
    removed = memory.remove(torch.cat([before.ids.flatten(), torch.tensor([-1, 10_000])]))
    assert removed == len(gone) and len(memory) == 400 - len(gone)
    after = memory.search(queries, k=5)
    assert after.mask.all()
    assert not torch.isin(after.ids, gone).any()
    live = ~torch.isin(ids, gone)
    want_ids, _, _ = brute_force(stored[live], ids[live], queries, 5, "l2")
    assert torch.equal(after.ids, want_ids)
    assert memory.remove(gone) == 0


def test_ivf_is_exact_until_trained_on_stored_vectors():
    memory = make("ivf", size=1000, num_clusters=4, metric="l2")  # trains at 39 * 4 = 156
    stored = randn(200, seed=5, offset=50.0)
    queries = randn(15, seed=6, offset=50.0)
    ids = memory.add(stored[:150])
    assert not memory.is_trained
    readout = memory.search(queries, k=5)
    assert torch.equal(readout.ids, brute_force(stored[:150], ids, queries, 5, "l2")[0])

    ids = torch.cat([ids, memory.add(stored[150:])])
    assert memory.is_trained
    ivf = faiss.extract_index_ivf(memory.index)
    assert ivf.is_trained and ivf.ntotal == 200 and ivf.nprobe == 4
    # Centroids come from the stored vectors (all near +50), not from zeros or noise.
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    assert np.abs(centroids.mean(axis=1) - 50.0).max() < 1.0
    readout = memory.search(queries, k=5)
    assert torch.equal(readout.ids, brute_force(stored, ids, queries, 5, "l2")[0])


def test_ivf_trains_at_capacity_when_smaller_than_the_multiple():
    memory = make("ivf", size=20, num_clusters=4)
    memory.add(randn(19))
    assert not memory.is_trained
    memory.add(randn(1, seed=1))
    assert memory.is_trained


def test_hnsw_tombstones_are_filtered_and_rebuilt():
    memory = make("hnsw", size=500, metric="l2", tombstone_fraction=0.25)
    stored = randn(200, seed=7)
    ids = memory.add(stored)
    memory.remove(ids[:40])
    assert memory.stats()["tombstones"] == 40 and memory.index.ntotal == 200
    readout = memory.search(stored[:40], k=3)
    assert readout.mask.all() and (readout.ids >= 40).all()
    memory.remove(ids[40:60])  # 60 tombstones > 25% of 200: rebuilt from live vectors
    assert memory.stats()["tombstones"] == 0 and memory.index.ntotal == 140
    readout = memory.search(stored[60:70], k=1)
    assert torch.equal(readout.ids[:, 0], ids[60:70])


def test_forgetfulness_drops_faded_entries():
    memory = make("flat", forgetfulness_factor=0.5, min_weight=0.1)
    old = memory.add(randn(5))
    memory.step()
    new = memory.add(randn(3, seed=1))
    assert [memory.step() for _ in range(2)] == [0, 0]  # old at 0.125, new at 0.25
    assert memory.stats()["mean_age"] == pytest.approx((5 * 3 + 3 * 2) / 8)
    assert memory.step() == 5  # old at 0.0625 < 0.1
    assert len(memory) == 3
    readout = memory.search(randn(4, seed=2), k=8)
    assert set(readout.ids[readout.mask].tolist()) == set(new.tolist())
    assert not torch.isin(readout.ids, old).any()
    assert memory.step() == 3 and len(memory) == 0


def test_no_forgetting_by_default():
    memory = make("flat")
    memory.add(randn(5))
    for _ in range(100):
        memory.step()
    assert len(memory) == 5 and memory.stats()["mean_weight"] == 1.0


def test_eviction_lowest_weight():
    memory = make("flat", size=4, eviction="lowest_weight")
    memory.add(randn(4), weights=torch.tensor([0.5, 0.1, 0.9, 0.3]))
    new = memory.add(randn(2, seed=1))
    assert len(memory) == 4
    assert memory.stats()["evictions"] == 2
    everything = memory.search(randn(1, seed=2), k=10)
    assert set(everything.ids[everything.mask].tolist()) == {0, 2, *new.tolist()}


def test_eviction_oldest_and_oversized_batch():
    memory = make("flat", size=4, eviction="oldest")
    memory.add(randn(4), weights=torch.tensor([0.5, 0.1, 0.9, 0.3]))
    memory.add(randn(2, seed=1))
    everything = memory.search(randn(1, seed=2), k=10)
    assert set(everything.ids[everything.mask].tolist()) == {2, 3, 4, 5}
    ids = memory.add(randn(6, seed=3))
    assert ids.tolist() == list(range(6, 12)) and len(memory) == 4
    everything = memory.search(randn(1, seed=2), k=10)
    assert set(everything.ids[everything.mask].tolist()) == {8, 9, 10, 11}
    assert memory.stats()["evictions"] == 2 + 4 + 2


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw", "ivf-untrained", "IVF4,Flat"])
def test_state_dict_round_trip(index_type):
    untrained = index_type == "ivf-untrained"
    index_type = "ivf" if untrained else index_type
    memory = make(index_type, nprobe=2, forgetfulness_factor=0.1)
    stored = randn(100 if untrained else 300, seed=8)
    ids = memory.add(stored)
    memory.remove(ids[::7])
    memory.step()
    queries = randn(12, seed=9)
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    restored = make(index_type, nprobe=2, forgetfulness_factor=0.1)
    restored.load_state_dict(state)
    assert restored.is_trained == (not untrained) == memory.is_trained
    assert len(restored) == len(memory) and restored.stats() == memory.stats()
    assert_same_readout(restored.search(queries, k=6), memory.search(queries, k=6))
    if index_type == "ivf" and not untrained:
        assert np.array_equal(
            faiss.extract_index_ivf(restored.index).quantizer.reconstruct_n(0, 4),
            faiss.extract_index_ivf(memory.index).quantizer.reconstruct_n(0, 4),
        )
    more = randn(60, seed=10)
    assert torch.equal(restored.add(more), memory.add(more))
    after, expected = restored.search(queries, k=6), memory.search(queries, k=6)
    assert torch.equal(after.ids, expected.ids)
    # Multi-threaded HNSW inserts may link the graph differently, which can change the last
    # float bits of a score (faiss batches distance computations by neighbour list).
    assert torch.allclose(after.scores, expected.scores, rtol=1e-5, atol=1e-5)


def test_state_dict_mismatch_is_a_clear_error():
    state = make("flat", size=100).state_dict()
    with pytest.raises(XLabError, match="memory_size=100"):
        make("flat", size=200).load_state_dict(state)
    with pytest.raises(XLabError, match="memory_dim"):
        AssociativeMemory(100, DIM + 1).load_state_dict(state)
    with pytest.raises(XLabError, match="index_type"):
        make("hnsw", size=100).load_state_dict(state)
    with pytest.raises(XLabError, match="not an AssociativeMemory"):
        make("flat", size=100).load_state_dict({"vectors": torch.zeros(1)})


def test_k_larger_than_stored_pads_with_minus_one():
    memory = make("flat")
    empty = memory.search(randn(3), k=4)
    assert (empty.ids == -1).all() and not empty.mask.any() and empty.vectors.shape == (3, 4, DIM)
    ids = memory.add(randn(2))
    readout = memory.search(randn(3, seed=1), k=4)
    assert readout.mask.tolist() == [[True, True, False, False]] * 3
    assert (readout.ids[:, 2:] == -1).all()
    assert set(readout.ids[0, :2].tolist()) == set(ids.tolist())
    assert (readout.vectors[:, 2:] == 0).all() and (readout.scores[:, 2:] == 0).all()


def test_hnsw_pads_when_only_tombstones_remain():
    memory = make("hnsw", tombstone_fraction=1.0)
    ids = memory.add(randn(10))
    memory.remove(ids[:8])
    readout = memory.search(randn(2, seed=1), k=5)
    assert readout.mask.sum(dim=1).tolist() == [2, 2]
    assert set(readout.ids[readout.mask].tolist()) == {8, 9}


def test_stats_counters_reset():
    memory = make("flat", size=3)
    memory.add(randn(5))
    memory.search(randn(4), k=2)
    memory.remove(torch.tensor([4]))
    stats = memory.stats(reset=True)
    assert stats["adds"] == 5 and stats["searches"] == 4 and stats["removes"] == 1
    assert stats["evictions"] == 2 and stats["occupancy"] == pytest.approx(2 / 3)
    assert memory.stats()["adds"] == 0


def test_factory_string_index():
    memory = make("HNSW8", metric="l2")
    stored = randn(50)
    ids = memory.add(stored)
    memory.remove(ids[:1])
    readout = memory.search(stored[:3], k=1)
    assert readout.ids[1:, 0].tolist() == ids[1:3].tolist() and readout.ids[0, 0] != ids[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(memory_size=0, memory_dim=DIM), "memory_size must be an integer >= 1, got 0"),
        (dict(memory_size=10, memory_dim=0), "memory_dim must be an integer >= 1, got 0"),
        (dict(memory_size=10, memory_dim=DIM, metric="cosine"), "unknown metric 'cosine': use one of ip, l2"),
        (dict(memory_size=10, memory_dim=DIM, eviction="random"), "unknown eviction 'random'"),
        (dict(memory_size=10, memory_dim=DIM, forgetfulness_factor=1.0), r"forgetfulness_factor must be in \[0, 1\)"),
        (dict(memory_size=10, memory_dim=DIM, forgetfulness_factor=-0.1), "got -0.1"),
        (dict(memory_size=10, memory_dim=DIM, num_search_results=0), "num_search_results must be an integer >= 1"),
        (dict(memory_size=10, memory_dim=DIM, index_type="ivf", num_clusters=11), "num_clusters=11, memory_size=10"),
        (dict(memory_size=10, memory_dim=DIM, index_type="ivf", num_clusters=4, nprobe=5), "nprobe must be in"),
        (dict(memory_size=10, memory_dim=DIM, index_type="IVF16,Flat"), "has 16 clusters but memory_size is 10"),
        (dict(memory_size=10, memory_dim=DIM, index_type="NoSuchIndex"), "unknown index_type 'NoSuchIndex'"),
        (dict(memory_size=10, memory_dim=DIM, index_type="IDMap,IVF2,Flat"), "drop the IDMap prefix"),
        (dict(memory_size=10, memory_dim=DIM, min_weight=-1.0), "min_weight must be >= 0, got -1.0"),
        (dict(memory_size=10.0, memory_dim=DIM), "memory_size must be an integer >= 1, got 10.0"),
        (dict(memory_size=10, memory_dim=DIM, device="tpu"), "unknown device 'tpu': use one of auto, cpu, cuda"),
    ],
)
def test_bad_construction_raises(kwargs, message):
    with pytest.raises(XLabError, match=message):
        AssociativeMemory(**kwargs)


def test_bad_calls_raise():
    memory = make("flat")
    with pytest.raises(XLabError, match="shape"):
        memory.add(torch.zeros(3, DIM + 1))
    with pytest.raises(XLabError, match="shape"):
        memory.add(torch.zeros(DIM))
    with pytest.raises(XLabError, match="NaN"):
        memory.add(torch.full((1, DIM), float("nan")))
    with pytest.raises(XLabError, match="weights"):
        memory.add(torch.zeros(2, DIM), weights=torch.ones(3))
    with pytest.raises(XLabError, match="shape"):
        memory.search(torch.zeros(2, DIM - 1))
    with pytest.raises(XLabError, match="k must"):
        memory.search(torch.zeros(2, DIM), k=0)
    assert len(memory) == 0


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("eviction", ["lowest_weight", "oldest"])
def test_random_operations_match_a_reference(index_type, eviction):
    """Adds, removals, fading and eviction in random order, checked against a plain dict."""
    generator, rng = torch.Generator().manual_seed(11), np.random.default_rng(11)
    capacity, factor, min_weight = 120, 0.2, 0.05
    memory = make(
        index_type, size=capacity, num_clusters=3, metric="l2", eviction=eviction,
        forgetfulness_factor=factor, min_weight=min_weight, tombstone_fraction=0.3,
    )
    reference = {}  # id -> [vector, weight]
    for _ in range(150):
        operation = rng.integers(3)
        if operation == 0:
            n = int(rng.integers(0, 40))
            vectors = torch.randn(n, DIM, generator=generator)
            weights = torch.rand(n, generator=generator) + 0.05
            while len(reference) + n > capacity:
                victim = min(reference) if eviction == "oldest" else min(
                    reference, key=lambda i: (reference[i][1], i)
                )
                del reference[victim]
            ids = memory.add(vectors, weights=weights)
            for i, vector, weight in zip(ids.tolist(), vectors, weights):
                reference[i] = [vector, weight]
        elif operation == 1 and reference:
            gone = rng.choice(list(reference), size=min(len(reference), 8), replace=False)
            memory.remove(torch.tensor(gone))
            for i in gone:
                del reference[i]
        else:
            memory.step()
            for i in list(reference):
                reference[i][1] = reference[i][1] * torch.tensor(1 - factor)
                if reference[i][1] < min_weight:
                    del reference[i]
        assert len(memory) == len(reference)
        queries, k = torch.randn(5, DIM, generator=generator), int(rng.integers(1, 8))
        readout = memory.search(queries, k)
        found = min(k, len(reference))
        assert readout.mask[:, :found].all() and not readout.mask[:, found:].any()
        if reference:
            ids = torch.tensor(sorted(reference))
            stored = torch.stack([reference[i][0] for i in sorted(reference)])
            want_ids, want_vectors, _ = brute_force(stored, ids, queries, found, "l2")
            assert torch.equal(readout.ids[:, :found], want_ids)
            assert torch.equal(readout.vectors[:, :found], want_vectors)
