"""Caption sources, one module per kind; `build_caption_source` turns a YAML entry into one."""

from xlab.captions.sources import coco, digits, jsonl, personality, synthetic  # noqa: F401  (register kinds)
from xlab.captions.sources.base import CaptionSource, build_caption_source

__all__ = ["CaptionSource", "build_caption_source"]
