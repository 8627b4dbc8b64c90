"""The output projection of a decoding step that carries one or two rows, on a CPU.

Such a step's logits are a matrix-vector product over the whole (vocab, width) head, which
dominates a small model's step (a third of GPT-2's at one row). CPU BLAS streams a weight stored
(width, vocab) about 1.6 times faster than nn.Linear's (vocab, width) at one or two rows (GPT-2's
head, one thread: 9.1 against 14.5 ms), and no faster from eight rows on. So decoding keeps a
transposed copy of the head for those steps, made on first use and made again whenever the
weight changes (an optimizer step, a load); training, evaluation and larger batches use the
weight itself. The copy costs one more head's worth of host memory while the model decodes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Most rows per step that the transposed copy serves; from eight rows on it is no faster.
MAX_ROWS = 2


class DecodeHead:
    """`head(x)` for a linear head without bias, through a transposed copy where that is faster."""

    def __init__(self) -> None:
        self._copy: Tensor | None = None
        self._made_from: tuple | None = None

    def __call__(self, head: nn.Linear, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or x.device.type != "cpu" or head.bias is not None or torch.is_grad_enabled():
            return head(x)
        weight = head.weight
        made_from = (weight.data_ptr(), weight._version, weight.dtype)
        if made_from != self._made_from:
            self._copy, self._made_from = weight.detach().t().contiguous(), made_from
        return x @ self._copy
