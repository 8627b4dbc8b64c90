"""xlab.memory.index_copy: the searchable copy of the memory's faiss index (a GPU index on a GPU).

The suite runs without a GPU, so a CPU clone (`faiss.clone_index`) stands in for the GPU copy:
everything but the transfer is the code a GPU run takes. The memory with a copy must answer
exactly as the same memory without one, while its removals leave tombstones in the copy
instead of re-copying the index on the next search."""

import warnings

import faiss
import numpy as np
import pytest
import torch

from xlab.memory import AssociativeMemory, indexes
from xlab.memory.index_copy import GpuSearcher, IndexCopy

DIM = 8


def randn(n, seed=0):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


class CountedClone(IndexCopy):
    """A copy made with faiss.clone_index, counting how often it is made."""

    def __init__(self):
        super().__init__(self._clone)
        self.made = 0

    def _clone(self, index):
        self.made += 1
        return faiss.clone_index(index)


def memory_pair(index_type, **settings):
    """The same memory twice: one searching a copy, one searching its own index."""
    make = lambda: AssociativeMemory(400, DIM, index_type=index_type, num_clusters=4, nprobe=4,
                                     device="cpu", train_multiple=10, metric="l2", **settings)
    with_copy, plain = make(), make()
    with_copy._gpu = copy = CountedClone()
    return with_copy, plain, copy


def both(pair, method, *args):
    return [getattr(memory, method)(*args) for memory in pair]


def assert_same_search(pair, queries, k=6):
    a, b = both(pair, "search", queries, k)
    for name in ("ids", "mask", "vectors", "scores"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    return a


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_removals_leave_tombstones_in_the_copy_until_they_pass_the_fraction(index_type):
    with_copy, plain, copy = memory_pair(index_type, tombstone_fraction=0.25)
    pair = (with_copy, plain)
    ids = both(pair, "add", randn(200))[0]
    assert with_copy.is_trained
    queries = randn(16, seed=1)
    assert_same_search(pair, queries)
    assert copy.made == 1

    both(pair, "remove", ids[:40])  # 40 of 200: within a quarter of the copy
    found = assert_same_search(pair, queries)
    assert copy.made == 1, "a removal within the tombstone fraction re-made the copy"
    assert copy.total(with_copy.index) == 200 and len(with_copy) == 160
    assert not set(found.ids[found.mask].tolist()) & set(ids[:40].tolist())

    new = both(pair, "add", randn(20, seed=2))[0]  # adds reach the copy in place
    found = assert_same_search(pair, randn(20, seed=2), k=1)
    assert found.ids[:, 0].tolist() == new.tolist() and copy.made == 1

    both(pair, "remove", ids[40:100])  # 100 dead of 220: past the fraction, the copy goes
    assert copy.total(with_copy.index) == with_copy.index.ntotal
    assert_same_search(pair, queries)
    assert copy.made == 2 and copy.total(with_copy.index) == len(with_copy) == 120


def test_queries_that_find_only_tombstones_search_deeper():
    with_copy, plain, copy = memory_pair("flat", tombstone_fraction=0.9)
    pair = (with_copy, plain)
    near = randn(1, seed=3)
    ids = both(pair, "add", torch.cat([near + 0.01 * randn(30, seed=4), randn(30, seed=5) + 5]))[0]
    assert_same_search(pair, near)
    both(pair, "remove", ids[:30])  # every near neighbour of the query is now a tombstone in the copy
    found = assert_same_search(pair, near, k=4)
    assert found.mask.all() and (found.ids >= 30).all() and copy.made == 1


def test_training_and_a_reset_drop_the_copy():
    with_copy, plain, copy = memory_pair("ivf")
    pair = (with_copy, plain)
    both(pair, "add", randn(30))
    assert_same_search(pair, randn(4, seed=1))
    both(pair, "add", randn(20, seed=6))  # 50 stored: the ivf trains, a different index
    assert with_copy.is_trained and copy.total(with_copy.index) == 50
    assert_same_search(pair, randn(4, seed=1))
    assert copy.made == 2
    both(pair, "reset")
    assert copy.total(with_copy.index) == 0


def test_cpu_search_is_the_index_own_search():
    index = indexes.build_index("flat", dim=DIM, metric="ip", capacity=100, num_clusters=4, nprobe=2,
                                hnsw_m=8, hnsw_ef_search=40)
    index.add_with_ids(randn(40).numpy(), np.arange(40))
    searcher = GpuSearcher("cpu")
    assert not searcher.enabled
    queries = randn(3, seed=2).numpy()
    for a, b in zip(searcher.search(index, queries, 4), index.search(queries, 4)):
        assert np.array_equal(a, b)


@pytest.mark.skipif(indexes.gpu_available(), reason="faiss sees a GPU here")
def test_asking_for_cuda_without_a_gpu_warns_and_searches_on_the_cpu():
    with pytest.warns(UserWarning, match="faiss sees no GPU"):
        searcher = GpuSearcher("cuda")
    assert not searcher.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not GpuSearcher("auto").enabled  # auto falls back quietly
