"""The image transform: every mode becomes RGB, any size becomes the centre square, bad files are named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xlab.captions.images import load_pixels, transform
from xlab.common.errors import XLabError


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    if mode == "I;16":
        image = Image.fromarray((np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50))
    else:
        image = image.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    pixels = load_pixels(path, 16)
    assert pixels.shape == (3, 16, 16) and str(pixels.dtype) == "torch.uint8"


def test_transparent_pixels_are_white():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert transform(image, 8)[:, 4, 4].tolist() == [255, 255, 255]


def test_resize_shorter_side_and_centre_crop():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))  # the left third is red, cropped away
    pixels = transform(image, 32)
    assert pixels.shape == (3, 32, 32) and pixels[0].max() < 40 and pixels[2].min() > 200


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (10, 200, 10)).save(path, quality=70)
    pixels = load_pixels(path, 32)
    assert pixels.shape == (3, 32, 32) and pixels[1].float().mean() > 150
    assert Image.MAX_IMAGE_PIXELS is None  # a local dataset's panoramas are not decompression bombs


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(XLabError, match="nope.png does not exist"):
        load_pixels(tmp_path / "nope.png", 32)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(XLabError, match="bad.jpg is not a readable image"):
        load_pixels(tmp_path / "bad.jpg", 32)
