"""xlab/datamodules/encode.py: documents encoded into split memmaps, offsets and ids, and the unigram baseline."""

import numpy as np
import pytest

from tests.helpers import write_corpus
from tests.helpers import xlab_data as make
from xlab.common.errors import XLabError
from xlab.datamodules.splits import SPLITS


def test_every_document_lands_in_exactly_one_split(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    dm.setup()
    ids = {split: dm.document_ids(split) for split in SPLITS}
    all_ids = [i for split in SPLITS for i in ids[split]]
    assert len(all_ids) == len(set(all_ids)) == 200
    assert all(ids[split] for split in SPLITS)
    for split in SPLITS:  # offsets cut the token stream into sos ... eos documents
        offsets, tokens = dm.document_offsets(split), dm.tokens[split]
        assert offsets[-1] == len(tokens) and len(offsets) == len(ids[split]) + 1
        assert (tokens[offsets[:-1]] == dm.sos_id).all() and (tokens[offsets[1:] - 1] == dm.eos_id).all()


def test_tokens_decode_back_to_the_documents(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    dm.setup()
    offsets = dm.document_offsets("val")
    name = dm.document_ids("val")[0].split(":", 1)[1]
    assert dm.tokenizer.decode(dm.tokens["val"][offsets[0]:offsets[1]]) == (corpus_dir / name).read_text()


def test_unigram_baseline_is_recorded(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    dm.setup()
    # The same number computed the obvious way: add-one smoothed train frequencies, scored on val targets.
    counts = np.bincount(dm.tokens["train"], minlength=dm.vocab_size) + 1.0
    expected = -np.log(counts / counts.sum())[dm.tokens["val"][1:]].mean()
    assert dm.meta["unigram_loss"] == pytest.approx(expected, rel=1e-9)
    assert expected < np.log(dm.vocab_size)  # text is far from uniform over the vocabulary


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(XLabError, match="corpus is empty|no text|got none"):
        make(empty, tmp_path).prepare_data()


def test_too_few_documents_for_the_split_is_a_clear_error(tmp_path):
    few = write_corpus(tmp_path / "few", documents=3)
    with pytest.raises(XLabError, match="got none of the corpus's 3 documents"):
        make(few, tmp_path).prepare_data()
