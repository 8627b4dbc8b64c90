"""xlab/datamodules/streams.py: blocks in reading order, rows that continue across batches,
answer masks, and each DDP rank on its own streams."""

from __future__ import annotations

import pytest
import torch

from xlab.common.errors import XLabError
from xlab.datamodules.sources.recall import QUESTION, RecallSource
from xlab.datamodules.streams import StreamBlocks, StreamDataModule

SETTINGS = {"documents": 400, "facts": 4, "keys": 64, "values": 8, "seed": 3}


@pytest.fixture(scope="module")
def recall_data(tmp_path_factory):
    source = RecallSource(**SETTINGS)
    data = StreamDataModule(sources=[{"kind": "recall", **SETTINGS}], cache_dir=str(tmp_path_factory.mktemp("cache")),
                            vocab_size=source.tokenizer_vocab_size(), max_len=3 * SETTINGS["facts"], batch_size=3,
                            split_fractions=(0.8, 0.2, 0.0, 0.0))
    data.setup("fit")
    return data


def test_every_word_is_one_token_so_a_document_has_a_fixed_length(recall_data):
    offsets = recall_data.document_offsets("train")
    assert set((offsets[1:] - offsets[:-1]).tolist()) == {6 * SETTINGS["facts"] + 2}
    tokenizer = recall_data.tokenizer
    assert all(len(tokenizer.encode(w)) == 1 for w in RecallSource(**SETTINGS).whole_tokens())


def test_consecutive_batches_continue_each_row(recall_data):
    batches = list(recall_data.train_dataloader())
    assert len(batches) > 5
    for before, after in zip(batches, batches[1:]):
        assert torch.equal(after["previous_ids"], before["input_ids"][:, -1])
        assert torch.equal(after["input_ids"][:, 0], before["labels"][:, -1])
    tokens = torch.from_numpy(recall_data.tokens["train"].astype("int64"))
    stream = torch.cat([b["input_ids"][1] for b in batches])
    start = int(torch.nonzero((tokens.unfold(0, len(stream), 1) == stream).all(1))[0])
    assert start > 0  # row 1 is one contiguous piece of the split, read front to back


def test_answer_mask_marks_the_value_after_each_question_key(recall_data):
    tokenizer = recall_data.tokenizer
    question, values = tokenizer[QUESTION], {tokenizer[v] for v in RecallSource(**SETTINGS).values}
    answers = 0
    for batch in recall_data.val_dataloader():
        before = torch.cat([batch["previous_ids"][:, None], batch["input_ids"][:, :-1]], dim=1)
        mask = batch["answer_mask"]
        assert torch.equal(mask, before == question)
        assert all(int(v) in values for v in batch["labels"][mask])
        answers += int(mask.sum())
    assert answers > 10


def test_under_ddp_each_rank_walks_its_own_streams_in_order():
    tokens = torch.arange(1000).numpy()
    world = [StreamBlocks(tokens, block_size=5, rows=2, world=2, token_bytes=torch.ones(1000).numpy()) for _ in range(2)]
    assert len(world[0]) % 2 == 0
    # What DistributedSampler(shuffle=False) hands rank r: items r, r + 2, r + 4, ...
    ranks = [[world[0][i] for i in range(r, len(world[0]), 2)] for r in range(2)]
    starts = [[int(b["input_ids"][row, 0]) for b in ranks[r] for row in range(2)] for r in range(2)]
    assert not set(starts[0]) & set(starts[1])  # no block is read twice
    for batches in ranks:
        for before, after in zip(batches, batches[1:]):
            assert torch.equal(after["input_ids"][:, 0], before["labels"][:, -1])


def test_too_little_data_for_the_streams_is_a_clear_error(recall_data):
    with pytest.raises(XLabError, match="fewer than one block"):
        recall_data.streams("val", rows=10_000)
