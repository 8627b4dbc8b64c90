"""Caption examples: the image (pixels or features), the prompt + caption tokens, the references.

An example's tokens are `<s> [<style:S>] caption </s>`; the labels are the next tokens with the
prompt's positions ignored, so the loss counts caption tokens (and the end token) only. Training
sees every reference caption of a record as its own example; evaluation sees each record once,
with all its references for the metrics and its first caption for the loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xlab.captions.features import FeatureStore
from xlab.captions.images import transform
from xlab.captions.records import CaptionRecord, open_record_image
from xlab.common.tokenizer import IGNORE_INDEX


def style_piece(style: str) -> str:
    """The special token of a style (spaces become underscores: pieces are single words)."""
    return f"<style:{'_'.join(style.split())}>"


def prompt_ids(tokenizer, style: str | None) -> list[int]:
    """`<s>` plus the style's token: what generation starts from."""
    ids = [tokenizer.sos_id]
    if style:
        ids.append(tokenizer[style_piece(style)])
    return ids


class CaptionDataset(Dataset):
    def __init__(self, records: list[CaptionRecord], tokenizer, token_bytes: np.ndarray, image_size: int,
                 max_caption_len: int, every_reference: bool, features: FeatureStore | None = None,
                 blank_images: bool = False):
        self.records, self.tokenizer, self.token_bytes = records, tokenizer, token_bytes
        self.image_size, self.max_caption_len = image_size, max_caption_len
        self.features, self.blank = features, blank_images
        # (record, caption) pairs: every reference in training, the first one in evaluation.
        self.items = [(r, c) for r, rec in enumerate(records)
                      for c in (range(len(rec.captions)) if every_reference else [0])]
        self._encoded = tokenizer.encode_batch([records[r].captions[c] for r, c in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def image(self, record: CaptionRecord) -> dict[str, torch.Tensor]:
        if self.features is not None:
            vector = self.features[record.image_id]
            return {"features": torch.zeros_like(vector) if self.blank else vector}
        if self.blank:
            return {"pixels": torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)}
        return {"pixels": transform(open_record_image(record, self.image_size), self.image_size)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        r, c = self.items[index]
        record = self.records[r]
        prompt = prompt_ids(self.tokenizer, record.style)
        tokens = np.asarray([*prompt, *self._encoded[index][: self.max_caption_len], self.tokenizer.eos_id])
        labels = tokens[1:].copy()
        labels[: len(prompt) - 1] = IGNORE_INDEX  # nothing to learn about the prompt itself
        counted = labels[labels != IGNORE_INDEX]
        return {**self.image(record), "input_ids": torch.from_numpy(tokens[:-1]), "labels": torch.from_numpy(labels),
                "num_bytes": int(self.token_bytes[counted].sum()), "prompt": prompt,
                "references": list(record.captions), "image_id": record.image_id, "style": record.style or ""}


def collate(pad_id: int):
    """Stack images, right-pad tokens (labels with the ignore index), keep text fields as lists."""

    def join(items: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(i["input_ids"]) for i in items)
        input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : len(item["input_ids"])] = item["input_ids"]
            labels[row, : len(item["labels"])] = item["labels"]
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels,
                                 "num_bytes": torch.tensor([i["num_bytes"] for i in items])}
        for key in ("pixels", "features"):
            if key in items[0]:
                batch[key] = torch.stack([i[key] for i in items])
        for key in ("prompt", "references", "image_id", "style"):
            batch[key] = [i[key] for i in items]
        return batch

    return join
