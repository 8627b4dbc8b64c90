"""Corpus-level language-model metrics, summed over batches and ranks before dividing.

Averaging per-batch perplexities is biased; summing negative log-likelihood, tokens, correct
predictions and bytes and dividing at the end gives the exact split-level numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class LanguageModelMetrics(Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("nll", "tokens", "correct", "num_bytes"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, tokens: Tensor, correct: Tensor, num_bytes: Tensor) -> None:
        self.nll += nll_sum.detach().double()
        self.tokens += tokens.double()
        self.correct += correct.double()
        self.num_bytes += num_bytes.double()

    def compute(self) -> dict[str, Tensor]:
        loss = self.nll / self.tokens.clamp(min=1)
        return {
            "loss": loss.float(),
            "accuracy": (self.correct / self.tokens.clamp(min=1)).float(),
            "perplexity": loss.exp().float(),
            "bpb": (self.nll / math.log(2) / self.num_bytes.clamp(min=1)).float(),
        }
