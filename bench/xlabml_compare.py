#!/usr/bin/env python3
"""XLabModel against the original XLab (`xlabml` 0.2.0 on PyPI), step for step on the same batches.

    pip install xlabml==0.2.0          # best in a virtual environment of its own (it pins little)
    python bench/xlabml_compare.py [--steps 300] [--layers 2] [--width 128] [--context 128] [--threads 1]

Both models take the original's release architecture, scaled down: sinusoidal positions,
LayerNorm before each sublayer and once more at the end, GELU, biases, an untied head, dropout
0.1, fp32. Both see the same batches of the embedded corpus in the same order, with AdamW at
3e-4, weight decay 0.1, 30 warmup steps then a constant rate, and gradient clipping at 1.0.
Prints the training loss of both, averaged over windows of steps, and the validation loss and
bits per byte at the end. XLab's should fall at least as fast as the original's.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from bench.device import add_device_option, require_device, to_device  # noqa: E402
from xlab.datamodules import XLabDataModule  # noqa: E402
from xlab.models import XLabModel  # noqa: E402
from xlab.models.schedule import WarmupCosine  # noqa: E402


def original_model(vocab: int, args):
    """The original's XLabModel in its release shape (prenorm + final norm, GELU, sublayer dropout)."""
    try:
        from xlabml import transformers as original
        from xlabml.models import XLabModel as Original
    except ImportError:
        sys.exit("xlabml is not installed: pip install xlabml==0.2.0 (in a virtual environment of its own) "
                 "to compare with the original XLab.")
    return Original(n_vocab=vocab, max_len=args.context, d_model=args.width, position=original.PositionalEncoding,
                    n_layers=args.layers, n_heads=args.heads, d_ff=4 * args.width, dropout=0.1, pos_drop=False,
                    prenorm=True, postnorm=True, activation=torch.nn.GELU(), block_drop=False)


def xlab_model(vocab: int, args) -> XLabModel:
    return XLabModel(vocab_size=vocab, max_len=args.context, n_layer=args.layers, n_head=args.heads, n_embd=args.width,
                     ffn_dim=4 * args.width, dropout=0.1, positions="sinusoidal", norm="layernorm", norm_position="pre",
                     activation="gelu", bias=True, tie_weights=False)


def logits_of(model, input_ids):
    return model(input_ids)


def optimizer_for(model, args):
    groups = model.parameter_groups(0.1) if isinstance(model, XLabModel) else [
        {"params": list(model.parameters()), "weight_decay": 0.1}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(30, args.steps, 1.0))


@torch.no_grad()
def evaluate(model, data, batches: int) -> tuple[float, float]:
    model.eval()
    nll = tokens = num_bytes = 0.0
    device = next(model.parameters()).device
    for i, batch in enumerate(DataLoader(data.blocks("val"), batch_size=16)):
        if i == batches:
            break
        batch = to_device(batch, device)
        logits = logits_of(model, batch["input_ids"])
        nll += float(F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum"))
        tokens += batch["labels"].numel()
        num_bytes += float(batch["num_bytes"].sum())
    model.train()
    return nll / tokens, nll / num_bytes / math.log(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--window", type=int, default=25, help="steps per averaged loss")
    parser.add_argument("--val-batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    add_device_option(parser)
    args = parser.parse_args(argv)
    require_device(args.device)
    torch.set_num_threads(args.threads)
    original_model(8, argparse.Namespace(context=8, width=8, layers=1, heads=1))  # fails early if xlabml is missing
    data = XLabDataModule(sources=[{"kind": "embedded"}], cache_dir=args.cache_dir, vocab_size=args.vocab_size,
                          max_len=args.context, batch_size=args.batch_size)
    data.prepare_data()
    data.setup("fit")
    vocab = data.vocab_size
    models = {}
    for name, build in (("original", original_model), ("xlab", xlab_model)):
        torch.manual_seed(0)
        model = build(vocab, args).to(args.device).train()
        models[name] = (model, *optimizer_for(model, args))
    curves = {name: [] for name in models}
    loader = DataLoader(data.blocks("train"), batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    step = 0
    while step < args.steps:
        for batch in loader:
            batch = to_device(batch, args.device)
            # Interleaved: the same batch for both, so machine noise and data order hit both alike.
            for name, (model, optimizer, scheduler) in models.items():
                logits = logits_of(model, batch["input_ids"])
                loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                curves[name].append(loss.item())
            step += 1
            if step == args.steps:
                break
    print(f"vocab {vocab}, {args.layers} layers x {args.width}, {args.heads} heads, FF {4 * args.width}, "
          f"context {args.context}, batch {args.batch_size}, {args.steps} steps, {args.threads} thread(s)")
    print(f"\n| steps | original train loss | xlab train loss |\n|---|---|---|")
    for start in range(0, args.steps, args.window):
        means = [sum(c[start:start + args.window]) / len(c[start:start + args.window]) for c in curves.values()]
        print(f"| {start + 1}-{min(start + args.window, args.steps)} | {means[0]:.3f} | {means[1]:.3f} |")
    print("\n| model | val loss | bpb |\n|---|---|---|")
    for name, (model, _, _) in models.items():
        loss, bpb = evaluate(model, data, args.val_batches)
        print(f"| {name} | {loss:.3f} | {bpb:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
