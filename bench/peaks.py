"""Dense peak FLOP/s for MFU: a table of GPUs per dtype, or a measured matmul peak on a CPU.

GPU figures are the vendors' datasheet numbers for dense math (the "with sparsity" figures halved),
per GPU, in TFLOP/s. fp32 matmuls count at the TF32 peak when TF32 is allowed, since that is what
the tensor cores then run. A CPU has no such table that fits every machine, so its peak is
measured (the best of a few large matmuls in the dtype) and every printout says so.
"""

from __future__ import annotations

import time

import torch

# name fragment (lower case, most specific first) -> {dtype: dense TFLOP/s}
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("h200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("h100 nvl", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("h100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),  # SXM
    ("gh200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("l40s", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
]


def gpu_peak(name: str, dtype: str) -> float | None:
    """Dense FLOP/s of the named GPU for dtype ('bf16', 'fp16', 'tf32', 'fp32'), None if unknown."""
    lowered = name.lower()
    for fragment, peaks in GPU_PEAKS:
        if fragment in lowered:
            return peaks[dtype] * 1e12
    return None


def matmul_dtype(precision: str, device: torch.device) -> str:
    """The dtype the big matmuls run in under a Lightning precision setting."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def measured_peak(device: torch.device, dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul in dtype on this device with the current thread count."""
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock(device)
        a @ b
        best = min(best, clock(device) - start)
    return 2 * n**3 / best


def clock(device: torch.device) -> float:
    """The benches' clock: wall time on a GPU, once its queued work is done; on a CPU the process's
    CPU time, since the runs are single-threaded and a shared machine's waits for a core are not work."""
    sync(device)
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def dense_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(FLOP/s, label): the table's peak for a known GPU, else a measured one, labelled as such."""
    dtype = matmul_dtype(precision, device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, dtype)
        if peak is not None:
            return peak, f"{name} dense {dtype} peak from the datasheet: {peak / 1e12:.0f} TFLOP/s"
        measured = measured_peak(device, dtype, n=8192)
        return measured, f"{name} is not in the table: MEASURED {dtype} matmul peak {measured / 1e12:.1f} TFLOP/s"
    measured = measured_peak(device, dtype)
    return measured, (f"{device.type.upper()} has no datasheet peak here: MEASURED {dtype} matmul peak "
                      f"{measured / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} thread(s))")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
