"""xlab/datamodules/datasets.py: training blocks, per-document windows, and their padding."""

import numpy as np
import torch

from tests.helpers import xlab_data as make
from xlab.common.tokenizer import IGNORE_INDEX
from xlab.datamodules.datasets import BlockDataset, DocumentWindows, pad_collate


def test_blocks_are_shifted_windows_with_byte_counts(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 16)
    assert torch.equal(batch["input_ids"][0, 1:], batch["labels"][0, :-1])
    text = dm.tokenizer.decode(batch["labels"][0])
    assert batch["num_bytes"][0] == len(text.encode("utf-8"))


def test_stride_overlaps_training_blocks(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path, stride=4)
    dm.setup()
    blocks = dm.blocks("train", 4)
    assert torch.equal(blocks[0]["input_ids"][4:], blocks[1]["input_ids"][:-4])


def test_block_dataset_is_every_stride_th_window_of_the_stream():
    tokens, token_bytes = np.arange(20, dtype=np.uint16), np.arange(20, dtype=np.int64) % 3 + 1
    blocks = BlockDataset(tokens, block_size=4, stride=3, token_bytes=token_bytes)
    assert len(blocks) == 6  # starts 0, 3, ..., 15: the last window ends at token 19
    item = blocks[5]
    assert item["input_ids"].tolist() == [15, 16, 17, 18] and item["labels"].tolist() == [16, 17, 18, 19]
    assert int(item["num_bytes"]) == int(token_bytes[16:20].sum())
    assert len(BlockDataset(tokens[:4], 4, 4, token_bytes)) == 0  # no room for one label past the block


def test_document_windows_never_cross_a_document_and_pad_collate_ignores_the_padding():
    tokens = np.arange(11, dtype=np.uint16)
    offsets = np.array([0, 7, 11])  # documents of 7 and 4 tokens
    windows = DocumentWindows(tokens, offsets, block_size=4, token_bytes=np.ones(11, dtype=np.int64))
    items = [windows[i] for i in range(len(windows))]
    assert [(int(i["doc_index"]), i["input_ids"].tolist()) for i in items] == [
        (0, [0, 1, 2, 3]), (0, [4, 5]), (1, [7, 8, 9])]
    assert [i["labels"].tolist() for i in items] == [[1, 2, 3, 4], [5, 6], [8, 9, 10]]
    batch = pad_collate(pad_id=3)(items)
    assert batch["input_ids"][1].tolist() == [4, 5, 3, 3]
    assert batch["labels"][1].tolist() == [5, 6, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["doc_index"].tolist() == [0, 0, 1] and batch["num_bytes"].tolist() == [4, 2, 3]
