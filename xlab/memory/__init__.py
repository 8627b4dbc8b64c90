"""Memories a model reads from and writes to during its forward pass."""

from xlab.memory.associative import AssociativeMemory, MemoryReadout

__all__ = ["AssociativeMemory", "MemoryReadout"]
