#!/usr/bin/env python3
"""The modern training recipe against a nanoGPT-style baseline, switch by switch.

    python bench/recipe.py [--quick] [--sizes default,4x] [--corpora embedded,stdlib] [--steps N]
                           [--threads 1] [--cache-dir DIR] [--device cpu]

For each size and corpus, trains on the same batches in the same order (same seed, same tokens):
  (a) baseline   nanoGPT-style: learned positions, LayerNorm, GELU, biases, tied head, AdamW 6e-4,
                 betas 0.9/0.95, warmup + cosine
  (b) default    today's conf/defaults.yaml model (rotary, RMSNorm, SwiGLU, no biases, AdamW 2e-3, cosine)
  (c) new        (b) with every recipe switch (NEW below)
  (d) new - X    (c) without one switch at a time
  (e) new + X    (c) with a switch it leaves out (soft-cap, document masking, value embeddings)
and prints each row's final validation loss and bits per byte; for (b), (c) and (d) the fraction
of the baseline's tokens at which the row's validation loss (measured every 1/10th of the run)
first reaches the baseline's final one, and their wall-clock per training step relative to the
baseline's (Muon's orthogonalisation costs time: both are shown). Step times are measured apart
from training, every row in turn on the same batch for several rounds, medians, so a busy
machine slows every row alike. The reference is the baseline row of the same process, same
threads; `--quick` shrinks everything to a smoke size.
The stdlib corpus is the running Python's standard library source (`kind: stdlib`).
"""

from __future__ import annotations

import argparse
import math
import statistics
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

BASELINE = dict(positions="learned", norm="layernorm", activation="gelu", bias=True, tie_weights=True,
                learning_rate=6e-4, betas=(0.9, 0.95), lr_schedule="cosine", min_lr_ratio=0.1)
DEFAULT = dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, tie_weights=True,
               learning_rate=2e-3, betas=(0.9, 0.95), lr_schedule="cosine", min_lr_ratio=0.1)
# Each switch of the new recipe, and what the row without it goes back to.
NEW = {"muon": (dict(optimizer="muon", muon_lr=0.01), dict(optimizer="adamw", muon_lr=None)),
       "trapezoid": (dict(lr_schedule="trapezoid", min_lr_ratio=0.0), dict(lr_schedule="cosine", min_lr_ratio=0.1)),
       "qk_norm": (dict(qk_norm=True), dict(qk_norm=False)),
       "relu2": (dict(activation="relu2"), dict(activation="swiglu")),
       "zero_init": (dict(zero_init=True), dict(zero_init=False))}
# Offered, measured, not in (c): each bought nothing at the quick size (docs/recipe.md), and document
# masking's masked attention costs time on every step.
EXTRA = {"softcap": dict(logit_softcap=15.0), "document_mask": dict(document_mask=True),
         "value_embeddings": dict(value_embeddings=True)}
SIZES = {"quick": dict(n_layer=2, n_head=2, n_embd=64, max_len=64, batch=16, steps=120),
         "default": dict(n_layer=4, n_head=4, n_embd=128, max_len=128, batch=32, steps=300),
         "4x": dict(n_layer=8, n_head=6, n_embd=192, max_len=128, batch=32, steps=300)}
CORPORA = {"embedded": [{"kind": "embedded"}], "stdlib": [{"kind": "stdlib", "max_chars": 20000}]}


def rows() -> dict[str, dict]:
    new = {**DEFAULT, **{k: v for on, _ in NEW.values() for k, v in on.items()}}
    table = {"(a) baseline": BASELINE, "(b) default": DEFAULT, "(c) new": new}
    for name, (_, off) in NEW.items():
        table[f"(d) new - {name}"] = {**new, **off}
    for name, on in EXTRA.items():
        table[f"(e) new + {name}"] = {**new, **on}
    return table


def pick(table: dict[str, dict], wanted: str | None) -> dict[str, dict]:
    """The rows named in `wanted` (a letter takes all its rows, `d:relu2` one of them), and always
    the baseline: every ratio is against it."""
    if wanted is None:
        return table
    picked = {"(a) baseline": table["(a) baseline"]}
    for token in (t.strip() for t in wanted.split(",")):
        letter, _, switch = token.partition(":")
        found = {name: s for name, s in table.items()
                 if name[1] == letter.strip("()") and (not switch or name.endswith(f" {switch}"))}
        if not found:
            raise SystemExit(f"--rows {wanted}: no row {token!r}; rows are a, b, c, d, e, or one switch's row "
                             f"as d:NAME or e:NAME ({', '.join(n.split()[-1] for n in table if n[1] in 'de')})")
        picked.update(found)
    return picked


def corpus(sources: list[dict], cache_dir: str, vocab_size: int, size: dict, max_documents: int | None):
    data = XLabDataModule(sources=sources, cache_dir=cache_dir, vocab_size=vocab_size, max_len=size["max_len"],
                          batch_size=size["batch"], max_documents=max_documents)
    data.prepare_data()
    data.setup("fit")
    return data


@torch.no_grad()
def evaluate(model, batches: list[dict]) -> tuple[float, float]:
    model.eval()
    nll = tokens = num_bytes = 0.0
    for batch in batches:
        _, stats = model.loss_and_stats(to_device(batch, model.device))
        nll, tokens, num_bytes = nll + float(stats["nll_sum"]), tokens + float(stats["tokens"]), num_bytes + float(
            stats["num_bytes"])
    model.train()
    return nll / tokens, nll / num_bytes / math.log(2)


