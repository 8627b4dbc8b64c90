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

from xlab.errors import XLabError
from xlab.memory import MemoryStore, PendingDeletes
from xlab.memory.distributed import gather_rows

DIM = 6


def store(size=100, **settings) -> MemoryStore:
    return MemoryStore(memory_size=size, memory_dim=DIM, device="cpu", **settings)


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


def test_close_documents_returns_what_an_eos_ended_and_keeps_the_rest_open():
    s = store()
    # Row 0 stores at positions 0, 2, 3 and ends a document at 2; row 1 stores at 1, 3, no eos.
    stored = torch.tensor([[True, False, True, True], [False, True, False, True]])
    ends = torch.tensor([[False, False, True, False], [False, False, False, False]])
    new_ids = s.add(rows(5), age=False)  # row-major: row 0 -> 0, 1, 2; row 1 -> 3, 4
    assert s.close_documents(ends, stored, new_ids).tolist() == [0, 1]
    assert open_documents(s) == {0: [2], 1: [3, 4]}
    # Next block: row 1 ends at its first position, which stored nothing; row 0 goes on.
    stored, ends = torch.tensor([[True, False], [False, True]]), torch.tensor([[False, False], [True, False]])
    new_ids = s.add(rows(2, seed=1), age=False)  # 5 (row 0), 6 (row 1)
    assert sorted(s.close_documents(ends, stored, new_ids).tolist()) == [3, 4]
    assert open_documents(s) == {0: [2, 5], 1: [6]}


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


def test_gather_concatenates_every_rank_in_rank_order(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_gather_on_rank, args=(3, port, str(tmp_path)), nprocs=3, join=True)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
    for rank, offset in enumerate((0, 1, 3)):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(result["every"], expected) and result["offset"] == offset
