"""The captions family's part of infer.py: captioning an image file (`--image`)."""

from __future__ import annotations

import argparse

from xlab.common.plugins import FrontEnd, option


def _captioning(args: argparse.Namespace) -> bool:
    return args.image is not None


FRONT_END = FrontEnd(
    title="captions (CaptionModel)",
    options=(option("--image", metavar="PATH", help="caption this image file instead of continuing a prompt"),
             option("--style", metavar="STYLE", help="the caption's style (an unknown one lists the known ones)")),
    selected=_captioning,
    run="xlab.captions.front_end:caption_command",
)
