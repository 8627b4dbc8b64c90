"""XLabDataModule: sources -> document split -> sentencepiece -> token memmaps -> blocks.

The slow work (reading, tokenizer training, encoding) runs once per machine into a cache folder
keyed by every setting that changes its result; `setup()` only opens memmaps. The tokenizer is
the module's state, so it is saved in every checkpoint and `load_from_checkpoint` restores it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from xlab.datamodules.cache import build_once_, default_cache_root, settings_key
from xlab.datamodules.datasets import BlockDataset, DocumentWindows, pad_collate
from xlab.datamodules.encode import build_encoded_corpus_, open_tokens
from xlab.datamodules.resumable import resumable_loader, run_seed
from xlab.datamodules.sources import build_source
from xlab.datamodules.splits import SPLITS, check_fractions
from xlab.datamodules.tokenizer import EOS_ID, PAD_ID, SOS_ID, Tokenizer
from xlab.errors import XLabError

CACHE_FORMAT = 1  # bump when the folder layout or encoding changes, so old caches are not trusted


class XLabDataModule(L.LightningDataModule):
    """Language-modelling data from one or more sources.

    Args:
        sources: Where documents come from, each a dict with a `kind`: `embedded` (CPython's
            documentation, no network), `text_folder` (path, glob), `jsonl` (path, glob,
            text_field, id_field), `huggingface` (name/config or path, split, text_field, group).
        cache_dir: Root of the cache (default $XLAB_CACHE or ~/.cache/xlab).
        vocab_size: Tokenizer vocabulary size, special and byte tokens included.
        tokenizer_type: bpe or unigram (sentencepiece).
        special_tokens: Extra tokens kept whole, e.g. speaker tags.
        split_fractions: train / val / test / predict shares of the documents.
        split_salt: Changes which documents land in which split.
        max_documents: Read at most this many documents (quick trials on big corpora).
        max_len: Block size in tokens (linked from the model's max_len).
        stride: Step between training blocks (default max_len: no overlap).
        batch_size, eval_batch_size: Per-device batch sizes for training and evaluation.
        num_workers: DataLoader worker processes.
        reprocess: Rebuild the cache even if it exists (also REPROCESS=1 in the environment).
    """

    def __init__(
        self,
        sources: list[dict[str, Any]] | None = None,
        cache_dir: str | None = None,
        vocab_size: int = 4096,
        tokenizer_type: Literal["bpe", "unigram"] = "bpe",
        special_tokens: list[str] | None = None,
        split_fractions: tuple[float, float, float, float] = (0.9, 0.05, 0.025, 0.025),
        split_salt: int = 0,
        max_documents: int | None = None,
        max_len: int = 256,
        stride: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        reprocess: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sources = [build_source(spec) for spec in (sources or [{"kind": "embedded"}])]
        self.fractions = check_fractions(split_fractions)
        if max_len < 1 or (stride is not None and stride < 1):
            raise XLabError(f"data max_len={max_len} and stride={stride} must be positive.")
        self._tokenizer: Tokenizer | None = None
        self._token_bytes: np.ndarray | None = None
        self._built = False
        self._folder: Path | None = None
        self.tokens: dict[str, np.ndarray] = {}

    # --- the cache ----------------------------------------------------------------------------
    def tokenizer_settings(self) -> dict[str, Any]:
        hp = self.hparams
        return {"vocab_size": hp.vocab_size, "model_type": hp.tokenizer_type,
                "extra_special_tokens": list(hp.special_tokens or [])}

    def make_tokenizer(self, train_texts: Iterable[str]) -> Tokenizer:
        """The tokenizer the settings ask for, trained on `train_texts` (the train split only)."""
        return Tokenizer.train(train_texts, **self.tokenizer_settings())

    @property
    def cache_folder(self) -> Path:
        if self._folder is None:
            self._folder = self._cache_folder()
        return self._folder

    def _cache_folder(self) -> Path:
        settings = {"format": CACHE_FORMAT, "sources": [s.fingerprint() for s in self.sources],
                    "fractions": self.fractions, "salt": self.hparams.split_salt,
                    "max_documents": self.hparams.max_documents, "tokenizer": self.tokenizer_settings()}
        root = Path(os.path.expanduser(self.hparams.cache_dir)) if self.hparams.cache_dir else default_cache_root()
        return root / "corpus" / settings_key(settings)

    def prepare_data(self) -> None:
        """Build the cache if needed: once per process, whichever hook asks first."""
        if self._built:
            return
        # Processes launched by rank 0 (LOCAL_RANK > 0) reuse what it rebuilt instead of rebuilding again.
        rebuild = (self.hparams.reprocess or os.environ.get("REPROCESS") == "1") and int(os.environ.get("LOCAL_RANK", 0)) == 0
        folder = self.cache_folder

        def build(tmp: Path) -> None:
            print(f"xlab: building the corpus cache {folder} ...", flush=True)
            build_encoded_corpus_(tmp, self.sources, self.fractions, self.hparams.split_salt,
                                  self.tokenizer_settings(), self.hparams.max_documents)

        build_once_(folder, build, rebuild=rebuild)
        self._built = True

    @property
    def meta(self) -> dict[str, Any]:
        self.prepare_data()
        return json.loads((self.cache_folder / "meta.json").read_text())

    # --- the tokenizer and what the model needs from it ---------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.prepare_data()
            self._tokenizer = Tokenizer.load(self.cache_folder / "tokenizer.model")
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    sos_id, eos_id, pad_id = SOS_ID, EOS_ID, PAD_ID

    @property
    def token_bytes(self) -> np.ndarray:
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes()
        return self._token_bytes

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer_model": self.tokenizer.to_bytes()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = Tokenizer(state["tokenizer_model"])
        if self.tokens and self._tokenizer is not None and restored.to_bytes() != self._tokenizer.to_bytes():
            raise XLabError("the checkpoint's tokenizer differs from the one that encoded this data: "
                            "use the data settings the checkpoint was trained with.")
        self._tokenizer, self._token_bytes = restored, None

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

    def _loader_settings(self) -> dict[str, Any]:
        workers = self.hparams.num_workers
        # A loader's own generator seeds its workers, so starting an epoch draws nothing from the
        # global generator and a resumed run's random numbers stay those of the uninterrupted one.
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available(),
                "generator": torch.Generator().manual_seed(run_seed())}

    def _loader(self, dataset, batch_size: int | None, **kwargs) -> DataLoader:
        """An evaluation loader: in order, never resumed mid-way."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **self._loader_settings(), **kwargs)

    def _train_loader(self, dataset, shuffle: bool, batch_size: int | None, **kwargs) -> StatefulDataLoader:
        """The train loader: a checkpoint taken mid-epoch resumes at the next batch of the same order."""
        return resumable_loader(dataset, shuffle, batch_size, **self._loader_settings(), **kwargs)

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

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
        return self._loader(windows, self.eval_batch_size, collate_fn=pad_collate(PAD_ID))
