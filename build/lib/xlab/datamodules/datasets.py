"""Torch datasets over token memmaps: fixed blocks for training, per-document windows for predict."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from xlab.common.tokenizer import IGNORE_INDEX


class BlockDataset(Dataset):
    """Windows of `block_size + 1` tokens every `stride` tokens: inputs and next-token labels.

    Each item also carries `num_bytes`, the UTF-8 size of the text its labels stand for, so a
    model can report bits per byte, comparable across tokenizers.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int, token_bytes: np.ndarray):
        self.tokens, self.block_size, self.stride, self.token_bytes = tokens, block_size, stride, token_bytes
        self.length = max(0, (len(tokens) - block_size - 1) // stride + 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.stride
        window = np.asarray(self.tokens[start:start + self.block_size + 1], dtype=np.int64)
        return {
            "input_ids": torch.from_numpy(window[:-1]),
            "labels": torch.from_numpy(window[1:]),
            "num_bytes": torch.tensor(int(self.token_bytes[window[1:]].sum())),
        }


class DocumentWindows(Dataset):
    """Every document of a split cut into windows whose labels do not overlap.

    Used by predict to score each document as a whole: item `i` knows which document it is from.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, block_size: int, token_bytes: np.ndarray):
        self.tokens, self.block_size, self.token_bytes = tokens, block_size, token_bytes
        self.windows = [(doc, start, min(start + block_size + 1, end))
                        for doc, (begin, end) in enumerate(zip(offsets[:-1], offsets[1:]))
                        for start in range(begin, end - 1, block_size)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        doc, start, stop = self.windows[index]
        window = np.asarray(self.tokens[start:stop], dtype=np.int64)
        return {
            "doc_index": torch.tensor(doc),
            "input_ids": torch.from_numpy(window[:-1]),
            "labels": torch.from_numpy(window[1:]),
            "num_bytes": torch.tensor(int(self.token_bytes[window[1:]].sum())),
        }


def pad_collate(pad_id: int):
    """Collate windows of different lengths: inputs padded with `pad_id`, labels ignored there."""

    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if items[0][key].dim() == 0}
        batch["input_ids"] = torch.full((len(items), length), pad_id, dtype=torch.long)
        batch["labels"] = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            batch["input_ids"][row, :len(item["input_ids"])] = item["input_ids"]
            batch["labels"][row, :len(item["labels"])] = item["labels"]
        return batch

    return collate
