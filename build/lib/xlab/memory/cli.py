"""The memory family's part of infer.py: letting sampling write to the model's memory."""

from __future__ import annotations

import argparse

from xlab.common.errors import XLabError
from xlab.common.plugins import FrontEnd, option


def allow_memory_writes(loaded, args: argparse.Namespace) -> None:
    """With --memory-writes, sampling stores the prompt and the new text as training does."""
    if not args.memory_writes:
        return
    try:
        loaded.model.set_generation_writes(True)
    except XLabError as error:
        raise XLabError(f"--memory-writes needs a model with a memory, and this one has none ({error}): "
                        "drop the option or pass a MemoryGPT2 checkpoint.") from None


FRONT_END = FrontEnd(
    title="memory (MemoryGPT2)",
    options=(option("--memory-writes", action="store_true",
                    help="also store the prompt and the generated text in the memory, as training does, so "
                         "later text (and later prompts with --interactive) can recall it; by default "
                         "sampling only reads the saved memory. The checkpoint is never changed"),),
    prepare=allow_memory_writes,
)
