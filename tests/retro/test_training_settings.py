"""RetroModel's training settings: the zero-initialised CCA output, the retrieval parts' learning
rate, the default CCA layers of shallow decoders."""

from __future__ import annotations

import pytest
import torch

from tests.retro.helpers import tiny_model
from xlab.common.errors import XLabError


def test_zero_init_starts_as_the_plain_decoder():
    model = tiny_model(cca_zero_init=True)
    ids, retrieved = torch.randint(4, 60, (2, 16)), torch.randint(4, 60, (2, 4, 2, 8))
    assert torch.equal(model(ids, retrieved), model(ids))
    for l in model.cross_layers:
        assert not model.layers[l].cca.c_proj.weight.any()
    # ... and only the output starts at zero: the CCA still learns from the first step.
    model.train()
    model(ids, retrieved).logsumexp(-1).mean().backward()
    assert all(model.layers[l].cca.c_proj.weight.grad.abs().sum() > 0 for l in model.cross_layers)


def test_retrieval_parts_get_their_own_learning_rate():
    model = tiny_model(retrieval_lr_scale=4.0, learning_rate=1e-3)
    groups = model.parameter_groups(0.1)
    mine = {id(p) for p in model.retrieval_parameters()}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted({id(p) for p in model.parameters()})  # each parameter once
    for group in groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= mine if group.get("lr") == pytest.approx(4e-3) else not ids & mine
    assert {id(p) for p in model.encoder.parameters()} <= mine
    assert id(model.wte.weight) not in mine  # shared with the decoder: the decoder's rate
    assert len(tiny_model().parameter_groups(0.1)) == 2  # scale 1: the base groups, unchanged
    with pytest.raises(XLabError, match="retrieval_lr_scale"):
        tiny_model(retrieval_lr_scale=0.0)


def test_clipping_apart_keeps_the_decoder_update_of_its_own_norm():
    ids, retrieved = torch.randint(4, 60, (2, 16)), torch.randint(4, 60, (2, 4, 2, 8))
    norms = {}
    for apart in (False, True):
        model = tiny_model(clip_retrieval_apart=apart).train()
        (model(ids, retrieved).logsumexp(-1).mean() * 100).backward()
        mine = {id(p) for p in model.retrieval_parameters()}
        model.clip_gradients_(1.0)
        parts = ([p.grad for p in model.parameters() if id(p) not in mine and p.grad is not None],
                 [p.grad for p in model.parameters() if id(p) in mine and p.grad is not None])
        norms[apart] = [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in part]))) for part in parts]
    assert sum(n ** 2 for n in norms[False]) == pytest.approx(1.0, rel=1e-4)  # one global norm of 1
    assert norms[True] == pytest.approx([1.0, 1.0], rel=1e-4)  # each part clipped to 1 on its own
