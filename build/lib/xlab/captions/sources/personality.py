"""`personality_captions`: the PersonalityCaptions release in its own layout.

    <path>/train.json  val.json (or valid.json)  test.json  personalities.json
    <image_dir>/<hash>.jpg  or YFCC's nested  <image_dir>/<h[:3]>/<h[3:6]>/<hash>.jpg

Records are `{"personality": ..., "comment": ..., "image_hash": ...}`; test records add
`additional_comments` (more references). `personalities.json` lists every trait (a flat list,
or the release's dict of lists), and each becomes a style token even if no record uses it.
The release's splits are kept by default (`keep_splits`); they are already split by image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.captions.records import CaptionRecord, check_captions
from xlab.captions.sources.base import CaptionSource, expand, file_stamp, read_json, register
from xlab.common.errors import XLabError

SPLIT_FILES = {"train": ("train.json",), "val": ("val.json", "valid.json"), "test": ("test.json",)}


@register
class PersonalityCaptions(CaptionSource):
    kind = "personality_captions"

    def __init__(self, path: str, image_dir: str | None = None, image_layout: str = "auto",
                 image_ext: str = ".jpg", keep_splits: bool = True):
        self.path = expand(path)
        self.image_dir = expand(image_dir) if image_dir else self.path / "images"
        if image_layout not in ("auto", "flat", "yfcc"):
            raise XLabError(f"personality_captions image_layout {image_layout!r}: use auto, flat or yfcc.")
        self.layout, self.ext, self.keep_splits = image_layout, image_ext, keep_splits

    def files(self) -> dict[str, Path]:
        if not self.path.is_dir():
            raise XLabError(f"PersonalityCaptions folder {self.path} does not exist: set the source's 'path'.")
        found = {}
        for split, names in SPLIT_FILES.items():
            present = [self.path / n for n in names if (self.path / n).is_file()]
            if not present:
                raise XLabError(f"PersonalityCaptions folder {self.path} has no {' or '.join(names)}: "
                                "the release has train.json, val.json (or valid.json), test.json and personalities.json.")
            found[split] = present[0]
        if not (self.path / "personalities.json").is_file():
            raise XLabError(f"PersonalityCaptions folder {self.path} has no personalities.json.")
        found["personalities"] = self.path / "personalities.json"
        return found

    def image_path(self, image_hash: str) -> Path:
        flat = self.image_dir / f"{image_hash}{self.ext}"
        nested = self.image_dir / image_hash[:3] / image_hash[3:6] / f"{image_hash}{self.ext}"
        if self.layout == "flat":
            return flat
        if self.layout == "yfcc":
            return nested
        return nested if not flat.exists() and nested.exists() else flat

    def known_styles(self) -> list[str]:
        listed = read_json(self.files()["personalities"], "PersonalityCaptions personalities")
        if isinstance(listed, dict):  # the release groups traits (positive, neutral, negative)
            listed = [p for group in listed.values() for p in group]
        return sorted({str(p).strip() for p in listed if str(p).strip()})

    def records(self) -> Iterator[CaptionRecord]:
        files = self.files()
        for split in SPLIT_FILES:
            rows = read_json(files[split], f"PersonalityCaptions {split} split")
            if not isinstance(rows, list):
                raise XLabError(f"{files[split]} must hold a list of records, not {type(rows).__name__}.")
            for i, row in enumerate(rows):
                where = f"{files[split]} record {i}"
                if not isinstance(row, dict) or not row.get("image_hash"):
                    raise XLabError(f"{where} has no image_hash.")
                captions = [row.get("comment") or "", *row.get("additional_comments", [])]
                extra = {"split": split} if self.keep_splits else {}
                yield CaptionRecord(image_id=str(row["image_hash"]), image=str(self.image_path(row["image_hash"])),
                                    captions=check_captions(captions, where),
                                    style=(row.get("personality") or "").strip() or None, source=where, extra=extra)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": {k: file_stamp(v) for k, v in self.files().items()},
                "image_dir": str(self.image_dir), "layout": self.layout, "ext": self.ext,
                "keep_splits": self.keep_splits}
