"""Caption data in the real layouts, written by the tests: PersonalityCaptions, COCO, JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from xlab.captions.synthetic import draw, references

STYLES = ("Happy", "Sarcastic", "Old-timey")


def save_image(path: Path, seed: int, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(seed).convert(mode).save(path)
    return path


def write_personality(root: Path, images: int = 30, nested: bool = True, val_name: str = "val.json") -> Path:
    """The PersonalityCaptions release layout, with YFCC's nested image folders by default."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {"train.json": [], val_name: [], "test.json": []}
    for i in range(images):
        image_hash = f"{i:04x}" + "ab" * 14
        folder = root / "images" / (f"{image_hash[:3]}/{image_hash[3:6]}" if nested else "")
        save_image(folder / f"{image_hash}.jpg", i)
        name = ("train.json", val_name, "test.json")[0 if i % 5 < 3 else 1 if i % 5 == 3 else 2]
        row = {"personality": STYLES[i % 3], "comment": references(i, None)[0], "image_hash": image_hash}
        if name == "test.json":
            row["additional_comments"] = references(i, None)[1:]
        splits[name].append(row)
    for name, rows in splits.items():
        (root / name).write_text(json.dumps(rows))
    (root / "personalities.json").write_text(json.dumps([*STYLES, "Whimsical"]))
    return root


def write_coco(root: Path, images: int = 30) -> Path:
    """annotations/captions_{train,val}2017.json and the train2017/, val2017/ image folders."""
    for split, ids in (("train2017", range(0, images, 2)), ("val2017", range(1, images, 2))):
        entries, notes = [], []
        for i in ids:
            file_name = f"{i:012d}.jpg"
            save_image(root / split / file_name, i)
            entries.append({"id": i, "file_name": file_name, "width": 64, "height": 64})
            notes += [{"id": 100 * i + k, "image_id": i, "caption": c.capitalize() + "."}
                      for k, c in enumerate(references(i, None))]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": entries, "annotations": notes}))
    return root


def write_jsonl(root: Path, images: int = 30) -> Path:
    lines = []
    for i in range(images):
        save_image(root / "img" / f"{i}.png", i)
        style = ("happy", None)[i % 2]
        row = {"image": f"img/{i}.png", "captions": references(i, None)} if i % 3 else \
            {"image": f"img/{i}.png", "caption": references(i, None)[0]}
        if style:
            row["style"] = style
        lines.append(json.dumps(row))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "captions.jsonl"


def shrink(tmp_path: Path, steps: int = 4, decoder_shape: bool = True) -> list[str]:
    """CLI overrides that shrink a caption recipe to seconds on a CPU (decoder_shape=False for a
    recipe whose pretrained folder decides the decoder's shape)."""
    shape = ["--model.init_args.n_layer", "1", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "32"]
    return ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *(shape if decoder_shape else []),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.batch_size", "4",
            "--data.init_args.eval_batch_size", "16"]
