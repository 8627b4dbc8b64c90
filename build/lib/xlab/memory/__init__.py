"""MemoryGPT2: GPT-2 with an associative memory it reads at its output and writes as it goes.

    model.py           MemoryGPT2
    access.py          the learned maps between the transformer and the memory
    decode_cache.py    the decoding cache: GPT-2's keys and values plus the reading state
    telemetry.py       what training logs about the memory
    gpt2_backbone.py   the GPT-2 transformer, from a config or a local pretrained folder
    associative.py     the memory itself (faiss indexes, eviction, fading, removals)
    store.py           the model's view of it: waiting votes, open documents, DDP agreement
    device_memory.py   the same memory held as tensors on a GPU
"""

from xlab.common.lazy import lazy_exports

# Imported when first asked for: the family's light modules (cli.py) need none of them.
_EXPORTS = {
    "AssociativeMemory": ".associative",
    "MemoryGPT2": ".model",
    "MemoryReadout": ".associative",
    "MemoryStore": ".store",
    "PendingDeletes": ".votes",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
