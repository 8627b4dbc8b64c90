"""The text of every sequence being decoded and the KV cache over each one's context window.

The model-facing protocol is all a model needs to decode with XLab:
`model.new_cache(batch_size, max_len)` returning a cache with `length`, `reset()` and
`reorder(index)`, and `model(input_ids, cache=, positions=, padding_mask=) -> logits`.

Rows are left-padded to a common length, so every row's newest token sits in the same column and
one forward pass of one token per row advances them all. Each row has its own window start: a row
whose text outgrows `block_size` keeps its last `keep` tokens, and the cache is rebuilt by
re-running the windows with fresh positions (learned and rotary positions both depend on where a
token sits in the window, so shifted keys cannot be reused). Rows that did not slide are rebuilt
too, with unchanged windows, so each row sees exactly what it would see decoded alone.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


class SlidingContext:
    """Token history (N, prompt + new) and the cache of N rows being decoded together.

    `start[i]` is the column where row i's window begins, `first[i]` where its real tokens begin
    (earlier columns are padding). Both are host-side lists: they change only when a window
    slides, which the host decides, so no step waits for the device to learn them.
    """

    def __init__(self, model, prompts: list[Tensor], block_size: int, keep: int, new_tokens: int, pad_id: int):
        self.model, self.block_size, self.keep = model, block_size, keep
        device = prompts[0].device
        self.prompt_len = max(len(p) for p in prompts)
        padded = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True, padding_value=pad_id, padding_side="left")
        self.tokens = torch.full((len(prompts), self.prompt_len + new_tokens), pad_id, dtype=torch.long, device=device)
        self.tokens[:, : self.prompt_len] = padded
        self.end = self.prompt_len  # columns [0, end) hold text
        self.first = [self.prompt_len - len(p) for p in prompts]
        self.start = list(self.first)
        for i, p in enumerate(prompts):
            if len(p) > block_size:
                warnings.warn(f"prompt of {len(p)} tokens is longer than the context of {block_size}: "
                              f"keeping its last {keep} tokens", stacklevel=4)
                self.start[i] = self.end - keep
        # The window never holds more than the whole text: a cache for all of block_size would
        # cost a large zeroed allocation (and beam reorders copy all of it) for short generations.
        self.cache = model.new_cache(len(prompts), max_len=min(block_size, self.prompt_len + new_tokens))
        self.columns = torch.arange(self.tokens.shape[1], device=device)
        self.first_columns = torch.tensor(self.first, device=device)

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    def prefill(self) -> Tensor:
        """Run every row's window through the model from an empty cache; logits (N, V) of the last token."""
        device = self.tokens.device
        origin = min(self.start)
        start = torch.tensor(self.start, device=device)[:, None]
        columns = self.columns[origin: origin + self.block_size]
        # True where a key is real text inside the row's window; columns past `end` are the
        # tokens still to come, which are always real.
        self._visible = columns[None, :] >= start  # (N, block_size)
        self._padded = any(s != origin for s in self.start)
        width = self.end - origin
        positions = (columns[None, :width] - start).clamp(min=0)  # (N, W)
        self._next_position = positions[:, -1:] + 1  # (N, 1)
        self.cache.reset()
        logits = self.model(self.tokens[:, origin: self.end], cache=self.cache, positions=positions,
                            padding_mask=self._visible[:, :width] if self._padded else None)
        return logits[:, -1]

    def append(self, token: Tensor) -> Tensor:
        """Add one token (N,) to every row; logits (N, V) predicting the token after it."""
        self.tokens[:, self.end] = token
        self.end += 1
        if self.end - min(self.start) > self.block_size:
            self._slide()
            return self.prefill()
        past = self.cache.length
        logits = self.model(token[:, None], cache=self.cache, positions=self._next_position,
                            padding_mask=self._visible[:, : past + 1] if self._padded else None)
        self._next_position = self._next_position + 1
        return logits[:, -1]

    def _slide(self) -> None:
        for i, s in enumerate(self.start):
            if self.end - s > self.block_size:
                self.start[i] = self.end - self.keep

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (beam search). Rows may only be exchanged with rows of the same
        prompt, which share `first` and `start`, so the host-side bookkeeping stays valid."""
        self.tokens = self.tokens.index_select(0, index)
        self.cache.reorder(index)

    def text(self) -> Tensor:
        """Every row's tokens so far (N, end); columns before `first[i]` are padding."""
        return self.tokens[:, : self.end]
