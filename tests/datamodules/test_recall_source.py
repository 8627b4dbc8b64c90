"""The synthetic recall source and the stream data module that serves it in reading order."""

from __future__ import annotations

import pytest
import torch

from xlab.datamodules.sources import build_source
from xlab.datamodules.sources.recall import FACT, QUESTION, RecallSource
from xlab.datamodules.streams import StreamBlocks, StreamDataModule
from xlab.errors import XLabError

SETTINGS = {"documents": 400, "facts": 4, "keys": 64, "values": 8, "seed": 3}


def parse(text: str, word: int = 4) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(facts, questions) as (key, value) pairs from a document's text."""
    facts, questions, i = [], [], 0
    while i < len(text):
        marker, key, value = text[i], text[i + 1:i + 1 + word], text[i + 1 + word:i + 1 + 2 * word]
        (facts if marker == FACT else questions).append((key, value))
        assert marker in (FACT, QUESTION)
        i += 1 + 2 * word
    return facts, questions


def test_documents_state_facts_then_ask_for_them_in_order():
    source = build_source({"kind": "recall", **SETTINGS})
    documents = list(source)
    assert len(documents) == SETTINGS["documents"]
    assert len({d.id for d in documents}) == len(documents)
    for document in documents[:50]:
        facts, questions = parse(document.text)
        assert len(facts) == SETTINGS["facts"] and questions == facts
        keys = [k for k, _ in facts]
        assert len(set(keys)) == len(keys) and all(k.isupper() for k in keys)
        assert all(v.islower() and v in source.values for _, v in facts)
    values = {v for d in documents for _, v in parse(d.text)[0]}
    assert values == set(source.values)  # every value gets used: answers are not guessable by frequency


def test_same_seed_same_documents_other_seed_other_documents():
    first = [d.text for d in RecallSource(**SETTINGS)]
    assert first == [d.text for d in RecallSource(**SETTINGS)]
    other = RecallSource(**{**SETTINGS, "seed": 4})
    assert first != [d.text for d in other]
    assert RecallSource(**SETTINGS).fingerprint() != other.fingerprint()


@pytest.mark.parametrize("setting", [{"facts": 0}, {"facts": 65}, {"values": 1}, {"documents": 0}, {"keys": "many"},
                                     {"keys": 10**6}])
def test_bad_settings_are_one_line_errors(setting):
    with pytest.raises(XLabError, match="recall source"):
        RecallSource(**{**SETTINGS, **setting})


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
