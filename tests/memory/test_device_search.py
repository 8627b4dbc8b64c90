"""The search that runs on the queries' device (a matmul and a top-k over a device copy of the
slots) gives what the faiss path gives, through adds, removals, evictions, fading and reloads;
and the reused gather buffer never overwrites a result someone still holds.

A GPU is where that path runs for users; the routing set is widened to the CPU here so the same
code runs in the tests, against the host path on the same memory."""

import numpy as np
import pytest
import torch

from xlab.memory import AssociativeMemory, associative, device_search
from xlab.memory.selection import GatherBuffer

DIM = 12


def randn(n, seed):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def both_paths(memory, queries, k, monkeypatch):
    host = memory.search(queries, k)
    with monkeypatch.context() as patch:
        patch.setattr(associative, "SEARCH_ON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
        device = memory.search(queries, k)
    return host, device


def assert_same(host, device):
    assert torch.equal(host.ids, device.ids)
    assert torch.equal(host.mask, device.mask)
    assert torch.equal(host.vectors, device.vectors)
    torch.testing.assert_close(host.scores, device.scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_the_device_search_follows_every_change_of_the_memory(metric, monkeypatch):
    memory = AssociativeMemory(64, DIM, metric=metric, forgetfulness_factor=0.3, min_weight=0.4)
    queries = randn(9, seed=100)
    assert_same(*both_paths(memory, queries, 5, monkeypatch))  # empty: all invalid
    memory.add(randn(3, seed=1))
    assert_same(*both_paths(memory, queries, 5, monkeypatch))  # fewer entries than k
    memory.add(randn(40, seed=2), weights=torch.linspace(0.5, 1.0, 40))
    assert_same(*both_paths(memory, queries, 5, monkeypatch))
    memory.remove(torch.tensor([0, 5, 6, 30, 999]))  # the device copy is updated in place from here on
    assert_same(*both_paths(memory, queries, 5, monkeypatch))
    memory.add(randn(50, seed=3))  # evicts
    memory.step()  # fades the light ones
    assert_same(*both_paths(memory, queries, 7, monkeypatch))
    state = memory.state_dict()
    memory.reset()
    assert_same(*both_paths(memory, queries, 5, monkeypatch))
    memory.load_state_dict(state)
    assert_same(*both_paths(memory, queries, 5, monkeypatch))


def test_an_ivf_memory_searches_on_the_device_until_it_trains(monkeypatch):
    memory = AssociativeMemory(64, DIM, index_type="ivf", num_clusters=2, nprobe=1, train_multiple=20)
    memory.add(randn(30, seed=4))
    assert not memory.is_trained
    assert_same(*both_paths(memory, randn(6, seed=5), 4, monkeypatch))
    memory.add(randn(20, seed=6))
    assert memory.is_trained
    host, device = both_paths(memory, randn(6, seed=5), 4, monkeypatch)
    assert_same(host, device)  # trained: both go through faiss


def test_ids_map_to_slots_by_arithmetic_until_something_is_removed():
    memory = AssociativeMemory(32, DIM)
    memory.add(randn(10, seed=7))
    memory.add(randn(5, seed=8))
    assert memory._offset == 0
    want = memory.search(randn(4, seed=9), 3)
    memory.remove(torch.tensor([3]))
    assert memory._offset is None
    memory.remove(torch.tensor([-1]))
    readout = memory.search(randn(4, seed=9), 3)
    assert not (readout.ids == 3).any()
    memory.reset()
    memory.add(randn(4, seed=10))
    assert memory._offset == 15  # an empty memory fills in id order again


def test_the_gather_buffer_is_reused_only_when_nobody_holds_the_last_result():
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    gather = GatherBuffer(4)
    first = torch.from_numpy(gather.take(table, np.array([[1, 2]])))
    kept = first.clone()
    second = gather.take(table, np.array([[7, 8]]))
    assert torch.equal(first, kept)  # still held: the second search wrote elsewhere
    address = second.__array_interface__["data"][0]
    del first, second
    gather.take(table, np.array([[3, 4]]))
    third = gather.take(table, np.array([[5, 6]]))  # the previous result was dropped
    assert third.__array_interface__["data"][0] == address  # ... so its buffer was written again
    assert torch.equal(torch.from_numpy(third), torch.from_numpy(table[[5, 6]])[None])


def test_a_large_query_batch_is_scored_a_block_at_a_time_with_the_same_result(monkeypatch):
    memory = AssociativeMemory(64, DIM)
    memory.add(randn(50, seed=11))
    queries = randn(10, seed=12)
    host, whole = both_paths(memory, queries, 4, monkeypatch)
    monkeypatch.setattr(device_search, "SCORE_CELLS", 3 * 64)  # three queries per block
    _, blocks = both_paths(memory, queries, 4, monkeypatch)
    assert_same(host, blocks)
    assert_same(whole, blocks)
