"""Beam search reorders the KV cache in place, filled positions only: the same hypotheses as the
old reorder that copied the whole cache into new tensors every step, and no new cache per step."""

from __future__ import annotations

import torch

from tests.helpers import sharp_model
from xlab import inference
from xlab.models.blocks import KVCache


def copying_reorder(self, index):
    """The reorder before: a fresh copy of every layer's whole buffer."""
    self.k = self.k.index_select(1, index)
    self.v = self.v.index_select(1, index)


def test_in_place_reorder_gives_the_old_hypotheses(monkeypatch):
    model = sharp_model()
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(4, 48, (n,), generator=generator) for n in (3, 9)]
    options = dict(output_length=24, num_beams=3, num_samples=3, length_penalty=0.7)  # slides past 16
    new = inference.sample(model, prompts, **options)
    buffers = []
    original = KVCache.reorder

    def watched(self, index):
        buffers.append((self.k.data_ptr(), self.v.data_ptr()))
        original(self, index)
        assert (self.k.data_ptr(), self.v.data_ptr()) == buffers[-1]  # same storage after the reorder

    monkeypatch.setattr(KVCache, "reorder", watched)
    assert [[t.tolist() for t in p] for p in inference.sample(model, prompts, **options)] == \
        [[t.tolist() for t in p] for p in new]
    assert len(buffers) > 10
    monkeypatch.setattr(KVCache, "reorder", copying_reorder)
    old = inference.sample(model, prompts, **options)
    assert [[t.tolist() for t in p] for p in old] == [[t.tolist() for t in p] for p in new]
