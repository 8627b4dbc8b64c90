"""`jsonl`: one record per line, `{"image": PATH, "style": S, "caption": TEXT}` or `"captions": [...]`.

Relative image paths are read from the JSONL file's folder (or `image_dir`). Lines naming the
same image are one image for the split; `id` defaults to the image path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from xlab.captions.records import CaptionRecord, check_captions
from xlab.captions.sources.base import CaptionSource, expand, file_stamp, register
from xlab.common.errors import XLabError


@register
class CaptionJsonLines(CaptionSource):
    kind = "jsonl"

    def __init__(self, path: str, image_dir: str | None = None, image_field: str = "image",
                 style_field: str = "style", id_field: str = "id"):
        self.path = expand(path)
        self.image_dir = expand(image_dir) if image_dir else self.path.parent
        self.image_field, self.style_field, self.id_field = image_field, style_field, id_field

    def records(self) -> Iterator[CaptionRecord]:
        if not self.path.is_file():
            raise XLabError(f"caption JSONL {self.path} does not exist: set the source's 'path' to a .jsonl file.")
        with open(self.path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise XLabError(f"{where} is not valid JSON ({e.msg}).") from None
                if not isinstance(row, dict) or not isinstance(row.get(self.image_field), str):
                    raise XLabError(f"{where}: the record needs an '{self.image_field}' path.")
                captions = row.get("captions", row.get("caption"))
                if captions is None:
                    raise XLabError(f"{where}: the record has neither 'caption' nor 'captions'.")
                image = self.image_dir / row[self.image_field]
                style = row.get(self.style_field) or None
                yield CaptionRecord(image_id=str(row.get(self.id_field) or row[self.image_field]), image=str(image),
                                    captions=check_captions(captions, where), style=style, source=where)

    def fingerprint(self) -> dict[str, Any]:
        stamp = file_stamp(self.path) if self.path.is_file() else [str(self.path)]
        return {"kind": self.kind, "file": stamp, "image_dir": str(self.image_dir), "fields":
                [self.image_field, self.style_field, self.id_field]}
