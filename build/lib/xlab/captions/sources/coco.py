"""`coco`: COCO captions' layout, the format most captioning datasets are shared in.

    <path>/annotations/captions_train2017.json   {"images": [{"id", "file_name"}, ...],
    <path>/annotations/captions_val2017.json      "annotations": [{"image_id", "caption"}, ...]}
    <path>/train2017/<file_name>   <path>/val2017/<file_name>

Each annotation file's images are looked up in the folder named after it (captions_X.json ->
<path>/X/, or `image_dir`). The five captions of an image are its references. With
`keep_splits`, captions_train* is train and captions_val* is val; otherwise the hash split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.captions.records import CaptionRecord, check_captions
from xlab.captions.sources.base import CaptionSource, expand, file_stamp, read_json, register
from xlab.common.errors import XLabError


@register
class CocoCaptions(CaptionSource):
    kind = "coco"

    def __init__(self, path: str, annotations: str = "annotations/captions_*.json", image_dir: str | None = None,
                 keep_splits: bool = False):
        self.path, self.pattern, self.keep_splits = expand(path), annotations, keep_splits
        self.image_dir = expand(image_dir) if image_dir else None

    def files(self) -> list[Path]:
        if not self.path.is_dir():
            raise XLabError(f"COCO folder {self.path} does not exist: set the source's 'path'.")
        found = sorted(p for p in self.path.glob(self.pattern) if p.is_file())
        if not found:
            raise XLabError(f"COCO folder {self.path} has no annotation file matching {self.pattern!r} "
                            "(e.g. annotations/captions_train2017.json).")
        return found

    def records(self) -> Iterator[CaptionRecord]:
        for file in self.files():
            data = read_json(file, "COCO captions")
            if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
                raise XLabError(f"{file} is not a COCO captions file: it needs 'images' and 'annotations'.")
            name = file.stem.removeprefix("captions_")
            folder = self.image_dir or self.path / name
            if not folder.is_dir():
                raise XLabError(f"COCO image folder {folder} (for {file.name}) is missing: set 'image_dir'.")
            captions: dict[Any, list[str]] = defaultdict(list)
            for note in data["annotations"]:
                captions[note.get("image_id")].append(note.get("caption") or "")
            split = "train" if name.startswith("train") else "val" if name.startswith("val") else "test"
            for image in data["images"]:
                where = f"{file.name} image {image.get('id')}"
                if image.get("id") not in captions:
                    continue  # test images ship without captions
                yield CaptionRecord(image_id=f"coco-{image['id']}", image=str(folder / image["file_name"]),
                                    captions=check_captions(captions[image["id"]], where), source=where,
                                    extra={"split": split} if self.keep_splits else {})

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": [file_stamp(f) for f in self.files()],
                "image_dir": str(self.image_dir) if self.image_dir else None, "keep_splits": self.keep_splits}
