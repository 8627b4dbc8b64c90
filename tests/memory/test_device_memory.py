"""The memory held in tensors on one device keeps AssociativeMemory's rules exactly: the same ids,
vectors, ages, weights and counters after the same adds, masked adds, removals, evictions and
fading, the same search results, and states each can load from the other. It runs on CPU
tensors here; on a GPU it is the same code."""

import pytest
import torch

from xlab.common.errors import XLabError
from xlab.memory import AssociativeMemory
from xlab.memory.device_memory import DeviceMemory

DIM = 6


def randn(n, seed):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def pair(capacity=16, **settings):
    host = AssociativeMemory(capacity, DIM, **settings)
    return host, DeviceMemory.like(host, torch.device("cpu"))


def assert_same_state(host, device):
    mine, theirs = host.state_dict(), device.state_dict()
    for key in ("ids", "vectors", "ages", "weights", "next_id", "counters"):
        assert torch.equal(mine[key], theirs[key]), key
    assert len(host) == len(device)


def assert_same_search(host, device, queries, k=4):
    a, b = host.search(queries, k), device.search(queries, k)
    assert torch.equal(a.ids, b.ids)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.vectors, b.vectors)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eviction", ["lowest_weight", "oldest"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_every_operation_leaves_both_memories_the_same(eviction, metric):
    host, device = pair(eviction=eviction, metric=metric, forgetfulness_factor=0.2, min_weight=0.3)
    queries = randn(5, seed=99)
    assert_same_search(host, device, queries)  # empty
    steps = torch.Generator().manual_seed(0)
    for turn in range(30):
        n = int(torch.randint(0, 9, (1,), generator=steps))
        vectors = randn(n, seed=turn)
        keep = torch.rand(n, generator=steps) < 0.7
        weights = torch.rand(n, generator=steps) * 0.6 + 0.4
        expected = host.add(vectors[keep], weights=weights[keep])
        ids = device.add(vectors, keep, weights=weights)
        assert torch.equal(ids[keep], expected) and bool((ids[~keep] == -1).all())
        if turn % 3 == 0:
            host.step(), device.step()
        if turn % 4 == 1 and len(host):
            victims = host.state_dict()["ids"][::3]
            gone = torch.cat([victims, torch.tensor([-1, 10_000]), victims[:1]])  # unknown, repeated
            host.remove(gone), device.remove(gone)
        assert_same_state(host, device)
        assert_same_search(host, device, queries)
    assert host.stats()["evictions"] > 0 and host.stats()["faded"] > 0 and host.stats()["removes"] > 0
    for name, value in host.stats().items():
        assert device.stats()[name] == pytest.approx(value, rel=1e-6), name


def test_more_kept_rows_than_the_capacity_keep_the_last_ones():
    host, device = pair(capacity=4)
    vectors, keep = randn(9, seed=1), torch.tensor([1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    assert torch.equal(device.add(vectors, keep)[keep], host.add(vectors[keep]))
    assert_same_state(host, device)
    assert device.state_dict()["ids"].tolist() == [3, 4, 5, 6]


def test_states_load_across_the_two_and_keep_the_tags():
    host, device = pair()
    device.add(randn(10, seed=2), tags=torch.tensor([0, -1, 1, 1, -1, -1, 0, -1, -1, 2]))
    device.remove(torch.tensor([2]))
    state = device.state_dict()
    assert state["open_ids"].tolist() == [0, 3, 6, 9] and state["open_rows"].tolist() == [0, 1, 0, 2]
    host.load_state_dict(state)  # the host format, faiss index included
    assert_same_state(host, device)
    assert_same_search(host, device, randn(3, seed=5))
    again = DeviceMemory.like(host, torch.device("cpu"))
    again.load_state_dict(state)
    assert_same_state(host, again)
    closed = again.close_tags(torch.tensor([True, False, False]))
    assert sorted(closed[closed >= 0].tolist()) == [0, 6]
    assert again.state_dict()["open_ids"].tolist() == [3, 9]


def test_closing_tags_ignores_rows_past_the_batch():
    _, device = pair()
    device.add(randn(3, seed=3), tags=torch.tensor([0, 4, -1]))
    closed = device.close_tags(torch.tensor([True, True]))
    assert closed[closed >= 0].tolist() == [0]


def test_a_state_that_does_not_fit_is_refused_in_one_line():
    host = AssociativeMemory(16, DIM, index_type="ivf", num_clusters=2, nprobe=1)
    host.add(randn(4, seed=4))
    device = DeviceMemory(16, DIM, "ip", 0.0, 0.01, "lowest_weight", "cpu")
    with pytest.raises(XLabError, match="index_type='ivf', not 'flat'"):
        device.load_state_dict(host.state_dict())
    with pytest.raises(XLabError, match=r"shape \(N, 6\)"):
        device.add(torch.zeros(2, 5))
