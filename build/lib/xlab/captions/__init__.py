"""Image captioning: an image encoder whose output prefixes XLabModel's decoder.

    model.py            CaptionModel
    image_encoders.py   conv (from pixels), a local CLIP / ViT, or precomputed features
    scst.py             self-critical sequence training
    datamodule.py       CaptionDataModule: records -> split by image -> tokenizer -> examples
    sources/            synthetic shapes, scikit-learn digits, PersonalityCaptions, COCO, JSONL
    images.py, features.py, dataset.py, records.py, synthetic.py   what the data module reads
    metrics.py, reward.py   the COCO caption metrics and SCST's CIDEr-D reward
    front_end.py        infer.py's image mode
"""

from xlab.common.lazy import lazy_exports

# Imported when first asked for: the family's light modules (cli.py) need none of them.
_EXPORTS = {
    "CaptionDataModule": ".datamodule",
    "CaptionModel": ".model",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
