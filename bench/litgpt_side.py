#!/usr/bin/env python3
"""litgpt's side of bench/litgpt_compare.py; runs in litgpt's own virtual environment (no XLab there).

    python bench/litgpt_side.py prepare TOKENS.npy OUT_DIR BLOCK   # a token stream as litgpt's LitData
    python bench/litgpt_side.py score CHECKPOINT_DIR BLOCKS.pt     # JSON: nll_sum, tokens

`prepare` writes XLab's training tokens (the same documents, each sos + text + eos) in the
streaming format litgpt's `LitData` reads, so both frameworks train on one token stream. `score`
loads litgpt's final checkpoint and sums the next-token loss over the blocks the comparison
scores XLab on, with the same `F.cross_entropy` call.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from litdata import optimize
from litdata.streaming import TokensLoader
from litgpt import GPT, Config

PIECE = 1 << 20  # tokens per item handed to litdata: a few items, each a slice of the stream


def _slice(start: int, path: str):
    tokens = np.load(path, mmap_mode="r")
    yield torch.from_numpy(np.array(tokens[start:start + PIECE], dtype=np.int32))


def prepare(tokens_path: str, out_dir: str, block: str) -> None:
    count = len(np.load(tokens_path, mmap_mode="r"))
    optimize(fn=partial(_slice, path=tokens_path), inputs=list(range(0, count, PIECE)), output_dir=out_dir,
             num_workers=1, chunk_bytes="50MB", item_loader=TokensLoader(block_size=int(block)))


@torch.no_grad()
def score(checkpoint_dir: str, blocks_path: str) -> None:
    folder = Path(checkpoint_dir)
    model = GPT(Config.from_file(folder / "model_config.yaml"))
    state = torch.load(folder / "lit_model.pth", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    # A compiled model's weights carry the wrapper's prefix.
    model.load_state_dict({key.removeprefix("_orig_mod."): value for key, value in state.items()})
    model.eval()
    blocks = torch.load(blocks_path, weights_only=True)
    nll = 0.0
    for input_ids, labels in zip(blocks["input_ids"].split(16), blocks["labels"].split(16)):
        logits = model(input_ids)
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                     reduction="sum"))
    print(json.dumps({"nll_sum": nll, "tokens": int((blocks["labels"] != -100).sum())}))


if __name__ == "__main__":
    commands = {"prepare": (prepare, 3), "score": (score, 2)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands or len(sys.argv) != 2 + commands[sys.argv[1]][1]:
        sys.exit(__doc__.split("\n\n")[1])
    commands[sys.argv[1]][0](*sys.argv[2:])
