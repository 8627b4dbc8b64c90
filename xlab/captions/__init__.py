"""Image captioning data: sources (synthetic shapes, scikit-learn digits, PersonalityCaptions, COCO,
JSONL), the image transform, precomputed features, and the COCO caption metrics and SCST reward."""

from xlab.captions.datamodule import CaptionDataModule

__all__ = ["CaptionDataModule"]
