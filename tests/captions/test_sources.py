"""Every caption source on data in its real layout, written here, and each bad input's message."""

from __future__ import annotations

import json

import pytest

from tests.captions.helpers import STYLES, write_coco, write_jsonl, write_personality
from xlab.captions import CaptionDataModule
from xlab.captions.sources import build_caption_source
from xlab.captions.synthetic import STYLES as SYNTHETIC_STYLES
from xlab.captions.synthetic import detect_style, draw, references, scene
from xlab.common.errors import XLabError


def data_module(tmp_path, captions, **kwargs):
    settings = {"cache_dir": str(tmp_path / "cache"), "vocab_size": 320, "batch_size": 4,
                "split_fractions": (0.6, 0.2, 0.2, 0.0), **kwargs}
    return CaptionDataModule(captions=captions, **settings)


def test_synthetic_shapes_are_seeded_and_styles_recognisable():
    assert draw(5).tobytes() == draw(5).tobytes() and draw(5).tobytes() != draw(6).tobytes()
    plain = references(5, None)[0]
    assert plain == scene(5).describe() and plain.split()[0] in ("one", "two", "three")
    for style in SYNTHETIC_STYLES:
        assert all(detect_style(c) == style for c in references(5, style))
    assert detect_style(plain) is None
    records = list(build_caption_source({"kind": "synthetic_shapes", "images": 60, "seed": 1}).records())
    assert {r.style for r in records} == {*SYNTHETIC_STYLES, None}


def test_split_by_image_and_style_tokens(tmp_path):
    data = data_module(tmp_path, [{"kind": "synthetic_shapes", "images": 200}])
    data.setup()
    ids = {split: {r.image_id for r in data.records[split]} for split in ("train", "val", "test")}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    for style in SYNTHETIC_STYLES:
        token = data.tokenizer[f"<style:{style}>"]
        assert data.tokenizer.encode(f"<style:{style}>") != [token] or token > 3
    item = data.dataset("train", every_reference=True)[0]
    assert item["pixels"].shape == (3, 32, 32) and str(item["pixels"].dtype) == "torch.uint8"
    labelled = item["labels"][item["labels"] != -100]
    # The loss covers the caption and its end token, never the prompt.
    assert data.tokenizer.decode(labelled[:-1]) == data.records["train"][0].captions[0]
    assert int(labelled[-1]) == data.tokenizer.eos_id
    assert len(data.dataset("train", every_reference=True)) == 3 * len(data.dataset("train"))


def test_digits_from_scikit_learn(tmp_path):
    data = data_module(tmp_path, [{"kind": "digits", "max_images": 120}])
    data.setup()
    record = data.records["train"][0]
    assert record.captions[0].startswith("a handwritten digit ")
    assert data.dataset("train")[0]["pixels"].shape == (3, 32, 32)


@pytest.mark.parametrize("nested,val_name", [(True, "val.json"), (False, "valid.json")])
def test_personality_captions_layout(tmp_path, nested, val_name):
    root = write_personality(tmp_path / "pc", nested=nested, val_name=val_name)
    data = data_module(tmp_path, [{"kind": "personality_captions", "path": str(root)}])
    data.setup()
    assert [len(data.records[s]) for s in ("train", "val", "test")] == [18, 6, 6]  # the release's own splits
    assert set(data.styles) == {*STYLES, "Whimsical"}  # personalities.json lists one no record uses
    assert data.tokenizer["<style:Whimsical>"] > 3
    assert len(data.records["test"][0].captions) == 3  # comment + additional_comments
    assert data.dataset("test")[0]["pixels"].shape == (3, 32, 32)


def test_coco_layout(tmp_path):
    root = write_coco(tmp_path / "coco")
    data = data_module(tmp_path, [{"kind": "coco", "path": str(root), "keep_splits": True}])
    data.setup()
    assert len(data.records["train"]) == 15 and len(data.records["val"]) == 15
    assert data.records["train"][0].captions[0].endswith(".") and len(data.records["train"][0].captions) == 3
    batch = next(iter(data.val_dataloader()))
    assert batch["pixels"].shape == (4, 3, 32, 32) and len(batch["references"]) == 4


