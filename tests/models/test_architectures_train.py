"""Every positions option, and post-norm, learns: a short run of each ends near the best of them.

A position table far larger than the token embeddings once made `positions: sinusoidal` stall
while the others learned; bench/architectures.py runs the full grid, this is its quick guard.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from tests.helpers import xlab_data
from xlab.models import XLabModel
from xlab.models.schedule import WarmupCosine

STEPS = 120
MARGIN = 0.25  # nats; the stall left sinusoidal positions 0.8 nats behind here, the others are within 0.15
VARIANTS = {"learned": {"positions": "learned"}, "sinusoidal": {"positions": "sinusoidal"},
            "rotary": {"positions": "rotary"}, "post-norm": {"positions": "learned", "norm_position": "post"}}


def val_loss_after_training(data, arch: dict, schedule: tuple) -> float:
    lr, warmup, floor = schedule
    torch.manual_seed(0)
    model = XLabModel(vocab_size=data.vocab_size, max_len=32, n_layer=2, n_head=2, n_embd=32, norm="layernorm",
                      activation="gelu", bias=True, tie_weights=False, **arch)
    optimizer = torch.optim.AdamW(model.parameter_groups(0.1), lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, STEPS, floor))
    loader = DataLoader(data.blocks("train"), batch_size=8, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    step = 0
    while step < STEPS:
        for batch in loader:
            loss, _ = model.loss_and_stats(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == STEPS:
                break
    model.eval()
    with torch.no_grad():
        sums = [model.loss_and_stats(batch)[1] for batch in DataLoader(data.blocks("val"), batch_size=32)]
    return float(sum(s["nll_sum"] for s in sums) / sum(s["tokens"] for s in sums))


def test_every_positions_option_and_post_norm_learn(corpus_dir, tmp_path):
    data = xlab_data(corpus_dir, tmp_path, max_len=32)
    data.prepare_data()
    data.setup("fit")
    losses = {name: val_loss_after_training(data, arch, (2e-3, 10, 0.1)) for name, arch in VARIANTS.items()}
    best = min(losses.values())
    assert best < math.log(data.vocab_size) - 1.5, losses  # well past a uniform guess: something was learned
    behind = {name: round(loss - best, 3) for name, loss in losses.items() if loss > best + MARGIN}
    assert not behind, f"behind the best by more than {MARGIN} nats: {behind} (all: {losses})"
