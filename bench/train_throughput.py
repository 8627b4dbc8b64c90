#!/usr/bin/env python3
"""Training throughput of XLabModel: Lightning overhead and speed against a lean plain-PyTorch GPT.

    python bench/train_throughput.py [--threads 1] [--rounds 3] [--steps 6] [--batch-size 4] [--device cpu]

Three loops over the same ~10M-parameter GPT-2-shaped configuration and the same batches, run
in interleaved rounds (so machine noise hits all three alike), timed per optimizer step after
warm-up; medians are reported:
  lightning  XLabModel trained by a Lightning Trainer (what ./xlab.py fit runs)
  plain      the same XLabModel in a hand-written PyTorch loop (forward, backward, AdamW)
  reference  a minimal GPT written the leanest way (fused QKV, SDPA, tied head) in a plain loop
Prints tokens/s, the Lightning overhead (lightning / plain step time) and XLabModel's speed
against the reference, and MFU against an fp32 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed


class ReferenceGPT(nn.Module):
    """The leanest GPT-2 block stack: the yardstick XLabModel must not be slower than."""

    def __init__(self, vocab: int, max_len: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.n_head = n_head
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(max_len, n_embd)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            ln_1=nn.LayerNorm(n_embd), qkv=nn.Linear(n_embd, 3 * n_embd), proj=nn.Linear(n_embd, n_embd),
            ln_2=nn.LayerNorm(n_embd), fc=nn.Linear(n_embd, 4 * n_embd), out=nn.Linear(4 * n_embd, n_embd),
        )) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["ln_1"](x)).split(x.shape[-1], dim=2)
            q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
            x = x + layer["proj"](y)
            x = x + layer["out"](F.gelu(layer["fc"](layer["ln_2"](x)), approximate="tanh"))
        return self.head(self.ln_f(x))


def matmul_peak(device: str, n: int = 2048, repeats: int = 10) -> float:
    """Achieved fp32 matmul FLOP/s on this device with these threads: the MFU denominator."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_steps(model: nn.Module, batches: list[torch.Tensor], device: str) -> list[float]:
    optimizer = plain_steps.optimizers.setdefault(id(model), torch.optim.AdamW(model.parameters(), lr=1e-4))
    times = []
    for batch in batches:
        batch = batch.to(device)
        sync(device)
        start = time.perf_counter()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


plain_steps.optimizers = {}


def lightning_steps(model, batches: list[torch.Tensor], device: str) -> list[float]:
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    data = [{"input_ids": b[:, :-1], "labels": b[:, 1:], "num_bytes": torch.zeros(len(b), dtype=torch.long)}
            for b in batches]
    timer = StepTimer()
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=len(data), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(model, loader)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noisy on a shared machine)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three loops")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per loop per round (first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from xlab.models import XLabModel

    shape = dict(n_layer=6, n_head=6, n_embd=384)
    vocab = 8192
    xlab = XLabModel(vocab_size=vocab, max_len=args.max_len, learning_rate=1e-4, warmup_steps=0, **shape).to(args.device)
    reference = ReferenceGPT(vocab, args.max_len, **shape).to(args.device)
    # Lightning trains its own copy so the plain loop's optimizer state does not leak into it.
    lightning_model = XLabModel(vocab_size=vocab, max_len=args.max_len, learning_rate=1e-4, warmup_steps=0, **shape)
    params = xlab.num_parameters()
    batches = [torch.randint(0, vocab, (args.batch_size, args.max_len + 1)) for _ in range(args.steps)]
    tokens = args.batch_size * args.max_len

    times = {"lightning": [], "plain": [], "reference": []}
    for _ in range(args.rounds):
        times["lightning"] += lightning_steps(lightning_model, batches, args.device)[1:]
        times["plain"] += plain_steps(xlab, batches, args.device)[1:]
        times["reference"] += plain_steps(reference, batches, args.device)[1:]
    median = {name: statistics.median(t) for name, t in times.items()}

    peak = matmul_peak(args.device)
    L, H, C, T = shape["n_layer"], shape["n_head"], shape["n_embd"], args.max_len
    flops_per_token = 6 * params + 12 * L * H * (C // H) * T  # nanoGPT's estimate (PaLM appendix B)
    print(f"config: {params / 1e6:.1f}M parameters, batch {args.batch_size} x {T} tokens, {args.threads} thread(s), "
          f"{args.device}; {args.rounds} rounds x {args.steps - 1} timed steps")
    print(f"fp32 matmul peak measured: {peak / 1e9:.1f} GFLOP/s")
    for name in times:
        rate = tokens / median[name]
        print(f"{name:>10}: {median[name] * 1e3:8.1f} ms/step  {rate:9.0f} tokens/s  MFU {rate * flops_per_token / peak:6.1%}")
    print(f"Lightning overhead (lightning / plain step time): {median['lightning'] / median['plain']:.3f}x (target <= 1.05)")
    print(f"XLabModel vs lean reference GPT (reference / plain step time): {median['reference'] / median['plain']:.3f}x "
          "(target >= 1.0)")


if __name__ == "__main__":
    main()
