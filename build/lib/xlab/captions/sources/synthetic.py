"""`synthetic_shapes`: seeded scenes drawn with Pillow (see `xlab.captions.synthetic`)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from xlab.captions.records import CaptionRecord
from xlab.captions.sources.base import CaptionSource, register
from xlab.captions.synthetic import STYLES, references
from xlab.common.errors import XLabError


@register
class SyntheticShapes(CaptionSource):
    """`images` scenes; each gets one style drawn from `styles` (plus no style, if `plain`)."""

    kind = "synthetic_shapes"

    def __init__(self, images: int = 2000, seed: int = 0, styles: list[str] | None = None, plain: bool = True):
        styles = list(STYLES) if styles is None else list(styles)
        unknown = sorted(set(styles) - set(STYLES))
        if unknown:
            raise XLabError(f"synthetic_shapes has no style {', '.join(unknown)}: use some of {', '.join(STYLES)}.")
        if images < 1 or not (styles or plain):
            raise XLabError("synthetic_shapes needs images >= 1 and at least one style or plain: true.")
        self.images, self.seed, self.styles, self.plain = images, seed, styles, plain

    def records(self) -> Iterator[CaptionRecord]:
        choices: list[str | None] = [*self.styles, *([None] if self.plain else [])]
        rng = random.Random(self.seed)
        for i in range(self.images):
            scene_seed = self.seed * 1_000_003 + i
            style = rng.choice(choices)
            yield CaptionRecord(image_id=f"shapes-{scene_seed}", image=f"synthetic:{scene_seed}",
                                captions=references(scene_seed, style), style=style, source=f"synthetic_shapes:{i}")

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "images": self.images, "seed": self.seed, "styles": self.styles,
                "plain": self.plain, "version": 1}
