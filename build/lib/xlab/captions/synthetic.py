"""Synthetic shapes: seeded scenes of coloured shapes, captions that describe them, and styles.

A scene is one to three shapes of one kind, colour and size in one region of the canvas, e.g.
"two small red circles on the left". Everything is derived from the scene's seed, so a record
needs to store only `synthetic:<seed>` and any process redraws the same pixels. Styles change
the wording in fixed, learnable ways (a style's opener and closer), so a captioner can be asked
for a style and whether it obeyed can be read back from the caption (`detect_style`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COUNTS = ("one", "two", "three")
SIZES = {"small": 0.16, "big": 0.3}
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230), "yellow": (235, 210, 40)}
KINDS = ("circle", "square", "triangle")
REGIONS = {"on the left": (0.0, 0.0, 0.5, 1.0), "on the right": (0.5, 0.0, 1.0, 1.0),
           "at the top": (0.0, 0.0, 1.0, 0.5), "at the bottom": (0.0, 0.5, 1.0, 1.0)}
# Each style wraps the description in its own words; None is the plain caption.
STYLES = {"happy": ("what a joy ,", "so lovely"), "sad": ("sadly ,", "how gloomy"),
          "formal": ("the image depicts", "as shown")}
CANVAS = 64  # drawn at this size; the transform resizes to the run's image_size


@dataclass(frozen=True)
class Scene:
    count: int
    size: str
    colour: str
    kind: str
    region: str

    def describe(self) -> str:
        plural = "s" if self.count > 1 else ""
        return f"{COUNTS[self.count - 1]} {self.size} {self.colour} {self.kind}{plural} {self.region}"


def scene(seed: int) -> Scene:
    rng = random.Random(seed)
    return Scene(rng.randint(1, 3), rng.choice(sorted(SIZES)), rng.choice(sorted(COLOURS)), rng.choice(KINDS),
                 rng.choice(sorted(REGIONS)))


def draw(seed: int) -> Image.Image:
    """The scene of `seed` on a grey canvas; shapes of one scene do not overlap."""
    s = scene(seed)
    rng = random.Random(seed * 7919 + 1)
    image = Image.new("RGB", (CANVAS, CANVAS), (128, 128, 128))
    pen = ImageDraw.Draw(image)
    radius = SIZES[s.size] * CANVAS / 2 * rng.uniform(0.85, 1.15)
    x0, y0, x1, y1 = (v * CANVAS for v in REGIONS[s.region])
    placed: list[tuple[float, float]] = []
    for _ in range(s.count):
        for _attempt in range(50):
            cx, cy = rng.uniform(x0 + radius, x1 - radius), rng.uniform(y0 + radius, y1 - radius)
            if all((cx - px) ** 2 + (cy - py) ** 2 > (2.1 * radius) ** 2 for px, py in placed):
                break
        placed.append((cx, cy))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        colour = COLOURS[s.colour]
        if s.kind == "circle":
            pen.ellipse(box, fill=colour)
        elif s.kind == "square":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    return image


def references(seed: int, style: str | None) -> list[str]:
    """Three reference captions of the scene in `style`: one template, two paraphrases."""
    text = scene(seed).describe()
    plain = [text, f"there are {text}", f"a picture of {text}"]
    if style is None:
        return plain
    opener, closer = STYLES[style]
    return [f"{opener} {p} , {closer}" for p in plain]


def detect_style(caption: str) -> str | None:
    """The style whose opener or closer the caption uses (None: plain or unclear)."""
    found = [name for name, (opener, closer) in STYLES.items() if opener in caption or closer in caption]
    return found[0] if len(found) == 1 else None
