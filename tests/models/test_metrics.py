"""LanguageModelMetrics: split-level numbers from sums, not averages of batch numbers, and the
same numbers when ranks' sums are merged (what the DDP sync does)."""

from __future__ import annotations

import math

import pytest
import torch

from xlab.models.metrics import LanguageModelMetrics

# (nll_sum, tokens, correct, bytes) of three batches of very different sizes
BATCHES = [(20.0, 10, 4, 30), (3.0, 1, 1, 2), (90.0, 50, 10, 160)]


def filled(batches) -> LanguageModelMetrics:
    metric = LanguageModelMetrics()
    for nll, tokens, correct, num_bytes in batches:
        metric.update(torch.tensor(nll), torch.tensor(tokens), torch.tensor(correct), torch.tensor(num_bytes))
    return metric


def test_numbers_come_from_sums_over_the_split():
    values = filled(BATCHES).compute()
    nll, tokens, correct, num_bytes = (sum(batch[i] for batch in BATCHES) for i in range(4))
    assert values["loss"].item() == pytest.approx(nll / tokens)
    # The mean of per-batch losses (2.0, 3.0, 1.8) would be 2.27, not 113 / 61.
    assert values["loss"].item() != pytest.approx(sum(b[0] / b[1] for b in BATCHES) / 3, abs=0.1)
    assert values["accuracy"].item() == pytest.approx(correct / tokens)
    assert values["perplexity"].item() == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert values["bpb"].item() == pytest.approx(nll / math.log(2) / num_bytes)
    assert all(value.dtype == torch.float32 for value in values.values())


def test_merged_ranks_give_the_whole_split():
    rank0, rank1 = filled(BATCHES[:1]), filled(BATCHES[1:])
    rank0.merge_state(rank1)  # reduces each state with its dist_reduce_fx, as the DDP sync does
    whole = filled(BATCHES).compute()
    for name, value in rank0.compute().items():
        torch.testing.assert_close(value, whole[name])


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_empty_split_and_reset_give_zeros_not_nan():
    metric = LanguageModelMetrics()
    values = metric.compute()
    assert values["loss"] == 0 and values["perplexity"] == 1 and values["bpb"] == 0 and values["accuracy"] == 0
    metric = filled(BATCHES)
    metric.reset()
    assert metric.compute()["loss"] == 0


def test_sums_are_kept_in_float64():
    """A float32 sum stops growing once it is 2**24 times the addend; long splits need float64."""
    metric = LanguageModelMetrics()
    for _ in range(3):
        metric.update(torch.tensor(1.0), torch.tensor(1), torch.tensor(0), torch.tensor(1))
    metric.update(torch.tensor(2.0 ** 25, dtype=torch.float32), torch.tensor(1), torch.tensor(0), torch.tensor(1))
    assert metric.nll.dtype == torch.float64 and metric.nll.item() == 2.0 ** 25 + 3
