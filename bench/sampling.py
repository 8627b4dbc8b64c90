#!/usr/bin/env python3
"""Decoding speed of `xlab.inference` against `transformers` `generate` on the same weights.

Usage:
    python bench/sampling.py                          # GPT-2 shape (124M), 16 + 256 tokens, 1 thread
    python bench/sampling.py --shape small --repeats 5 --new-tokens 64
    python bench/sampling.py --threads 2 --batch-sizes 1 8 32
    python bench/sampling.py --device cuda            # on a GPU (wall time, synchronised)

Both decoders get the same random GPT-2-shaped weights (a GPT2LMHeadModel and the XLabModel
mapped from it), the same prompts, the same thread count and the same number of new tokens (no
end token), under torch.inference_mode. Runs are interleaved (order alternating) and medians are
reported, because on a shared CPU two back-to-back runs can differ by 2x. On a CPU the clock is
the process's CPU time (the runs are single-threaded by default, so that is the decoder's own
work; wall time would also count waits for a core); on a GPU it is wall time after a synchronise.
Targets: xlab / transformers >= 1.0 at batch 1 and >= 1.1 at batch 8, greedy and sampling. At batch 1 a decode
step reads every weight once, so speed is bound by memory bandwidth: the script also measures
the bandwidth of a large tensor copy in the same process and reports which fraction of it the
batch-1 decoding reaches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, wherever this runs from
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.device import add_device_option, require_device  # noqa: E402
from bench.peaks import clock  # noqa: E402

SHAPES = {
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "small": dict(vocab_size=8192, n_positions=512, n_embd=256, n_layer=4, n_head=4),
}
TOP_K = 50  # transformers' default for sampling; both decoders use it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2", help="model shape (default gpt2: 124M)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (default 16)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per sequence (default 256)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="default: 1 8")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per decoder and case (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_device_option(parser, "device of both models")
    return parser


def build_models(shape: str, device: str = "cpu"):
    from transformers import GPT2Config, GPT2LMHeadModel

    from xlab.interop.hf_gpt2 import xlab_from_gpt2

    torch.manual_seed(0)
    config = GPT2Config(**SHAPES[shape], bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = GPT2LMHeadModel(config).eval()
    # No end token: every run must produce exactly --new-tokens tokens in both decoders.
    hf.generation_config.eos_token_id = None
    return hf.to(device), xlab_from_gpt2(hf).to(device)


def run_xlab(model, prompts: torch.Tensor, new_tokens: int, sample: bool, seed: int) -> int:
    from xlab import inference

    options = dict(top_k=TOP_K, seed=seed) if sample else dict(temperature=0)
    results = inference.sample(model, prompts, output_length=new_tokens, eos_class=None, **options)
    return sum(len(r) for r in results)


def run_hf(model, prompts: torch.Tensor, new_tokens: int, sample: bool, seed: int) -> int:
    torch.manual_seed(seed)
    options = dict(do_sample=True, top_k=TOP_K, top_p=1.0, temperature=1.0) if sample else dict(do_sample=False)
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=0, **options)
    return out[:, prompts.shape[1]:].numel()


def timed(run, model, *args) -> tuple[float, int]:
    device = next(model.parameters()).device
    began = clock(device)
    with torch.inference_mode():
        tokens = run(model, *args)
    return clock(device) - began, tokens


def compare(hf, ours, batch: int, sample: bool, args) -> tuple[float, float]:
    """Median tokens/s of (xlab, transformers) over interleaved runs."""
    generator = torch.Generator().manual_seed(batch)
    prompts = torch.randint(1, hf.config.vocab_size, (batch, args.prompt_len), generator=generator).to(args.device)
    runs = {"xlab": (run_xlab, ours), "hf": (run_hf, hf)}
    for run, model in runs.values():  # warm-up: first calls allocate and pick kernels
        timed(run, model, prompts, 4, sample, 0)
    speeds: dict[str, list[float]] = {"xlab": [], "hf": []}
    for repeat in range(args.repeats):
        order = ["xlab", "hf"] if repeat % 2 == 0 else ["hf", "xlab"]
        for name in order:
            run, model = runs[name]
            seconds, tokens = timed(run, model, prompts, args.new_tokens, sample, repeat)
            if tokens != batch * args.new_tokens:
                raise RuntimeError(f"{name} produced {tokens} tokens instead of {batch * args.new_tokens}")
            speeds[name].append(tokens / seconds)
    return statistics.median(speeds["xlab"]), statistics.median(speeds["hf"])


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (each byte read once and written once)."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(repeats):
        began = time.process_time()  # the decoders' clock on a CPU
        target.copy_(source)
        times.append(time.process_time() - began)
    return 2 * source.numel() * 4 / statistics.median(times)


def weight_bytes(model) -> int:
    """Bytes one decode step reads: every weight once (tied ones once), position table excluded
    (a step reads one row of it)."""
    seen, total = set(), 0
    for name, param in model.named_parameters():
        if id(param) in seen or name.endswith("wpe.weight"):
            continue
        seen.add(id(param))
        total += param.numel() * param.element_size()
    return total


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    require_device(args.device)
    hf, ours = build_models(args.shape, args.device)
    params = sum(p.numel() for p in {id(p): p for p in ours.parameters()}.values())
    print(f"shape {args.shape} ({params / 1e6:.1f}M parameters), prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, {args.device}, {args.threads} thread(s), median of {args.repeats} interleaved runs")
    print(f"{'batch':>5} {'mode':>7} {'xlab tok/s':>11} {'hf tok/s':>9} {'ratio':>6}")
    batch1_greedy = None
    for batch in args.batch_sizes:
        for sample in (False, True):
            xlab_speed, hf_speed = compare(hf, ours, batch, sample, args)
            mode = "sample" if sample else "greedy"
            ratio = xlab_speed / hf_speed
            print(f"{batch:>5} {mode:>7} {xlab_speed:>11.1f} {hf_speed:>9.1f} {ratio:>5.2f}x", flush=True)
            if batch == 1 and not sample:
                batch1_greedy = (xlab_speed, hf_speed)
    if batch1_greedy is not None and args.device == "cpu":
        bandwidth = copy_bandwidth()
        per_token = weight_bytes(ours)
        xlab_rate, hf_rate = (per_token * speed for speed in batch1_greedy)
        print(f"memory bandwidth (tensor copy, {args.threads} thread(s)): {bandwidth / 1e9:.1f} GB/s; "
              f"a batch-1 step reads {per_token / 1e6:.0f} MB of weights")
        print(f"batch-1 greedy weight reads: xlab {xlab_rate / 1e9:.1f} GB/s ({xlab_rate / bandwidth:.0%} of copy "
              f"bandwidth), transformers {hf_rate / 1e9:.1f} GB/s ({hf_rate / bandwidth:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
