"""What a caption source is, and how a YAML source entry becomes one.

A source yields `CaptionRecord`s. Sources whose dataset ships its own split by image (COCO's
train / val files, PersonalityCaptions' train / valid / test) can keep it with `keep_splits`:
the record then carries `extra["split"]`, and the data module uses it instead of the hash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.captions.records import CaptionRecord
from xlab.common.errors import XLabError
from xlab.datamodules.sources.base import build_registered


class CaptionSource:
    kind: str = ""

    def records(self) -> Iterator[CaptionRecord]:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the records, so a changed source means a new cache."""
        raise NotImplementedError

    def known_styles(self) -> list[str]:
        """Styles the dataset declares beyond those its records use (PersonalityCaptions' list)."""
        return []


def file_stamp(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def expand(path: str) -> Path:
    return Path(os.path.expanduser(path))


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise XLabError(f"{what}: {path} is missing.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLabError(f"{what}: {path} is not valid JSON ({e}).") from None


_REGISTRY: dict[str, type[CaptionSource]] = {}


def register(cls: type[CaptionSource]) -> type[CaptionSource]:
    _REGISTRY[cls.kind] = cls
    return cls


def build_caption_source(spec: dict[str, Any]) -> CaptionSource:
    """`{"kind": "coco", "path": ...}` as a source, every key checked."""
    return build_registered(spec, _REGISTRY, "caption source")
