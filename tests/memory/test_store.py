"""xlab.memory.store, votes and distributed: the store owns every change of its state (writes,
votes, documents, epochs, setting aside), carries all of it through checkpoints, and gathers
what every rank writes in rank order."""

import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xlab.common.errors import XLabError
from xlab.memory import MemoryStore, PendingDeletes, associative
from xlab.memory.distributed import gather_rows

DIM = 6


def store(size=100, **settings) -> MemoryStore:
    return MemoryStore(memory_size=size, memory_dim=DIM, **{"device": "cpu", **settings})


def rows(n, seed=0):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def live_ids(s: MemoryStore) -> list[int]:
    return sorted(s.entries.state_dict()["ids"].tolist())


def votes(ids, states=4, dim=DIM):
    ids = torch.tensor(ids)
    return PendingDeletes(ids, torch.arange(len(ids) * states, dtype=torch.float).view(-1, states),
                          torch.ones(len(ids), dim))


# --- writes -------------------------------------------------------------------------------------
def test_add_returns_the_new_ids_and_ages_only_when_asked():
    s = store()
    assert s.add(rows(3), age=True).tolist() == [0, 1, 2]
    assert s.entries.stats()["mean_age"] == 0.0  # aged before the add: nothing was there
    assert s.add(rows(2, seed=1), age=False).tolist() == [3, 4]
    assert s.entries.stats()["mean_age"] == 0.0
    s.add(rows(0), age=True)
    assert s.entries.stats()["mean_age"] == 1.0  # all five aged once
    s.add(rows(5, seed=2), age=False)
    assert s.entries.stats()["mean_age"] == 0.5
    assert s.add(rows(0), age=False).dtype == torch.long


def test_remove_ignores_unknown_and_repeated_ids():
    s = store()
    s.add(rows(5), age=False)
    s.remove(torch.tensor([1, 1, 3, 99, -1]))
    assert live_ids(s) == [0, 2, 4]
    assert s.entries.stats()["removes"] == 2


# --- votes --------------------------------------------------------------------------------------
def test_waiting_votes_are_empty_ones_of_the_right_shapes_until_a_pass_casts_some():
    s = store()
    waiting = s.waiting_votes(torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(2, 3, 5, DIM))
    assert len(waiting) == 0 and waiting.ids.dtype == torch.long
    assert waiting.states.shape == (0, 4) and waiting.states.dtype == torch.float64
    assert waiting.entries.shape == (0, DIM) and s.pending is waiting


def test_settling_acts_on_the_waiting_votes_and_lets_the_new_ones_wait():
    s = store()
    s.add(rows(6), age=False)
    s.pending = votes([1, 2, 4])
    s.waiting_votes(torch.zeros(1, 4), torch.zeros(1, DIM))
    cast = votes([0, 5])
    deleted = s.settle_votes(torch.tensor([True, False, True]), cast)
    assert deleted.tolist() == [1, -1, 4] and s.pending is cast  # -1: a vote that did not carry
    assert live_ids(s) == list(range(6))  # settling decides; removing is the model's next call
    assert s.settle_votes(torch.tensor([False, False]), None).tolist() == [-1, -1] and s.pending is None


def test_votes_from_reads_average_the_readers_states_by_their_weights():
    # Two rows, two positions, k = 2. Entry 7 is read by (0, 0) with 0.5 and by (1, 1) with 0.25;
    # entry 3 by (0, 1) with 0.9; the 0.05 read of entry 9 is under the threshold, and the
    # invalid cell (entry 8) does not count however large its weight.
    ids = torch.tensor([[[7, 9], [3, 8]], [[9, 9], [7, 3]]])
    weights = torch.tensor([[[0.5, 0.05], [0.9, 0.8]], [[0.0, 0.0], [0.25, 0.0]]])
    valid = torch.tensor([[[True, True], [True, False]], [[True, True], [True, True]]])
    entries = ids[..., None].float().expand(2, 2, 2, DIM) * torch.ones(DIM)
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[5.0, 5.0], [4.0, 8.0]]])
    cast = PendingDeletes.from_reads(ids, weights, valid, entries, hidden, threshold=0.1)
    assert cast.ids.tolist() == [3, 7]  # sorted
    torch.testing.assert_close(cast.states, torch.tensor([[0.0, 2.0], [(0.5 * 1 + 0.25 * 4) / 0.75, 0.25 * 8 / 0.75]]))
    torch.testing.assert_close(cast.entries, torch.tensor([[3.0] * DIM, [7.0] * DIM]))
    assert PendingDeletes.from_reads(ids, weights * 0.01, valid, entries, hidden, threshold=0.1) is None


