#!/usr/bin/env python3
"""Every XLabModel architecture option, trained the same way: does each one learn?

    python bench/architectures.py [--steps 100] [--threads 1] [--only positions=sinusoidal,norm=layernorm]

Trains a tiny XLabModel (2 layers, width 64, context 64) for the same steps on the embedded
corpus, for every combination of positions x norm x norm_position x activation x tie_weights
(bias on and off with LayerNorm, whose shift it switches; RMSNorm has none, so it runs without),
at two learning rates: the default recipe's (2e-3, warmup then cosine) and 3e-4 constant after
a short warmup (the original XLab's release setting). Prints a table of validation loss and
bits per byte, best first, and the gap of each row to the best of its learning rate: an option
that stalls stands out at the bottom. The reference is the best configuration of the same run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from bench.device import add_device_option, require_device, to_device  # noqa: E402
from xlab.datamodules import XLabDataModule  # noqa: E402
from xlab.models import XLabModel  # noqa: E402
from xlab.models.schedule import WarmupCosine  # noqa: E402

AXES = {"positions": ("learned", "sinusoidal", "rotary"), "norm": ("layernorm", "rmsnorm"),
        "norm_position": ("pre", "post"), "activation": ("gelu", "swiglu"), "tie_weights": (True, False)}
# name: (peak learning rate, warmup as a share of the steps, cosine floor; 1.0 is a constant rate)
SCHEDULES = {"default 2e-3 cosine": (2e-3, 50 / 300, 0.1), "3e-4 constant": (3e-4, 30 / 300, 1.0)}
SIZE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "max_len": 64, "dropout": 0.0}


def configurations(only: dict[str, str]) -> list[dict]:
    out = []
    for values in itertools.product(*AXES.values()):
        arch = dict(zip(AXES, values))
        for bias in ((True, False) if arch["norm"] == "layernorm" else (False,)):
            config = arch | {"bias": bias}
            if all(str(config[k]).lower() == v.lower() for k, v in only.items()):
                out.append(config)
    return out


def corpus(cache_dir: str, vocab_size: int) -> XLabDataModule:
    data = XLabDataModule(sources=[{"kind": "embedded"}], cache_dir=cache_dir, vocab_size=vocab_size,
                          max_len=SIZE["max_len"], batch_size=16)
    data.prepare_data()
    data.setup("fit")
    return data


def train(data: XLabDataModule, arch: dict, schedule: tuple, steps: int, seed: int = 0,
          val_batches: int | None = None, device: str = "cpu") -> dict:
    """Train with the model's own optimizer groups and schedule function; validation loss and bpb."""
    lr, warmup_share, floor = schedule
    torch.manual_seed(seed)
    model = XLabModel(vocab_size=data.vocab_size, learning_rate=lr, **SIZE, **arch).to(device)
    optimizer = torch.optim.AdamW(model.parameter_groups(0.1), lr=lr, betas=(0.9, 0.95))
    factor = WarmupCosine(max(1, round(warmup_share * steps)), steps, floor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loader = DataLoader(data.blocks("train"), batch_size=16, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    done, curve = 0, []
    while done < steps:
        for batch in loader:
            loss, _ = model.loss_and_stats(to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            curve.append(loss.item())
            done += 1
            if done == steps:
                break
    return {"curve": curve, **evaluate(model, data, val_batches)}


@torch.no_grad()
def evaluate(model, data: XLabDataModule, batches: int | None = None) -> dict:
    model.eval()
    nll = tokens = num_bytes = 0.0
    for i, batch in enumerate(DataLoader(data.blocks("val"), batch_size=64)):
        if batches is not None and i == batches:
            break
        _, stats = model.loss_and_stats(to_device(batch, model.device))
        nll, tokens, num_bytes = nll + float(stats["nll_sum"]), tokens + float(stats["tokens"]), num_bytes + float(stats["num_bytes"])
    return {"val_loss": nll / tokens, "bpb": nll / num_bytes / math.log(2)}


def label(arch: dict) -> str:
    return " ".join(str(arch[k]) if not isinstance(arch[k], bool) else ("tied" if k == "tie_weights" and arch[k]
                    else "untied" if k == "tie_weights" else "bias" if arch[k] else "no-bias") for k in arch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--cache-dir", default=None, help="corpus cache root (default: a temporary folder)")
    parser.add_argument("--only", default="", help="filter, e.g. positions=sinusoidal,norm=layernorm")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated: " + ", ".join(SCHEDULES))
    add_device_option(parser)
    args = parser.parse_args(argv)
    require_device(args.device)
    torch.set_num_threads(args.threads)
    only = dict(item.split("=", 1) for item in args.only.split(",") if item)
    with tempfile.TemporaryDirectory() as tmp:
        data = corpus(args.cache_dir or tmp, args.vocab_size)
        configs = configurations(only)
        print(f"{len(configs)} configurations x {len(args.schedules.split(','))} schedules, {args.steps} steps each, "
              f"batch 16 x {SIZE['max_len']} tokens, {args.threads} thread(s)", flush=True)
        for name in args.schedules.split(","):
            start, rows = time.perf_counter(), []
            for arch in configs:
                result = train(data, arch, SCHEDULES[name], args.steps, device=args.device)
                rows.append((result["val_loss"], result["bpb"], label(arch)))
                print(f"  {name}: {label(arch)}: val loss {result['val_loss']:.3f}", file=sys.stderr, flush=True)
            rows.sort()
            best = rows[0][0]
            print(f"\n## learning rate: {name} ({time.perf_counter() - start:.0f} s)\n")
            print("| rank | positions norm norm_position activation head bias | val loss | bpb | gap to best |")
            print("|---|---|---|---|---|")
            for rank, (loss, bpb, text) in enumerate(rows, 1):
                print(f"| {rank} | {text} | {loss:.3f} | {bpb:.3f} | {loss - best:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
