"""CaptionDataModule: caption sources -> records split by image -> tokenizer with style tokens.

    prepare_data   reads every source, checks each record's image (or its features), splits the
                   records by image (a hash of the image id, or the dataset's own split), trains
                   the tokenizer on the train captions with one special token per style, and
                   writes records, tokenizer and counts to a cache folder keyed by the settings
    setup          reads the records back; images are decoded per example (or features read)

Batches: pixels (B, 3, S, S) uint8 or features (B, D) / (B, N, D); input_ids, labels (loss on
caption tokens only), num_bytes; and per row its prompt ids, references, image id and style.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from xlab.captions.dataset import CaptionDataset, collate, style_piece
from xlab.captions.evaluation import CaptionEvaluator
from xlab.captions.features import FeatureStore
from xlab.captions.records import CaptionRecord
from xlab.captions.sources import build_caption_source
from xlab.common.errors import XLabError
from xlab.common.files import write_text_
from xlab.datamodules.base import DataModule
from xlab.datamodules.splits import SPLITS, split_of

CAPTION_CACHE_FORMAT = 1


class CaptionDataModule(DataModule):
    """Image captioning data (see the module doc).

    Args (beyond the shared ones of `DataModule`):
        captions: Caption sources, each a dict with a `kind`: synthetic_shapes (images, seed,
            styles, plain), digits (max_images), personality_captions (path, image_dir,
            image_layout, keep_splits), coco (path, annotations, image_dir, keep_splits),
            jsonl (path, image_dir).
        image_size: Side of the square the transform makes (resize shorter side, centre crop).
        features: Precomputed features (a folder of <image_id>.npy or a .safetensors file)
            used instead of the images.
        on_error: A record whose image (or features) is missing or unreadable: fail names it
            and stops; skip leaves it out and counts it.
        max_caption_len: Caption tokens kept per example (the model's max_len must hold the
            image prefix, the prompt and this many tokens).
        blank_images: Every image black (ablation: what the decoder learns without the image).
        every_reference: Train on every reference caption of a record (else the first only).
    """

    def __init__(
        self,
        captions: list[dict[str, Any]] | None = None,
        image_size: int = 32,
        features: str | None = None,
        on_error: Literal["fail", "skip"] = "fail",
        max_caption_len: int = 40,
        blank_images: bool = False,
        every_reference: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)  # its save_hyperparameters() records these arguments too
        if image_size < 8 or max_caption_len < 1:
            raise XLabError(f"data image_size={image_size} must be >= 8 and max_caption_len={max_caption_len} >= 1.")
        self.caption_sources = [build_caption_source(s) for s in (captions or [{"kind": "synthetic_shapes"}])]
        self._styles: list[str] = []
        self.records: dict[str, list[CaptionRecord]] = {}
        self._evaluator: CaptionEvaluator | None = None  # kept across epochs: it tells what it skipped once

    # --- the cache ----------------------------------------------------------------------------
    def tokenizer_settings(self) -> dict[str, Any]:
        settings = super().tokenizer_settings()
        styles = [style_piece(s) for s in self._styles]
        settings["extra_special_tokens"] = list(dict.fromkeys([*settings["extra_special_tokens"], *styles]))
        return settings

    cache_kind = "captions"

    def cache_settings(self) -> dict[str, Any]:
        hp = self.hparams
        return {"format": CAPTION_CACHE_FORMAT, "sources": [s.fingerprint() for s in self.caption_sources],
                "fractions": self.fractions, "salt": hp.split_salt, "tokenizer": self.tokenizer_settings(),
                "features": hp.features, "on_error": hp.on_error, "max_documents": hp.max_documents}

    def build_cache_(self, tmp: Path) -> None:
        hp = self.hparams
        features = FeatureStore(hp.features) if hp.features else None
        splits: dict[str, list[CaptionRecord]] = {s: [] for s in SPLITS}
        skipped: list[str] = []
        styles: set[str] = set()
        for source in self.caption_sources:
            styles.update(source.known_styles())
            for record in source.records():
                if hp.max_documents is not None and sum(map(len, splits.values())) >= hp.max_documents:
                    break
                problem = _image_problem(record, features)
                if problem is not None:
                    if hp.on_error == "fail":
                        raise XLabError(f"record {record.image_id} ({record.source}): {problem}; fix it, or set "
                                        "data on_error: skip to leave such records out.")
                    skipped.append(f"{record.image_id}: {problem}")
                    continue
                if record.style:
                    styles.add(record.style)
                split = record.extra.get("split") or split_of(record.image_id, self.fractions, hp.split_salt)
                splits[split].append(record)
        if not splits["train"]:
            raise XLabError("the caption sources gave the train split no record: add data, or check on_error "
                            f"(skipped {len(skipped)}).")
        if skipped:
            print(f"xlab: skipped {len(skipped)} records with a missing or unreadable image (first: {skipped[0]})",
                  flush=True)
        self._styles = sorted(styles)
        tokenizer = self.make_tokenizer(c for r in splits["train"] for c in r.captions)
        tokenizer.save_(tmp / "tokenizer.model")
        for split, records in splits.items():
            write_text_(tmp / f"{split}.jsonl", "".join(json.dumps(r.to_json()) + "\n" for r in records))
        meta = {"records": {s: len(r) for s, r in splits.items()}, "styles": self._styles, "skipped": len(skipped),
                "skipped_examples": skipped[:20], "style_counts": Counter(r.style or "" for r in splits["train"])}
        write_text_(tmp / "meta.json", json.dumps(meta, indent=1))

    # --- splits -------------------------------------------------------------------------------
    @property
    def styles(self) -> list[str]:
        return list(self.meta["styles"])

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        for split in SPLITS:
            lines = (self.cache_folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            self.records[split] = [CaptionRecord.from_json(json.loads(line)) for line in lines]

    def report(self) -> None:
        super().report()
        meta = self.meta
        for split, count in meta["records"].items():
            print(f"xlab: {split:<8} {count:>8,} images", flush=True)
        print(f"xlab: styles: {', '.join(meta['styles']) or 'none'}; skipped records: {meta['skipped']}", flush=True)

    # --- what the model is handed, and its evaluation -----------------------------------------------
    def model_resources(self) -> dict[str, Any]:
        """The tokenizer (SCST decodes its samples) and the references (SCST's CIDEr-D statistics)."""
        return {"tokenizer": self.tokenizer, "references": self.references}

    def generation_evaluator(self, model) -> CaptionEvaluator | None:
        if not model.hparams.get("caption_metrics", False):
            return None
        if self._evaluator is None:
            self._evaluator = CaptionEvaluator(self.tokenizer)
        self._evaluator.reset()
        return self._evaluator

    def references(self, split: str) -> list[list[str]]:
        """Every record's reference captions (SCST's CIDEr-D statistics use the train split's)."""
        if not self.records:
            self.setup()
        return [r.captions for r in self.records[split]]

    def dataset(self, split: str, every_reference: bool = False) -> CaptionDataset:
        if not self.records:
            self.setup()
        if not self.records[split]:
            raise XLabError(f"the {split} split has no caption record: add data or raise its split fraction.")
        hp = self.hparams
        features = FeatureStore(hp.features) if hp.features else None
        return CaptionDataset(self.records[split], self.tokenizer, self.token_bytes, hp.image_size, hp.max_caption_len,
                              every_reference, features, hp.blank_images)

    def train_dataloader(self):
        return self._train_loader(self.dataset("train", self.hparams.every_reference), True, self.hparams.batch_size,
                                  collate_fn=collate(self.tokenizer.pad_id))

    def val_dataloader(self):
        return self._loader(self.dataset("val"), self.eval_batch_size, collate_fn=collate(self.tokenizer.pad_id))

    def test_dataloader(self):
        return self._loader(self.dataset("test"), self.eval_batch_size, collate_fn=collate(self.tokenizer.pad_id))

    def predict_dataloader(self):
        raise XLabError("caption data has no predict split: use validate or test for scores, "
                        "and infer.py CKPT --image PATH for captions.")


def _image_problem(record: CaptionRecord, features: FeatureStore | None) -> str | None:
    """Why the record's image (or its features) cannot be used; None when it can."""
    if features is not None:
        return None if features.has(record.image_id) else f"no precomputed features for image {record.image_id!r}"
    if ":" in record.image and record.image.split(":", 1)[0] in ("synthetic", "digits"):
        return None
    path = Path(record.image)
    if not path.is_file():
        return f"image file {path} does not exist"
    try:
        with Image.open(path) as image:
            image.size  # the header parsed: a format Pillow can decode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image file {path} is not readable ({type(e).__name__})"
    return None