def test_fixed_size_votes_are_the_same_votes_padded_to_one_per_read_cell():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (3, 4, 2), generator=generator)
    weights = torch.rand(3, 4, 2, generator=generator)
    valid = torch.rand(3, 4, 2, generator=generator) < 0.8
    entries = ids[..., None].float() * torch.ones(DIM)
    hidden = torch.randn(3, 4, 5, generator=generator)
    cast = PendingDeletes.from_reads(ids, weights, valid, entries, hidden, threshold=0.3)
    fixed = PendingDeletes.from_reads_fixed(ids, weights, valid, entries, hidden, threshold=0.3)
    n = len(cast)
    assert len(fixed) == 3 * 4 * 2 and fixed.fixed and fixed.real.tolist() == [True] * n + [False] * (24 - n)
    assert torch.equal(fixed.ids[:n], cast.ids) and torch.equal(fixed.states[:n], cast.states)
    assert torch.equal(fixed.entries[:n], cast.entries)
    assert not fixed.states[n:].any() and not fixed.entries[n:].any()
    index, voted = fixed.lookup(ids)
    expected_index, expected_voted = cast.lookup(ids)
    assert torch.equal(voted, expected_voted) and torch.equal(index[voted], expected_index[voted])
    padded = cast.padded(30)
    assert torch.equal(padded.ids[:n], cast.ids) and padded.real.sum() == n and len(padded) == 30


def test_lookup_finds_the_vote_of_each_id():
    pending = votes([2, 5, 9])
    index, voted = pending.lookup(torch.tensor([[9, 4], [2, 11]]))
    assert voted.tolist() == [[True, False], [True, False]]
    assert index[voted].tolist() == [2, 0]
    index, voted = votes([]).lookup(torch.tensor([1, 2]))
    assert not voted.any() and index.tolist() == [0, 0]


# --- documents ----------------------------------------------------------------------------------
def open_documents(s: MemoryStore) -> dict[int, list[int]]:
    return {row: ids.tolist() for row, ids in s.open_documents.items()}


def placed(s: MemoryStore, on_device: bool, monkeypatch) -> MemoryStore:
    """`s` with its entries moved to a DeviceMemory (on CPU tensors) when `on_device`: what a
    search from a GPU does, the routing widened to the CPU as tests/memory/test_device_search.py does."""
    if on_device:
        monkeypatch.setattr(associative, "SEARCH_ON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
        s.search(rows(1), 1)
        assert s.on_device
    return s


@pytest.mark.parametrize("on_device", [False, True])
def test_write_returns_what_an_eos_ended_and_keeps_the_rest_open(on_device, monkeypatch):
    s = placed(store(device="auto"), on_device, monkeypatch)
    # Row 0 stores at positions 0, 2, 3 and ends a document at 2; row 1 stores at 1, 3, no eos.
    stored = torch.tensor([[True, False, True, True], [False, True, False, True]])
    ends = torch.tensor([[False, False, True, False], [False, False, False, False]])
    entries = rows(8).view(2, 4, DIM)
    closed = s.write(entries, stored, ends, age=False)  # row-major: row 0 -> 0, 1, 2; row 1 -> 3, 4
    assert closed[closed >= 0].tolist() == [0, 1]
    assert open_documents(s) == {0: [2], 1: [3, 4]}
    assert torch.equal(s.entries.state_dict()["vectors"], entries[stored])
    # Next block: row 1 ends at its first position, which stored nothing; row 0 goes on.
    stored, ends = torch.tensor([[True, False], [False, True]]), torch.tensor([[False, False], [True, False]])
    closed = s.write(rows(4, seed=1).view(2, 2, DIM), stored, ends, age=False)  # 5 (row 0), 6 (row 1)
    assert sorted(closed[closed >= 0].tolist()) == [3, 4]
    assert open_documents(s) == {0: [2, 5], 1: [6]}
    # Without ends documents are kept: nothing to close, nothing opened.
    assert len(s.write(rows(2, seed=2).view(1, 2, DIM), torch.tensor([[True, True]]), None, age=True)) == 0
    assert open_documents(s) == {0: [2, 5], 1: [6]} and live_ids(s) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("on_device", [False, True])
def test_a_saved_state_loads_wherever_the_entries_are(on_device, monkeypatch):
    s = placed(store(device="auto"), on_device, monkeypatch)
    ends = torch.tensor([[False, True, False], [False, False, False]])
    s.remove(s.write(rows(6).view(2, 3, DIM), torch.ones(2, 3, dtype=torch.bool), ends, age=True))
    s.remove(torch.tensor([3]))
    state = s.get_extra_state()
    assert state["ids"].tolist() == [2, 4, 5]  # 0 and 1 closed with their document, 3 removed
    live = {0: [2], 1: [4, 5]}  # the host's list still names 3; closing it later removes nothing
    assert {row: [i for i in ids if i != 3] for row, ids in open_documents(s).items()} == live
    again = placed(store(device="auto"), not on_device, monkeypatch)
    again.set_extra_state(state)
    assert again.digest() == s.digest()
    assert {row: [i for i in ids if i != 3] for row, ids in open_documents(again).items()} == live


# --- starting over ------------------------------------------------------------------------------
def filled() -> MemoryStore:
    s = store()
    s.add(rows(4), age=False)
    s.pending = votes([1, 3])
    s.open_rows, s.open_ids = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3])
    return s