def build(data, settings: dict, size: dict, steps: int, device: str, seed: int = 0):
    """The model on `device` with its own optimizer and schedule (`configure_optimizers`)."""
    torch.manual_seed(seed)
    shape = {k: size[k] for k in ("n_layer", "n_head", "n_embd", "max_len")}
    model = XLabModel(vocab_size=data.vocab_size, sos_id=data.sos_id, eos_id=data.eos_id, pad_id=data.pad_id,
                      warmup_steps=max(1, steps // 6), lr_decay_steps=steps, weight_decay=0.1, **shape, **settings)
    model = model.to(device)
    configured = model.configure_optimizers()
    return model.train(), configured["optimizer"], configured["lr_scheduler"]["scheduler"]


def step(model, optimizer, scheduler, batch: dict) -> None:
    """One training step, gradients clipped at 1 as in conf/defaults.yaml."""
    loss, _ = model.loss_and_stats(to_device(batch, model.device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def train(data, settings: dict, size: dict, steps: int, val: list[dict], device: str, seed: int = 0) -> dict:
    """Validation loss and bpb after `steps`, and the validation loss every 1/10th of the run."""
    model, optimizer, scheduler = build(data, settings, size, steps, device, seed)
    loader = DataLoader(data.blocks("train"), batch_size=size["batch"], shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    every = max(1, steps // 10)
    done, curve = 0, []
    while done < steps:
        for batch in loader:
            step(model, optimizer, scheduler, batch)
            done += 1
            if done % every == 0 or done == steps:
                curve.append((done, evaluate(model, val)[0]))
            if done == steps:
                break
    loss, bpb = evaluate(model, val)
    return {"val_loss": loss, "bpb": bpb, "curve": curve}


def step_times(data, table: dict[str, dict], size: dict, device: str, rounds: int = 3,
               steps: int = 5) -> dict[str, float]:
    """Median seconds per training step of each row: rows take turns, `rounds` times, `steps` timed
    steps each after one untimed one, all on the same batch."""
    batch = next(iter(DataLoader(data.blocks("train"), batch_size=size["batch"])))
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(rounds):
        for name, settings in table.items():
            model, optimizer, scheduler = build(data, settings, size, 100, device)
            step(model, optimizer, scheduler, batch)
            for _ in range(steps):
                synchronize(device)
                start = time.perf_counter()
                step(model, optimizer, scheduler, batch)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def first_reach(curve: list[tuple[int, float]], target: float, steps: int) -> float | None:
    """The fraction of the run's steps at which the validation loss first reaches `target`."""
    for step, loss in curve:
        if loss <= target:
            return step / steps
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke size: a tiny model, 120 steps")
    parser.add_argument("--sizes", default="default,4x", help="comma-separated: default, 4x")
    parser.add_argument("--corpora", default="embedded,stdlib", help="comma-separated: " + ", ".join(CORPORA))
    parser.add_argument("--steps", type=int, default=None, help="override the size's steps")
    parser.add_argument("--rows", default=None,
                        help="comma-separated rows to run: letters (a,b,c) or one switch's row (d:relu2); default: all. "
                             "(a) always runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-documents", type=int, default=None, help="documents read per corpus")
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches of 64 windows")
    parser.add_argument("--cache-dir", default=None, help="corpus cache root (default: a temporary folder)")
    add_device_option(parser)
    args = parser.parse_args(argv)
    require_device(args.device)
    torch.set_num_threads(args.threads)
    sizes = ["quick"] if args.quick else args.sizes.split(",")
    vocab = 1024 if args.quick else args.vocab_size
    max_documents = args.max_documents or (400 if args.quick else None)
    print(f"# bench/recipe.py, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        for size_name in sizes:
            size = SIZES[size_name]
            steps = args.steps or size["steps"]
            for corpus_name in args.corpora.split(","):
                data = corpus(CORPORA[corpus_name], args.cache_dir or tmp, vocab, size, max_documents)
                val = [batch for _, batch in zip(range(args.val_batches), DataLoader(data.blocks("val"), batch_size=64))]
                tokens = steps * size["batch"] * size["max_len"]
                print(f"\n## size {size_name} ({size['n_layer']} layers, width {size['n_embd']}, context "
                      f"{size['max_len']}), corpus {corpus_name}: {steps} steps, {tokens:,} tokens\n", flush=True)
                print("| row | val loss | bpb | tokens to baseline's loss | time per step vs baseline |")
                print("|---|---|---|---|---|")
                table = pick(rows(), args.rows)
                results = {name: train(data, settings, size, steps, val, args.device)
                           for name, settings in table.items()}
                seconds = step_times(data, table, size, args.device)
                base = results["(a) baseline"]
                for name, result in results.items():
                    reach = first_reach(result["curve"], base["val_loss"], steps)
                    print(f"| {name} | {result['val_loss']:.3f} | {result['bpb']:.3f} | "
                          f"{'-' if reach is None else f'{reach:.2f}x'} | "
                          f"{seconds[name] / seconds['(a) baseline']:.2f}x |", flush=True)
                print("\nvalidation loss every tenth of the run (a small corpus shows where a row overfits):")
                for name, result in results.items():
                    print(f"  {name}: " + " ".join(f"{loss:.3f}" for _, loss in result["curve"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
