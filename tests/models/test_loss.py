"""The blockwise next-token loss equals `F.cross_entropy(logits.float(), ...)` bit for bit: the loss
and the gradient of the logits, in fp32 and bf16, with ignored labels, whatever the block size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xlab.common.tokenizer import IGNORE_INDEX
from xlab.models import XLabModel
from xlab.models.loss import token_nll_sum


def old_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The LM step's loss before the blockwise version (a full fp32 copy of the logits)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_equals_cross_entropy_exactly(dtype, chunk):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 33, 517, generator=generator)).to(dtype)
    labels = torch.randint(0, 517, (4, 33), generator=generator)
    labels[:, :5] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX
    results = []
    for loss_fn in (old_loss, lambda x, y: token_nll_sum(x, y, chunk)):
        x = logits.clone().requires_grad_(True)
        loss = loss_fn(x, labels)
        (loss / 123.0).backward()
        results.append((loss.detach(), x.grad))
    (old, old_grad), (new, new_grad) = results
    assert new.dtype == torch.float32 and torch.equal(new, old)
    assert new_grad.dtype == dtype and torch.equal(new_grad, old_grad)


def test_training_losses_and_weights_are_unchanged():
    """Three AdamW steps of a small XLabModel: the new step and the old formula give the same
    losses and the same weights, bit for bit."""
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 61, (2, 17), generator=generator) for _ in range(3)]
    runs = []
    for new in (True, False):
        torch.manual_seed(0)
        model = XLabModel(vocab_size=61, max_len=16, n_layer=2, n_head=2, n_embd=32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for batch in batches:
            data = {"input_ids": batch[:, :-1], "labels": batch[:, 1:], "num_bytes": torch.zeros(2, dtype=torch.long)}
            if new:
                loss, _ = model.loss_and_stats(data)
            else:
                loss = old_loss(model(data["input_ids"]), data["labels"]) / data["labels"].numel()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.detach())
        runs.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
