"""The --device option every bench takes: where its models run, checked before any work starts.

A bench defaults to the GPU when torch sees one, so the same command measures the machine it is
run on; `--device cpu` reproduces the CPU figures of docs/ on any machine.
"""

from __future__ import annotations

import argparse

import torch


def add_device_option(parser: argparse.ArgumentParser, what: str = "where the models train and run") -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help=f"{what} (default: cuda when torch sees a GPU, else cpu)")


def require_device(device: str) -> None:
    """Stop in one line when a bench is asked for a GPU that torch cannot see."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; run with --device cpu.")


def accelerator(device: str) -> str:
    """The Lightning Trainer's accelerator for a --device value."""
    return "gpu" if device.startswith("cuda") else "cpu"


def to_device(batch: dict, device: str | torch.device) -> dict:
    """A data loader's batch with its tensors on `device` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
