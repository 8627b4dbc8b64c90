"""Memories a model reads from and writes to during its forward pass."""

from xlab.memory.associative import AssociativeMemory, MemoryReadout
from xlab.memory.store import MemoryStore
from xlab.memory.votes import PendingDeletes

__all__ = ["AssociativeMemory", "MemoryReadout", "MemoryStore", "PendingDeletes"]
