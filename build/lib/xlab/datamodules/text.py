"""XLabDataModule: text documents -> document split -> tokenizer -> token memmaps -> blocks.

The text-corpus module on the shared `DataModule` (cache, split, tokenizer, loaders): its sources
are read and cut into sections, split by document, encoded into one token memmap per split, and
served as fixed blocks (training, validation, test) or per-document windows (predict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from xlab.common.errors import XLabError
from xlab.datamodules.base import DataModule
from xlab.datamodules.datasets import BlockDataset, DocumentWindows, pad_collate
from xlab.datamodules.encode import build_encoded_corpus_, open_tokens
from xlab.datamodules.sections import DEFAULT_SECTION_BYTES
from xlab.datamodules.sources import build_source
from xlab.datamodules.split_report import report_splits
from xlab.datamodules.splits import SPLITS

CACHE_FORMAT = 2  # bump when the folder layout or encoding changes, so old caches are not trusted


class XLabDataModule(DataModule):
    """Language-modelling data from one or more sources; the settings every data module shares
    (vocab_size, tokenizer_type, tokenizer_path, special_tokens, split_fractions, split_salt,
    max_documents, max_len, batch sizes, num_workers, cache_dir, reprocess) are `DataModule`'s.

    Args:
        sources: Where documents come from, each a dict with a `kind`: `embedded` (CPython's
            documentation, no network), `text_folder` (path, glob), `jsonl` (path, glob,
            text_field, id_field), `huggingface` (name/config or path, split, text_field, group),
            `recall` (a synthetic task that asks about facts seen earlier).
        stride: Step between training blocks (default max_len: no overlap).
        section_bytes: Documents longer than this (UTF-8 bytes) are cut into sections at paragraph
            boundaries before the split, so that no single document decides a split's volume;
            null keeps every document whole.
    """

    cache_kind = "corpus"

    def __init__(self, sources: list[dict[str, Any]] | None = None, stride: int | None = None,
                 section_bytes: int | None = DEFAULT_SECTION_BYTES, **kwargs: Any):
        super().__init__(**kwargs)  # its save_hyperparameters() records these arguments too
        self.sources = [build_source(spec) for spec in (sources or [{"kind": "embedded"}])]
        if stride is not None and stride < 1:
            raise XLabError(f"data stride={stride} must be positive (or null: max_len).")
        if section_bytes is not None and section_bytes < 1:
            raise XLabError(f"data section_bytes={section_bytes} must be positive, or null to keep documents whole.")
        self.tokens: dict[str, np.ndarray] = {}

    # --- the cache ----------------------------------------------------------------------------
    def cache_settings(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "sources": [s.fingerprint() for s in self.sources],
                "fractions": self.fractions, "salt": self.hparams.split_salt,
                "max_documents": self.hparams.max_documents, "tokenizer": self.tokenizer_settings(),
                "section_bytes": self.hparams.section_bytes}

    def build_cache_(self, tmp: Path) -> None:
        build_encoded_corpus_(tmp, self.sources, self.fractions, self.hparams.split_salt,
                              self.make_tokenizer, self.hparams.max_documents,
                              section_bytes=self.hparams.section_bytes)

    def report(self) -> None:
        super().report()
        if not self.built_now:
            meta = self.meta
            report_splits(meta["splits"], self.fractions, meta.get("sections"))

    def _opened(self) -> bool:
        return bool(self.tokens)

    # --- splits -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        dtype = np.dtype(self.meta["dtype"])
        for split in SPLITS:
            self.tokens[split] = open_tokens(self.cache_folder / f"{split}.bin", dtype)

    def document_ids(self, split: str) -> list[str]:
        return (self.cache_folder / f"{split}.ids.txt").read_text(encoding="utf-8").splitlines()

    def document_offsets(self, split: str) -> np.ndarray:
        return np.load(self.cache_folder / f"{split}.offsets.npy")

    def block_tokens(self, split: str) -> np.ndarray:
        """The split's tokens, once it is known to hold at least one block."""
        max_len = self.hparams.max_len
        tokens = self.tokens[split]
        if len(tokens) < max_len + 1:
            raise XLabError(f"the {split} split has {len(tokens)} tokens, fewer than max_len + 1 = {max_len + 1}: "
                            "lower the model's max_len, add data, or raise that split's fraction.")
        return tokens

    def blocks(self, split: str, stride: int | None = None) -> BlockDataset:
        max_len = self.hparams.max_len
        return BlockDataset(self.block_tokens(split), max_len, stride or max_len, self.token_bytes)

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.blocks("train", self.hparams.stride), True, self.hparams.batch_size,
                                  drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.blocks("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.blocks("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        windows = DocumentWindows(self.tokens["predict"], self.document_offsets("predict"),
                                  self.hparams.max_len, self.token_bytes)
        if len(windows) == 0:
            raise XLabError("the predict split is empty: give it a share in data.split_fractions.")
        return self._loader(windows, self.eval_batch_size, collate_fn=pad_collate(self.pad_id))