def test_reset_empties_entries_votes_and_documents_but_ids_keep_counting():
    s = filled()
    s.reset()
    assert len(s.entries) == 0 and s.pending is None and s.open_documents == {}
    assert s.add(rows(1), age=False).tolist() == [4]


def test_a_new_epoch_empties_the_memory_only_when_asked_and_only_once():
    s = filled()
    s.begin_epoch(0, empty_if_new=True)  # the epoch that wrote it (a mid-epoch resume)
    assert len(s.entries) == 4
    s.begin_epoch(1, empty_if_new=False)
    assert len(s.entries) == 4 and s.epoch == 1
    s.begin_epoch(2, empty_if_new=True)
    assert len(s.entries) == 0 and s.pending is None and s.epoch == 2


def test_set_aside_starts_empty_and_put_back_restores_everything():
    s = filled()
    digest, pending, documents = s.digest(), s.pending, open_documents(s)
    s.set_aside()
    assert len(s.entries) == 0 and s.pending is None and s.open_documents == {}
    s.add(rows(3, seed=2), age=True)
    s.put_back()
    assert s.digest() == digest and s.pending is pending and open_documents(s) == documents
    s.put_back()  # nothing set aside: nothing changes
    assert s.digest() == digest


@pytest.mark.parametrize("on_device", [False, True])
def test_set_aside_and_put_back_keep_the_open_documents_wherever_the_entries_are(on_device, monkeypatch):
    s = placed(store(device="auto"), on_device, monkeypatch)
    ends = torch.tensor([[False, True, False], [False, False, False]])
    s.remove(s.write(rows(6).view(2, 3, DIM), torch.ones(2, 3, dtype=torch.bool), ends, age=False))
    digest, documents = s.digest(), open_documents(s)
    assert documents == {0: [2], 1: [3, 4, 5]}
    s.set_aside()
    assert len(s.entries) == 0 and s.open_documents == {}
    s.write(rows(6, seed=1).view(2, 3, DIM), torch.ones(2, 3, dtype=torch.bool), ends, age=True)
    s.put_back()
    assert s.on_device == on_device and s.digest() == digest and open_documents(s) == documents
    closed = s.write(rows(2, seed=2).view(2, 1, DIM), torch.zeros(2, 1, dtype=torch.bool),
                     torch.tensor([[False], [True]]), age=False)
    assert sorted(closed[closed >= 0].tolist()) == [3, 4, 5]  # row 1's document, written before the set-aside


