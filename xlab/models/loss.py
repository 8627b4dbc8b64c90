"""Next-token loss without a full fp32 copy of the logits.

`F.cross_entropy(logits.float(), ...)` materialises a (tokens, vocab) fp32 copy of bf16 logits and
keeps an fp32 log-softmax of the same size alive until backward: at GPT-2's vocabulary and a
batch of 8 x 1024 tokens that is 1.6 GB each. Here the log-softmax is computed a block of rows
at a time, only each row's target log-probability is kept, and backward recomputes the block's
log-softmax from the logits (which stay in their own dtype). fp32 logits keep the log-softmax as
before (recomputing it made a CPU step measurably slower) but not the logits, which backward then
does not read and which are freed after the forward; backward writes each block's gradient into
one buffer, a few hundred rows at a time, instead of a logits-sized one-hot gradient and a copy.
On a CPU at batch 16 x 256 and an 8k vocabulary (131 MB of logits) that took the peak resident
memory of a process training a 4 x 256 XLabModel from 1,464 and 1,555 MiB to 1,305 and 1,329 MiB
(two runs each).

The result is bit for bit the old one, on purpose: per row the same aten kernels run on the same
values (`log_softmax`, then its backward), and the sum over tokens is the same `nll_loss` call
reading the same values in the same order (its reduction order depends only on the row count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xlab.common.tokenizer import IGNORE_INDEX

# Rows per block: 4096 rows of a 50k vocabulary are 800 MB of fp32, a few percent of a GPU's memory.
CHUNK_ROWS = 4096
# Rows per backward pass over a kept fp32 block: the one-hot gradient of this many rows is all
# backward allocates beside the result (512 rows of an 8k vocabulary: 16 MB).
BACKWARD_ROWS = 512


class _TargetLogProbs(torch.autograd.Function):
    """log_softmax(logits.float())[row, target] for every row (N, 1), computed in blocks."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk: int) -> Tensor:
        picked = logits.new_empty(logits.shape[0], 1, dtype=torch.float32)
        # fp32 logits: keeping each block's log-softmax costs what the logits do (as before) and
        # spares backward its recomputation; lower precision: recompute, never hold fp32 blocks.
        keep = logits.dtype == torch.float32
        kept = []
        for start in range(0, logits.shape[0], chunk):
            rows = slice(start, start + chunk)
            log_probs = torch.log_softmax(logits[rows].float(), dim=-1)
            picked[rows] = log_probs.gather(1, targets[rows, None])
            if keep:
                kept.append(log_probs)
        # Kept log-softmax blocks are all backward reads: the fp32 logits are not saved, so they are
        # freed as soon as the caller drops them.
        ctx.save_for_backward(*(() if keep else (logits,)), targets, *kept)
        ctx.chunk, ctx.shape, ctx.dtype = chunk, logits.shape, logits.dtype
        return picked

    @staticmethod
    def backward(ctx, grad_picked: Tensor):
        if ctx.dtype == torch.float32:
            targets, *kept = ctx.saved_tensors
            return _kept_backward(grad_picked, targets, kept, ctx.chunk, ctx.shape), None, None
        logits, targets = ctx.saved_tensors
        grads = []
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            log_probs = torch.log_softmax(logits[rows].float(), dim=-1)
            grad_log_probs = torch.zeros_like(log_probs).scatter_(1, targets[rows, None], grad_picked[rows])
            grad = torch.ops.aten._log_softmax_backward_data(grad_log_probs, log_probs, -1, torch.float32)
            grads.append(grad.to(logits.dtype))
        return (grads[0] if len(grads) == 1 else torch.cat(grads)), None, None


def _kept_backward(grad_picked: Tensor, targets: Tensor, kept: list[Tensor], chunk: int, shape) -> Tensor:
    """The fp32 logits' gradient from the kept log-softmax blocks, written in place a few rows at a
    time: the same kernel on the same rows as one call per block, so the same values."""
    grad = grad_picked.new_empty(shape)
    for block, start in zip(kept, range(0, shape[0], chunk)):
        for offset in range(0, block.shape[0], BACKWARD_ROWS):
            log_probs = block[offset:offset + BACKWARD_ROWS]
            rows = slice(start + offset, start + offset + log_probs.shape[0])
            grad_log_probs = torch.zeros_like(log_probs).scatter_(1, targets[rows, None], grad_picked[rows])
            torch.ops.aten._log_softmax_backward_data.out(grad_log_probs, log_probs, -1, torch.float32,
                                                          out=grad[rows])
    return grad


def token_nll_sum(logits: Tensor, labels: Tensor, chunk: int = CHUNK_ROWS) -> Tensor:
    """Summed next-token negative log-likelihood (fp32 scalar) of logits (..., V) for labels (...),
    skipping IGNORE_INDEX; equal to `F.cross_entropy(logits.float(), labels, reduction="sum")`."""
    flat, targets = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    valid = targets != IGNORE_INDEX
    picked = _TargetLogProbs.apply(flat, torch.where(valid, targets, 0), chunk)
    # nll_loss reads only column 0 of each valid row: the same sum, in the same order, as before.
    column = torch.where(valid, 0, IGNORE_INDEX)
    return F.nll_loss(picked, column, ignore_index=IGNORE_INDEX, reduction="sum")


def token_stats(logits: Tensor, labels: Tensor, chunk: int = CHUNK_ROWS) -> tuple[Tensor, Tensor, Tensor]:
    """(nll_sum, valid (...) bool, hits (...) bool): what the LM step needs from the logits, in one
    function so that `compile` can take the loss together with the forward."""
    valid = labels != IGNORE_INDEX
    hits = (logits.argmax(-1) == labels) & valid
    return token_nll_sum(logits, labels, chunk), valid, hits
