"""Helpers of the inference and export tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_SIZE = 400  # the test corpus's characters plus 256 byte pieces, with room for merges


def load_script(name: str):
    """A top-level script (infer.py, manage.py) as a module, wherever pytest runs from."""
    module_name = f"xlab_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sharp_model(vocab_size: int = 48, max_len: int = 16, positions: str = "learned", seed: int = 0, **kwargs):
    """A random XLabModel whose logits are far from uniform, so greedy choices are not near-ties
    that rounding differences between equivalent computations could flip."""
    from xlab.models import XLabModel

    torch.manual_seed(seed)
    model = XLabModel(vocab_size=vocab_size, max_len=max_len, n_layer=2, n_head=2, n_embd=32,
                      positions=positions, **kwargs).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(8)
    return model
