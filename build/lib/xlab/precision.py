"""Precision that follows the hardware: a recipe's bf16 where the device multiplies bf16 fast, fp32
where it does not.

The GPU recipes ask for `bf16-mixed`. On a GPU with native bf16 (compute capability 8.0 and later:
A100, H100, L4, ...) that is the fast choice. Elsewhere it is a trap: on the CPUs measured for
XLab a bf16 matrix product runs several times slower than fp32, so the default model trained 20
steps in 207 s instead of 23 s, and a recipe meant for a GPU ran for hours without a word. CPUs
with bf16 matrix units (AMX) are the other way round: there a 384 x 384 bf16 product took 1.0 ms
against 1.6 ms in fp32, where an AVX2 path took 111 ms against 1.6 ms. So the CLI measures once (a
few products, well under a second) whether bf16 is faster than fp32 on the device the run uses,
and when it is not, trains in 32-true and says so in one line.
`precision_fallback: false` keeps the recipe's precision whatever the hardware.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

BF16 = ("bf16-mixed", "bf16-true", "bf16")
SIZE, ROUNDS = 384, 3


def device_type(accelerator: object) -> str:
    """cuda or cpu: where a run with this Trainer `accelerator` setting trains."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


@lru_cache(maxsize=None)
def bf16_speedup(device: str) -> float:
    """How many times faster a bf16 matrix product is than an fp32 one on `device` (measured)."""
    if device == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return 0.0
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(SIZE, SIZE, device=device).to(dtype)
        a @ a  # the first product pays for kernel selection
        best = float("inf")
        for _ in range(ROUNDS):  # the fastest of a few: a shared machine's pauses only slow some
            if device == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            a @ a
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - began)
        timings[dtype] = best
    return timings[torch.float32] / max(timings[torch.bfloat16], 1e-12)


def fitting_precision(precision: object, accelerator: object) -> tuple[object, str | None]:
    """(the precision to train in, a one-line notice when it is not the one asked for)."""
    if str(precision) not in BF16:
        return precision, None
    device = device_type(accelerator)
    speedup = bf16_speedup(device)
    if speedup >= 1.0:
        return precision, None
    why = ("this GPU has no native bf16 (use 16-mixed there)" if speedup == 0.0 else
           f"this {'GPU' if device == 'cuda' else 'CPU'} multiplies bf16 matrices {1 / speedup:.1f}x slower than fp32 "
           "(measured)")
    return "32-true", (f"xlab: the recipe asks for precision {precision}, but {why}: training in 32-true "
                       "(precision_fallback: false keeps the recipe's).")
