"""The memory a model writes through: its entries, its waiting delete votes, its open documents.

`MemoryStore` is the one owner of that state. The model tells it what happened (these entries
were stored, these votes were cast, these documents ended) and the store changes itself; every
change of the entries is gathered across data-parallel ranks first (see `distributed`), so all
ranks hold the same memory. The whole state travels in checkpoints as the module's extra state,
tensors only, so checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from xlab.common.errors import XLabError
from xlab.memory import associative
from xlab.memory.associative import AssociativeMemory, MemoryReadout
from xlab.memory.device_memory import DeviceMemory
from xlab.memory.distributed import gather_equal, gather_objects, gather_rows, largest
from xlab.memory.distributed import world_and_rank as _world
from xlab.memory.votes import PendingDeletes

# The parts of the saved state that belong to one data-parallel rank rather than to the shared
# entries: its rows' documents and waiting entries, the votes its reads cast, its open documents
# and its store draws.
READING_KEYS = ("rows", "next_serial", "carry", "pending_ids", "pending_states", "pending_entries",
                "open_rows", "open_ids", "draws")


class MemoryStore(nn.Module):
    """An AssociativeMemory (`entries`) plus the bookkeeping of delete votes and open documents.

    An exact memory whose model runs on a GPU (and whose `device` allows it) moves its entries
    to a DeviceMemory there on its first search, and back to the host when searched from the
    CPU: then a pass never waits for the device. Its writes, removals and votes then keep
    fixed sizes (padded, masked), and each entry written by an open document carries its row
    as a tag in the device memory instead of a growing list here. The saved state is the same
    either way.
    """

    def __init__(self, **memory_args):
        super().__init__()
        self.host = AssociativeMemory(**memory_args)
        self.entries: AssociativeMemory | DeviceMemory = self.host
        self.pending: PendingDeletes | None = None  # the last pass's votes, acted on by the next
        # The entries written since their row's last eos: their rows and ids, side by side.
        self.open_rows = self.open_ids = torch.empty(0, dtype=torch.long)
        self.epoch = 0  # the training epoch whose writes these are
        # Reading rows: the serial number of each row's current document, and each row's last
        # entry, still waiting for the token that follows it (the next pass's first token).
        # Both live on the device of the data once it is seen, so no pass waits for the host.
        self.rows = torch.empty(0, dtype=torch.long)
        self.next_serial = torch.tensor(0)
        self.carry: Tensor | None = None
        # The store decisions' own random draws (saved, so a resumed run draws the same).
        self.draws = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        self._saved: tuple | None = None

    def search(self, probes: Tensor, k: int) -> MemoryReadout:
        self._place(probes.device)
        return self.entries.search(probes, k)

    @property
    def on_device(self) -> bool:
        """Whether the entries are a DeviceMemory (writes, removals and votes in fixed sizes)."""
        return isinstance(self.entries, DeviceMemory)

    def _place(self, device: torch.device) -> None:
        """Move the entries to a DeviceMemory on `device`, or back to the host, as `device` asks."""
        resident = (device.type in associative.SEARCH_ON_DEVICE_TYPES and self.host.device != "cpu"
                    and self.host.index_type == "flat")
        if resident == self.on_device and (not resident or self.entries.device == device):
            return
        state = self._entries_state()
        self.entries = DeviceMemory.like(self.host, device) if resident else self.host
        self._load_entries(state)

    def _entries_state(self) -> dict[str, Tensor]:
        """The entries' state with the open documents (`open_rows`, `open_ids`) when there are any."""
        state = self.entries.state_dict()
        if not self.on_device:
            state.update(open_rows=self.open_rows.cpu(), open_ids=self.open_ids.cpu())
        if not len(state["open_ids"]):
            del state["open_rows"], state["open_ids"]
        return state

    def _load_entries(self, state: dict[str, Tensor]) -> None:
        self.entries.load_state_dict(state)
        empty = torch.empty(0, dtype=torch.long)
        if self.on_device:  # the device memory tags them
            self.open_rows = self.open_ids = empty
        else:
            self.open_rows = state.get("open_rows", empty).long()
            self.open_ids = state.get("open_ids", empty).long()

    # --- writes ---------------------------------------------------------------------------------
    def add(self, vectors: Tensor, age: bool, keep: Tensor | None = None, tags: Tensor | None = None) -> Tensor:
        """Age every entry (training steps only), then store the rows of `vectors` (N, D) where
        `keep` (N,) is True (all without it), with every rank's writes gathered first, in rank
        order, so all ranks add the same entries under the same ids. Returns the ids of this
        rank's rows (N,), -1 where not kept. `tags` (N,): the row of an open document that
        wrote each entry, -1 for none (a device memory keeps them; see `write`)."""
        if age:
            self.entries.step()
        vectors = vectors.detach().float()
        keep = torch.ones(len(vectors), dtype=torch.bool, device=vectors.device) if keep is None else keep
        if self.on_device:  # the same shape on every rank: gathered without asking for sizes
            every, offset = gather_equal(torch.cat([vectors, keep[:, None].float()], dim=1))
            if tags is not None:
                tags = torch.nn.functional.pad(tags, (offset, len(every) - offset - len(tags)), value=-1)
            ids = self.entries.add(every[:, :-1], every[:, -1] > 0, tags=tags)
            return ids[offset: offset + len(vectors)].to(vectors.device)
        ids = torch.full((len(vectors),), -1, dtype=torch.long, device=vectors.device)
        mine = vectors[keep]
        every, offset = gather_rows(mine)
        if len(every):
            # On its device still: a device copy of the memory takes it from there.
            ids[keep] = self.entries.add(every)[offset: offset + len(mine)].to(vectors.device)
        return ids

    def remove(self, ids: Tensor) -> None:
        """Remove the union of every rank's `ids` (-1, unknown and repeated ids are ignored)."""
        ids = ids.detach().to(torch.long).reshape(-1)
        if self.on_device:
            self.entries.remove(gather_equal(ids)[0])
            return
        every, _ = gather_rows(ids)
        if len(every):
            self.entries.remove(every.cpu())

    def write(self, entries: Tensor, stores: Tensor, ends: Tensor | None, age: bool) -> Tensor:
        """Store `entries` (B, T, D) where `stores` (B, T) is True (see `add`). With `ends` (B, T):
        True at an eos) the documents that ended are forgotten: returns the ids of their entries
        (for `remove`; -1 for no entry), and the entries after a row's last eos stay open, with
        what that row wrote before. Without `ends`, nothing (documents are kept)."""
        B, T = stores.shape
        flat = entries.reshape(B * T, -1)
        if ends is None:
            self.add(flat, age, stores.reshape(-1))
            return torch.empty(0, dtype=torch.long, device=entries.device)
        has_end = ends.any(1)
        last = torch.where(has_end, T - 1 - ends.flip(1).to(torch.uint8).argmax(1), -1)  # each row's last eos
        finished = torch.arange(T, device=ends.device) <= last[:, None]
        staying = stores & ~finished
        rows = torch.arange(B, device=ends.device)[:, None].expand(B, T)
        if self.on_device:
            if age:  # faded entries leave their tags before the closing rows are read
                self.entries.step()
            closing = self.entries.close_tags(has_end)
            ids = self.add(flat, False, stores.reshape(-1), torch.where(staying, rows, -1).reshape(-1)).view(B, T)
        else:
            ids = self.add(flat, age, stores.reshape(-1)).view(B, T)
            open_rows, open_ids = self.open_rows.to(ids.device), self.open_ids.to(ids.device)
            shut = torch.where(open_rows < B, has_end[open_rows.clamp(max=B - 1)], False)
            closing = open_ids[shut]
            self.open_rows = torch.cat([open_rows[~shut], rows[staying]])
            self.open_ids = torch.cat([open_ids[~shut], ids[staying]])
        return torch.cat([closing, torch.where(stores & finished, ids, -1).reshape(-1)])

    def cast_votes(self, ids: Tensor, weights: Tensor, valid: Tensor, entries: Tensor, hidden: Tensor,
                   threshold: float) -> PendingDeletes | None:
        """This pass's delete votes (see PendingDeletes.from_reads), in fixed sizes on a device memory."""
        cast = PendingDeletes.from_reads_fixed if self.on_device else PendingDeletes.from_reads
        return cast(ids, weights, valid, entries, hidden, threshold)

    # --- delete votes ---------------------------------------------------------------------------
    def waiting_votes(self, states_like: Tensor, entries_like: Tensor) -> PendingDeletes:
        """The votes the last pass cast, on the device of `states_like` (none yet: empty ones,
        with the dtypes of `states_like` (.., C) and `entries_like` (.., D))."""
        pending = self.pending
        if pending is None:
            pending = PendingDeletes(torch.empty(0, dtype=torch.long, device=entries_like.device),
                                     states_like.new_empty(0, states_like.shape[-1]),
                                     entries_like.new_empty(0, entries_like.shape[-1]))
        pending = pending.to(states_like.device)  # restored checkpoints hold CPU tensors
        if self.on_device and not pending.fixed:  # after a start or a resume: sizes every rank agrees on
            pending = pending.padded(largest(len(pending), states_like.device))
        self.pending = pending
        return pending

    def settle_votes(self, passed: Tensor, cast: PendingDeletes | None) -> Tensor:
        """Act on the waiting votes (`passed`: which of them carried) and let this pass's `cast`
        votes wait for the next. Returns the ids the carried votes delete, -1 for the others
        (`remove` ignores them), so no pass waits to learn how many carried."""
        deleted = torch.where(passed & self.pending.real, self.pending.ids, -1)
        self.pending = cast
        return deleted

    # --- documents ------------------------------------------------------------------------------
    @property
    def open_documents(self) -> dict[int, Tensor]:
        """Row -> ids written since that row's last eos."""
        rows, ids = self.entries.tagged() if self.on_device else (self.open_rows, self.open_ids)
        return {row: ids[rows == row] for row in rows.unique().tolist()}

    # --- reading rows ---------------------------------------------------------------------------
    def documents(self, ends: Tensor) -> Tensor:
        """The serial number of the document each token belongs to (B, T), given where the rows'
        documents end (`ends` (B, T): True at an eos, which still belongs to the ending document).
        A row seen for the first time starts a new document. Nothing changes until `advance`.
        Serial numbers are interleaved by rank (serial * world + rank), so rows of different
        data-parallel ranks never share a document."""
        B = ends.shape[0]
        self.rows, self.next_serial = self.rows.to(ends.device), self.next_serial.to(ends.device)
        rows = self._rows(B)[:B]
        before = ends.long().cumsum(1) - ends.long()  # eos tokens before each position
        counts = before[:, -1]  # documents opened inside the block (an eos at its end opens one in the next)
        first_new = self.next_serial + counts.cumsum(0) - counts
        world, rank = _world()
        fresh = (first_new[:, None] + before - 1) * world + rank
        return torch.where(before > 0, fresh, rows[:, None])

    def advance(self, documents: Tensor, ends: Tensor) -> None:
        """Commit the documents of a pass that writes: each row continues its last one."""
        B = documents.shape[0]
        rows = self._rows(B)
        ended_last = ends[:, -1]
        world, rank = _world()
        serial = self.next_serial + ends[:, :-1].sum()
        # A row whose last token is an eos opens a new document with its next token.
        opened = (serial + ended_last.long().cumsum(0) - 1) * world + rank
        rows[:B] = torch.where(ended_last, opened, documents[:, -1])
        self.next_serial = serial + ended_last.sum()
        self.rows = rows

    def _rows(self, count: int) -> Tensor:
        if len(self.rows) < count:
            world, rank = _world()
            extra = count - len(self.rows)
            fresh = (self.next_serial + torch.arange(extra, device=self.rows.device)) * world + rank
            self.rows = torch.cat([self.rows, fresh])
            self.next_serial = self.next_serial + extra  # a new tensor: saved states may hold the old one
        return self.rows.clone()

    def take_carry(self, rows: int) -> Tensor | None:
        """Each row's entry waiting for its next token (None if there is none for these rows)."""
        carry, self.carry = self.carry, None
        return carry if carry is not None and len(carry) == rows else None

    def keep_carry(self, entries: Tensor) -> None:
        """Each row's last entry, whose next token the next pass brings (`take_carry`)."""
        self.carry = entries

    def counted_votes(self) -> Tensor:
        """Which waiting votes are real: a device memory pads them to a fixed size."""
        return self.pending.real

    def store_draws(self, shape: torch.Size) -> Tensor:
        """Uniform draws for sampled store decisions, from the store's own generator (saved with it,
        so a resumed run draws the same, and the transformer's dropout draws stay as without a memory)."""
        return torch.rand(shape, generator=self.draws)

    # --- starting over --------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the entries and forget the waiting votes and open documents."""
        self.entries.reset()
        self.pending, self.carry = None, None
        self.open_rows = self.open_ids = torch.empty(0, dtype=torch.long)
        self.rows, self.next_serial = torch.empty(0, dtype=torch.long), torch.tensor(0)

    def begin_epoch(self, epoch: int, empty_if_new: bool) -> None:
        """Training epoch `epoch` starts; with `empty_if_new` the entries of an earlier epoch go.
        The epoch that wrote the memory is saved with it, so resuming mid-epoch keeps it."""
        if empty_if_new and self.epoch != epoch:
            self.reset()
        self.epoch = epoch

    def set_aside(self) -> None:
        """Start from an empty memory; `put_back` restores exactly what was there."""
        self._saved = (self._entries_state(), self.pending, self.rows, self.next_serial, self.carry)
        self.reset()

    def put_back(self) -> None:
        if self._saved is not None:
            state, self.pending, self.rows, self.next_serial, self.carry = self._saved
            self._load_entries(state)
            self._saved = None

    # --- identity and checkpoints ---------------------------------------------------------------
    def digest(self) -> str:
        """A fingerprint of the stored ids and vectors, equal on ranks holding the same memory."""
        state = self.entries.state_dict()
        order = state["ids"].argsort()
        h = hashlib.sha256(state["ids"][order].numpy().tobytes())
        h.update(state["vectors"][order].numpy().tobytes())
        return h.hexdigest()

    def get_extra_state(self) -> dict[str, Tensor]:
        """The entries plus the delete votes still waiting and the rows' open documents, so a
        resumed run continues exactly."""
        state = {**self._entries_state(), "epoch": torch.tensor(self.epoch), "rows": self.rows.cpu(),
                 "next_serial": self.next_serial.cpu(), "draws": self.draws.get_state()}
        if self.carry is not None:
            state["carry"] = self.carry.cpu()
        if self.pending is not None:
            state.update(pending_ids=self.pending.ids.cpu(), pending_states=self.pending.states.cpu(),
                         pending_entries=self.pending.entries.cpu())
        return state

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        if not isinstance(state, dict):
            raise XLabError("the checkpoint's memory is not a memory state: was it saved by MemoryGPT2?")
        try:
            self._load_entries(state)
        except XLabError as error:
            raise XLabError(f"the checkpoint's memory does not fit this model: {error}") from None
        self.epoch = int(state.get("epoch", 0))
        self.pending = None
        self.rows = state.get("rows", torch.empty(0, dtype=torch.long)).long()
        self.next_serial = torch.as_tensor(state.get("next_serial", 0)).long().cpu()
        self.carry = state.get("carry")
        if "draws" in state:
            self.draws.set_state(state["draws"].to(torch.uint8).cpu())
        if "pending_ids" in state:
            self.pending = PendingDeletes(state["pending_ids"], state["pending_states"], state["pending_entries"])


def every_ranks_reading(state: dict[str, Tensor]) -> list[dict[str, Tensor]] | None:
    """The rank-own parts of `state` (what `get_extra_state` gave on each rank), from every rank
    in rank order; None in a single process. A collective: every rank must call it."""
    return gather_objects({key: value for key, value in state.items() if key in READING_KEYS})


def with_this_ranks_reading(state: dict[str, Tensor], ranks: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """`state` (rank 0's, as checkpoints hold it) with this rank's own parts from `ranks`, when
    the run has as many ranks as the one that saved; otherwise `state` as it is."""
    world, rank = _world()
    if len(ranks) != world:
        return state
    return {**{key: value for key, value in state.items() if key not in READING_KEYS}, **ranks[rank]}
