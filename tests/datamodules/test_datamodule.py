import json

import numpy as np
import pytest
import torch

from tests.helpers import write_corpus
from xlab.datamodules import XLabDataModule
from xlab.datamodules.splits import SPLITS
from xlab.errors import XLabError


def make(corpus, tmp_path, **kwargs):
    settings = dict(sources=[{"kind": "text_folder", "path": str(corpus)}], cache_dir=str(tmp_path / "cache"),
                    vocab_size=400, max_len=16, batch_size=4)
    return XLabDataModule(**{**settings, **kwargs})


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


def test_cache_is_reused_then_rebuilt_when_a_setting_changes(corpus_dir, tmp_path, monkeypatch):
    first = make(corpus_dir, tmp_path)
    first.prepare_data()
    meta = first.cache_folder / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = make(corpus_dir, tmp_path)
    again.prepare_data()
    assert again.cache_folder == first.cache_folder and meta.stat().st_mtime_ns == stamp
    # Batch size and block size do not change the cache; the vocabulary and the sources do.
    assert make(corpus_dir, tmp_path, batch_size=8, max_len=8).cache_folder == first.cache_folder
    assert make(corpus_dir, tmp_path, vocab_size=420).cache_folder != first.cache_folder
    (corpus_dir.parent / "grown").mkdir()
    grown = write_corpus(corpus_dir.parent / "grown", documents=201)
    assert make(grown, tmp_path).cache_folder != first.cache_folder
    monkeypatch.setenv("REPROCESS", "1")
    rebuilt = make(corpus_dir, tmp_path)
    rebuilt.prepare_data()
    assert meta.stat().st_mtime_ns != stamp


def test_interrupted_build_leaves_nothing_trusted(corpus_dir, tmp_path, monkeypatch):
    dm = make(corpus_dir, tmp_path)
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    real_iter = type(dm.sources[0]).__iter__

    def dying_iter(self):
        for i, doc in enumerate(real_iter(self)):
            calls["n"] += 1
            if calls["n"] > 250:  # in the second pass, while encoding
                raise Interrupted
            yield doc

    monkeypatch.setattr(type(dm.sources[0]), "__iter__", dying_iter)
    with pytest.raises(Interrupted):
        dm.prepare_data()
    assert not dm.cache_folder.exists()
    assert not list(dm.cache_folder.parent.glob("*.tmp-*"))
    monkeypatch.setattr(type(dm.sources[0]), "__iter__", real_iter)
    fresh = make(corpus_dir, tmp_path)
    fresh.setup()
    assert json.loads((fresh.cache_folder / "meta.json").read_text())["splits"]["train"]["documents"] > 150


def test_tokenizer_travels_in_the_state_dict(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    state = dm.state_dict()
    blank = make(corpus_dir, tmp_path / "elsewhere")
    blank.load_state_dict(state)
    assert blank.tokenizer.to_bytes() == dm.tokenizer.to_bytes()
    assert not (tmp_path / "elsewhere").exists()  # restoring needs no cache build


def test_unigram_baseline_is_recorded(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    assert 0 < dm.meta["unigram_loss"] < np.log(dm.vocab_size)


def test_combined_sources(corpus_dir, tmp_path):
    jsonl = tmp_path / "extra.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"extra doc {i}", "id": i}) + "\n" for i in range(50)))
    dm = make(corpus_dir, tmp_path, sources=[{"kind": "text_folder", "path": str(corpus_dir)},
                                              {"kind": "jsonl", "path": str(jsonl), "id_field": "id"}])
    assert sum(split["documents"] for split in dm.meta["splits"].values()) == 250


@pytest.mark.parametrize("kwargs, message", [
    ({"sources": [{"kind": "text_folder", "path": "/no/such/folder"}]}, "does not exist"),
    ({"sources": [{"kind": "text_folder", "path": "{corpus}", "glob": "*.md"}]}, "matches"),
    ({"sources": [{"kind": "text_folder", "path": "{corpus}", "colour": "red"}]}, "no setting colour"),
    ({"sources": [{"kind": "telepathy"}]}, "unknown data source kind"),
    ({"vocab_size": 100000}, "cannot support a vocabulary"),
    ({"vocab_size": 40}, "too small to hold every character"),
    ({"split_fractions": (0.5, 0.5, 0.5, 0.5)}, "summing to 1"),
])
def test_bad_settings_are_one_line_errors(corpus_dir, tmp_path, kwargs, message):
    sources = kwargs.get("sources")
    if sources:
        kwargs = {**kwargs, "sources": [{k: v.format(corpus=corpus_dir) if isinstance(v, str) else v
                                         for k, v in s.items()} for s in sources]}
    with pytest.raises(XLabError, match=message) as error:
        make(corpus_dir, tmp_path, **kwargs).prepare_data()
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "cache").rglob("meta.json"))


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


def test_non_utf8_file_is_named(corpus_dir, tmp_path):
    bad = write_corpus(tmp_path / "bad", documents=5)
    (bad / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(XLabError, match="latin1.txt is not UTF-8"):
        make(bad, tmp_path).prepare_data()


def test_split_too_short_for_a_block_is_a_clear_error(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path, max_len=100000)
    dm.setup()
    with pytest.raises(XLabError, match="fewer than max_len"):
        dm.val_dataloader()
