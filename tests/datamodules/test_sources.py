import json

import datasets
import pytest

from xlab.common.errors import XLabError
from xlab.datamodules.sources import build_source

WIKITEXT_ROWS = [" \n", " = Alpha = \n", " \n", " Alpha is first . \n", " = = History = = \n",
                 " It began . \n", " = Beta = \n", " Beta follows . \n"]


def test_embedded_corpus_needs_nothing_and_has_many_documents():
    docs = list(build_source({"kind": "embedded"}))
    assert len(docs) > 200 and len({d.id for d in docs}) == len(docs)
    assert sum(len(d.text) for d in docs) > 400_000


def test_jsonl_reads_text_and_ids(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"body": "hello", "key": "k1"}) + "\n\n" + json.dumps({"body": "world", "key": "k2"}) + "\n")
    docs = list(build_source({"kind": "jsonl", "path": str(path), "text_field": "body", "id_field": "key"}))
    assert [(d.id, d.text) for d in docs] == [("jsonl:k1", "hello"), ("jsonl:k2", "world")]


def test_jsonl_bad_line_is_located(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(XLabError, match="a.jsonl:2 is not valid JSON"):
        list(build_source({"kind": "jsonl", "path": str(path)}))


def test_jsonl_missing_field_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"content": "ok"}\n')
    with pytest.raises(XLabError, match="no string field 'text'"):
        list(build_source({"kind": "jsonl", "path": str(path)}))


def test_huggingface_local_copy_groups_wikitext_articles(tmp_path):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": WIKITEXT_ROWS}),
                                   "validation": datasets.Dataset.from_dict({"text": [" = Gamma = \n", " G . \n"]})})
    splits.save_to_disk(str(tmp_path / "wt"))
    source = build_source({"kind": "huggingface", "path": str(tmp_path / "wt"), "split": "train+validation",
                           "group": "wikitext_articles"})
    docs = list(source)
    assert [d.id.rsplit(":", 1)[1] for d in docs] == ["Alpha", "Beta", "Gamma"]
    assert "History" in docs[0].text and docs[0].text.startswith(" = Alpha = \n")


def test_huggingface_data_files_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part.jsonl").write_text(json.dumps({"text": "from a data file"}) + "\n")
    docs = list(build_source({"kind": "huggingface", "path": str(tmp_path / "data")}))
    assert docs[0].text == "from a data file"


def test_huggingface_hub_name_offline_explains_the_local_copy():
    with pytest.raises(XLabError, match="save_to_disk") as error:
        list(build_source({"kind": "huggingface", "name": "wikitext", "config": "wikitext-2-raw-v1"}))
    assert "\n" not in str(error.value)


def test_huggingface_missing_split_is_named(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(XLabError, match="no split 'test'"):
        list(build_source({"kind": "huggingface", "path": str(tmp_path / "d"), "split": "test"}))
