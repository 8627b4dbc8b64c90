"""StreamDataModule: blocks served in reading order, for models that remember across blocks.

A split's token stream is cut into `batch_size * world_size` contiguous streams; row r of batch
s is block s of stream r, so consecutive batches continue each row where the previous one
stopped and the blocks of a document reach the model in order, in consecutive steps (nothing
is shuffled, in any epoch). Every batch also says which token preceded each row
(`previous_ids`, -1 at a stream's very start) and, when the data asks questions (the `recall`
source), which labels are answers (`answer_mask`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xlab.common.errors import XLabError
from xlab.datamodules.text import XLabDataModule


class StreamBlocks(Dataset):
    """Item i is a whole batch: step i // world of the streams that rank i % world owns.

    Lightning's distributed sampler (no shuffling) hands rank w the items w, w + world, ..., so
    each rank walks its own streams in order; the item count is a multiple of world, so the
    sampler pads nothing.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, rows: int, world: int, token_bytes: np.ndarray,
                 answer_id: int | None = None):
        self.tokens, self.block_size, self.rows, self.world = tokens, block_size, rows, world
        self.token_bytes, self.answer_id = token_bytes, answer_id
        self.stream_length = max(0, (len(tokens) - 1) // (rows * world))
        self.steps = self.stream_length // block_size

    def __len__(self) -> int:
        return self.steps * self.world

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        step, part = divmod(index, self.world)
        T = self.block_size
        starts = [(part * self.rows + r) * self.stream_length + step * T for r in range(self.rows)]
        windows = np.stack([np.asarray(self.tokens[s:s + T + 1], dtype=np.int64) for s in starts])
        previous = np.asarray([int(self.tokens[s - 1]) if s > 0 else -1 for s in starts], dtype=np.int64)
        batch = {
            "input_ids": torch.from_numpy(windows[:, :-1].copy()),
            "labels": torch.from_numpy(windows[:, 1:].copy()),
            "num_bytes": torch.from_numpy(self.token_bytes[windows[:, 1:]].sum(axis=1).astype(np.int64)),
            "previous_ids": torch.from_numpy(previous),
        }
        if self.answer_id is not None:
            # Label t answers a question when token t is a key right after the question marker.
            before = np.concatenate([previous[:, None], windows[:, :-2]], axis=1)
            batch["answer_mask"] = torch.from_numpy(before == self.answer_id)
        return batch


class StreamDataModule(XLabDataModule):
    """XLabDataModule whose train / val / test blocks come in reading order (see the module doc).

    Args:
        answer_marker: The token that precedes each question's key; answers are the labels at
            those keys. None: the one a source declares (the `recall` source uses "?"), if any.
        stride: Unused (blocks never overlap in a stream); kept so recipes can switch modules.
        All other arguments as XLabDataModule. Sources that declare `whole_tokens` get them added
        to the tokenizer's special tokens, so each stays one token.
    """

    def __init__(self, answer_marker: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)  # its save_hyperparameters() records these arguments too
        declared = [getattr(s, "answer_marker", None) for s in self.sources]
        self.answer_marker = answer_marker or next((m for m in declared if m), None)

    def tokenizer_settings(self) -> dict[str, Any]:
        settings = super().tokenizer_settings()
        whole = [t for s in self.sources if hasattr(s, "whole_tokens") for t in s.whole_tokens()]
        settings["extra_special_tokens"] = list(dict.fromkeys([*settings["extra_special_tokens"], *whole]))
        return settings

    @property
    def answer_id(self) -> int | None:
        if self.answer_marker is None:
            return None
        ids = self.tokenizer.encode(self.answer_marker)
        if len(ids) != 1:
            raise XLabError(f"answer_marker {self.answer_marker!r} is {len(ids)} tokens, not one: "
                            "add it to data.special_tokens.")
        return ids[0]

    def streams(self, split: str, rows: int) -> StreamBlocks:
        world = self.trainer.world_size if self.trainer is not None else 1
        blocks = StreamBlocks(self.tokens[split], self.hparams.max_len, rows, world, self.token_bytes, self.answer_id)
        if len(blocks) == 0:
            raise XLabError(f"the {split} split has {len(self.tokens[split])} tokens, fewer than one block of "
                            f"max_len={self.hparams.max_len} per stream ({rows} rows x {world} processes): "
                            "lower the batch size or max_len, or add data.")
        return blocks

    # batch_size=None: each item already is a batch, in order.
    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.streams("train", self.hparams.batch_size), False, None)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.streams("val", self.eval_batch_size), None)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.streams("test", self.eval_batch_size), None)