def test_jsonl_layout(tmp_path):
    path = write_jsonl(tmp_path / "j")
    data = data_module(tmp_path, [{"kind": "jsonl", "path": str(path)}])
    data.setup()
    records = [r for s in ("train", "val", "test") for r in data.records[s]]
    assert len(records) == 30 and {r.style for r in records} == {"happy", None}
    assert data.tokenizer["<style:happy>"] > 3


def test_precomputed_features_npy_and_safetensors(tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    path = write_jsonl(tmp_path / "j", images=12)
    ids = [f"img/{i}.png" for i in range(12)]
    folder = tmp_path / "feats"
    folder.mkdir()
    vectors = {i: np.random.default_rng(n).standard_normal(16).astype(np.float32) for n, i in enumerate(ids)}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for n, row in enumerate(rows):
        row["id"] = f"im{n}"
        np.save(folder / f"im{n}.npy", vectors[ids[n]])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = data_module(tmp_path, [{"kind": "jsonl", "path": str(path)}], features=str(folder))
    data.setup()
    record = data.records["train"][0]
    item = data.dataset("train")[0]
    assert "pixels" not in item and torch.equal(item["features"], torch.from_numpy(np.load(folder / f"{record.image_id}.npy")))
    save_file({f"im{n}": torch.from_numpy(vectors[ids[n]]) for n in range(12)}, str(tmp_path / "f.safetensors"))
    data = data_module(tmp_path, [{"kind": "jsonl", "path": str(path)}], features=str(tmp_path / "f.safetensors"))
    assert data.dataset("train")[0]["features"].shape == (16,)


def test_missing_and_unreadable_images(tmp_path):
    path = write_jsonl(tmp_path / "j", images=20)
    (tmp_path / "j" / "img" / "3.png").unlink()
    (tmp_path / "j" / "img" / "4.png").write_bytes(b"not an image")
    with pytest.raises(XLabError, match=r"record img/3.png .*captions.jsonl:4.*does not exist.*on_error: skip"):
        data_module(tmp_path, [{"kind": "jsonl", "path": str(path)}]).prepare_data()
    data = data_module(tmp_path, [{"kind": "jsonl", "path": str(path)}], on_error="skip")
    data.prepare_data()
    assert data.meta["skipped"] == 2 and any("not readable" in s for s in data.meta["skipped_examples"])


@pytest.mark.parametrize("writer,breaks,message", [
    (write_personality, "personalities.json", "has no personalities.json"),
    (write_personality, "test.json", "has no test.json"),
    (write_coco, "annotations/captions_val2017.json", None),
    (write_coco, "val2017", "image folder .*val2017 .* is missing"),
])
def test_dataset_folder_with_a_missing_file(tmp_path, writer, breaks, message):
    import shutil

    root = writer(tmp_path / "d")
    target = root / breaks
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    kind = "personality_captions" if writer is write_personality else "coco"
    data = data_module(tmp_path, [{"kind": kind, "path": str(root)}])
    if message is None:  # COCO with one annotation file left still works, from that file
        data.setup()
        assert sum(len(v) for v in data.records.values()) == 15
    else:
        with pytest.raises(XLabError, match=message):
            data.prepare_data()


@pytest.mark.parametrize("line,message", [
    ({"image": "x.png", "caption": "   "}, "empty caption"),
    ({"image": "x.png"}, "neither 'caption' nor 'captions'"),
    ({"caption": "a cat"}, "needs an 'image' path"),
])
def test_bad_jsonl_records(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(XLabError, match=message):
        data_module(tmp_path, [{"kind": "jsonl", "path": str(path)}]).prepare_data()


def test_unknown_source_settings():
    with pytest.raises(XLabError, match="unknown caption source kind 'flickr'"):
        build_caption_source({"kind": "flickr"})
    with pytest.raises(XLabError, match="has no setting colour"):
        build_caption_source({"kind": "synthetic_shapes", "colour": 1})
    with pytest.raises(XLabError, match="has no style angry"):
        build_caption_source({"kind": "synthetic_shapes", "styles": ["angry"]})
