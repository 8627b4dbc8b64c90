"""`digits`: scikit-learn's 1,797 handwritten digits (8x8, installed with the package), with captions
made from each label by templates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xlab.captions.records import CaptionRecord, digits_data
from xlab.captions.sources.base import CaptionSource, register

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten digit {name}", "the number {name} written by hand", "a scanned {name}")


@register
class Digits(CaptionSource):
    kind = "digits"

    def __init__(self, max_images: int | None = None):
        self.max_images = max_images

    def records(self) -> Iterator[CaptionRecord]:
        labels = digits_data().target
        count = len(labels) if self.max_images is None else min(self.max_images, len(labels))
        for i in range(count):
            name = NAMES[int(labels[i])]
            yield CaptionRecord(image_id=f"digits-{i}", image=f"digits:{i}",
                                captions=[t.format(name=name) for t in TEMPLATES], source=f"digits:{i}")

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_images": self.max_images, "version": 1}