# --- identity and checkpoints ---------------------------------------------------------------------
def test_digest_is_equal_for_equal_memories_and_only_for_them():
    a, b = store(), store()
    a.add(rows(5), age=False)
    b.add(rows(5), age=True)  # ages are not part of what is stored
    assert a.digest() == b.digest()
    b.remove(torch.tensor([2]))
    assert a.digest() != b.digest()
    assert store().digest() == store().digest() != a.digest()


def test_extra_state_carries_entries_votes_documents_and_epoch_through_a_weights_only_load():
    s = filled()
    s.epoch = 3
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)
    buffer.seek(0)
    restored = store()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.digest() == s.digest() and restored.epoch == 3
    for name in ("ids", "states", "entries"):
        assert torch.equal(getattr(restored.pending, name), getattr(s.pending, name)), name
    assert open_documents(restored) == {0: [2], 1: [0, 3]}
    empty = store()
    restored.load_state_dict(empty.state_dict())  # a state without votes or documents clears them
    assert restored.pending is None and restored.open_documents == {} and restored.epoch == 0


def test_a_foreign_or_mismatched_state_is_a_clear_error():
    with pytest.raises(XLabError, match="not a memory state: was it saved by MemoryGPT2"):
        store().set_extra_state(torch.zeros(3))
    with pytest.raises(XLabError, match="memory does not fit this model: .*memory_size=100.*memory_size=50"):
        store(size=50).set_extra_state(filled().get_extra_state())


# --- gathering across ranks ---------------------------------------------------------------------
def test_gather_without_a_process_group_returns_the_rows_as_they_are():
    x = rows(3)
    every, offset = gather_rows(x)
    assert every is x and offset == 0


def _gather_on_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = torch.full((rank + 1, 2), float(rank))  # ranks write different numbers of rows
        every, offset = gather_rows(mine)
        torch.save({"every": every, "offset": offset}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def on_ranks(fn, world: int, out) -> list:
    """Run `fn(rank, world, port, out)` in `world` gloo processes; what each saved to out/rank{r}.pt."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(fn, args=(world, port, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world)]


def test_gather_concatenates_every_rank_in_rank_order(tmp_path):
    results = on_ranks(_gather_on_rank, 3, tmp_path)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
    for result, offset in zip(results, (0, 1, 3)):
        assert torch.equal(result["every"], expected) and result["offset"] == offset


def _write_on_rank(rank: int, world: int, port: int, out: str) -> None:
    """The same writes, removals and votes through a host store and a device store, each rank
    with its own rows: what both leave, per rank, for the test to compare."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    associative.SEARCH_ON_DEVICE_TYPES = frozenset({"cuda", "cpu"})  # a fresh process: widened by hand
    try:
        results = {}
        for on_device in (False, True):
            s = store(device="auto")
            if on_device:
                s.search(rows(1), 1)
            assert s.on_device == on_device
            draws = torch.Generator().manual_seed(rank)
            for turn in range(3):
                stores = torch.rand(2, 4, generator=draws) < 0.7
                ends = torch.rand(2, 4, generator=draws) < 0.25
                s.remove(s.write(rows(8, seed=10 * turn + rank).view(2, 4, DIM), stores, ends, age=turn > 0))
                if turn == 0:  # votes of another size on each rank (as a resumed run holds): still gathered
                    s.pending = votes(list(range(rank + 1)))
                    waiting = s.waiting_votes(torch.zeros(1, 4), torch.zeros(1, DIM))
                    s.remove(s.settle_votes(torch.ones(len(waiting), dtype=torch.bool), None))
            state = s.get_extra_state()
            live = set(state["ids"].tolist())
            results[on_device] = {"digest": s.digest(), "size": len(live),
                                  "open": {row: [i for i in ids.tolist() if i in live]
                                           for row, ids in s.open_documents.items()}}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_write_the_same_memory_through_a_device_store_as_through_the_host_one(tmp_path):
    ranks = on_ranks(_write_on_rank, 2, tmp_path)
    assert len({rank[mode]["digest"] for rank in ranks for mode in (False, True)}) == 1
    assert ranks[0][True]["size"] > 0
    for rank in ranks:
        assert rank[True]["open"] == rank[False]["open"]
    assert ranks[0][True]["open"] != ranks[1][True]["open"]  # each rank's open documents are its own
