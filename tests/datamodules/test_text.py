"""xlab/datamodules/text.py: XLabDataModule: sources combined, the tokenizer as state, and bad settings as one-line errors."""

import json

import pytest

from tests.helpers import write_corpus
from tests.helpers import xlab_data as make
from xlab.common.errors import XLabError


def test_tokenizer_travels_in_the_state_dict(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    state = dm.state_dict()
    blank = make(corpus_dir, tmp_path / "elsewhere")
    blank.load_state_dict(state)
    assert blank.tokenizer.to_bytes() == dm.tokenizer.to_bytes()
    assert not (tmp_path / "elsewhere").exists()  # restoring needs no cache build


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
