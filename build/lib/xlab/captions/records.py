"""Caption records and how an image reference becomes pixels.

A record is one image, an optional style and one or more reference captions. The image is a
string so records can be cached as JSON: a file path, `synthetic:<seed>` (drawn on demand) or
`digits:<index>` (scikit-learn's handwritten digits). `image_id` names the image: records that
share it go to the same split, and precomputed features are looked up by it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from xlab.captions.images import open_image
from xlab.captions.synthetic import draw
from xlab.common.errors import XLabError


@dataclass
class CaptionRecord:
    image_id: str
    image: str
    captions: list[str]
    style: str | None = None
    source: str = ""  # where it came from, for error messages: "<file>:<line>"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptionRecord:
        return cls(**data)


def check_captions(captions: Any, where: str) -> list[str]:
    """The non-empty reference captions of a record, or an XLabError naming it."""
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise XLabError(f"{where}: captions must be a string or a list of strings, not {captions!r}.")
    kept = [" ".join(c.split()) for c in captions if c and c.strip()]
    if not kept:
        raise XLabError(f"{where}: the record has an empty caption: give it at least one non-empty caption "
                        "or remove it.")
    return kept


@lru_cache(maxsize=1)
def digits_data():
    """scikit-learn's digits (1,797 labelled 8 x 8 images, values 0..16)."""
    # Start-up cost: scikit-learn takes a second and ~180 MB, so only a digits source loads it.
    from sklearn.datasets import load_digits

    return load_digits()


def open_record_image(record: CaptionRecord, image_size: int) -> Image.Image:
    """The record's image as RGB; an XLabError naming the record and the path if unreadable."""
    ref = record.image
    if ref.startswith("synthetic:"):
        return draw(int(ref.split(":", 1)[1]))
    if ref.startswith("digits:"):
        pixels = (digits_data().images[int(ref.split(":", 1)[1])] * (255 / 16)).astype(np.uint8)
        return Image.fromarray(255 - pixels, mode="L").convert("RGB")  # dark ink on white paper
    return open_image(ref, image_size, what=f"record {record.image_id} ({record.source or 'no source'})")
