"""Opening images of any mode and size, and the one transform every caption image goes through.

The transform (documented in docs/captions.md) is:
    1. open the file; palette, grayscale, CMYK, 16-bit and RGBA images become RGB (transparent
       pixels over white, as a viewer shows them);
    2. resize so the shorter side is `image_size` (bicubic, antialiased);
    3. crop the centre square of `image_size` x `image_size`;
    4. hand the model uint8 pixels (3, H, W); the model's encoder normalises them with its
       `image_mean` / `image_std` (CLIP's by default), so the data stays cheap to batch and the
       normalisation travels with the weights into checkpoints and exports.
Huge images are decoded at a reduced scale where the format allows (JPEG draft mode) and never
refused as decompression bombs: a caption dataset's images are the user's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from xlab.common.errors import XLabError

# Decompression-bomb protection is for untrusted uploads; a local dataset may hold panoramas.
Image.MAX_IMAGE_PIXELS = None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB; transparency is composited over white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array / peak * 255).astype(np.uint8))
    return image.convert("RGB")


def open_image(path: str | Path, image_size: int, what: str = "image") -> Image.Image:
    """The RGB image at `path`; an XLabError naming `what` and the path if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise XLabError(f"{what}: image file {path} does not exist.")
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image_size * 2, image_size * 2))  # JPEG: decode at a fraction of full size
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise XLabError(f"{what}: {path} is not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from None


def transform(image: Image.Image, image_size: int) -> torch.Tensor:
    """Resize the shorter side to `image_size`, crop the centre square: uint8 (3, S, S)."""
    image = to_rgb(image)
    width, height = image.size
    scale = image_size / min(width, height)
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_pixels(path: str | Path, image_size: int, what: str = "image") -> torch.Tensor:
    return transform(open_image(path, image_size, what), image_size)
