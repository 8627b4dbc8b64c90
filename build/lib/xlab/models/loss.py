"""Next-token loss without a full fp32 copy of the logits.

`F.cross_entropy(logits.float(), ...)` materialises a (tokens, vocab) fp32 copy of bf16 logits and
keeps an fp32 log-softmax of the same size alive until backward: at GPT-2's vocabulary and a
batch of 8 x 1024 tokens that is 1.6 GB each. Here the log-softmax is computed a block of rows
at a time, only each row's target log-probability is kept, and backward recomputes the block's
log-softmax from the logits (which stay in their own dtype). fp32 logits keep the log-softmax as
before: it is no bigger than the logits, and recomputing it made a CPU step measurably slower.

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
        ctx.save_for_backward(logits, targets, *kept)
        ctx.chunk = chunk
        return picked

    @staticmethod
    def backward(ctx, grad_picked: Tensor):
        logits, targets, *kept = ctx.saved_tensors
        grads = []
        for i, start in enumerate(range(0, logits.shape[0], ctx.chunk)):
            rows = slice(start, start + ctx.chunk)
            log_probs = kept[i] if kept else torch.log_softmax(logits[rows].float(), dim=-1)
            grad_log_probs = torch.zeros_like(log_probs).scatter_(1, targets[rows, None], grad_picked[rows])
            grad = torch.ops.aten._log_softmax_backward_data(grad_log_probs, log_probs, -1, torch.float32)
            grads.append(grad.to(logits.dtype))
        return (grads[0] if len(grads) == 1 else torch.cat(grads)), None, None


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
