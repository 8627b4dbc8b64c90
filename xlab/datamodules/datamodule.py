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
from xlab.datamodules.sections import DEFAULT_SECTION_BYTES
from xlab.datamodules.sources import build_source
from xlab.datamodules.splits import SPLITS, check_fractions
from xlab.datamodules.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_bytes
from xlab.errors import XLabError

CACHE_FORMAT = 2  # bump when the folder layout or encoding changes, so old caches are not trusted


class XLabDataModule(L.LightningDataModule):
    """Language-modelling data from one or more sources.

    Args:
        sources: Where documents come from, each a dict with a `kind`: `embedded` (CPython's
            documentation, no network), `text_folder` (path, glob), `jsonl` (path, glob,
            text_field, id_field), `huggingface` (name/config or path, split, text_field, group).
        cache_dir: Root of the cache (default $XLAB_CACHE or ~/.cache/xlab).
        vocab_size: Tokenizer vocabulary size, special and byte tokens included.
        tokenizer_type: bpe or unigram (sentencepiece).
        tokenizer_path: A local Hugging Face tokenizer folder (tokenizer.json, as save_pretrained
            writes it) to use instead of training sentencepiece: the pretrained model's own
            tokenizer when fine-tuning. vocab_size and tokenizer_type are then unused.
        special_tokens: Extra tokens kept whole, e.g. speaker tags (added to either kind).
        split_fractions: train / val / test / predict shares of the documents.
        split_salt: Changes which documents land in which split.
        max_documents: Read at most this many documents (quick trials on big corpora).
        max_len: Block size in tokens (linked from the model's max_len).
        stride: Step between training blocks (default max_len: no overlap).
        batch_size, eval_batch_size: Per-device batch sizes for training and evaluation.
        num_workers: DataLoader worker processes.
        reprocess: Rebuild the cache even if it exists (also REPROCESS=1 in the environment).
        section_bytes: Documents longer than this (UTF-8 bytes) are cut into sections at paragraph
            boundaries before the split, so that no single document decides a split's volume;
            null keeps every document whole.
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
        tokenizer_path: str | None = None,
        section_bytes: int | None = DEFAULT_SECTION_BYTES,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sources = [build_source(spec) for spec in (sources or [{"kind": "embedded"}])]
        self.fractions = check_fractions(split_fractions)
        if max_len < 1 or (stride is not None and stride < 1):
            raise XLabError(f"data max_len={max_len} and stride={stride} must be positive.")
        if section_bytes is not None and section_bytes < 1:
            raise XLabError(f"data section_bytes={section_bytes} must be positive, or null to keep documents whole.")
        self._tokenizer: Tokenizer | None = None
        self._token_bytes: np.ndarray | None = None
        self._built = False
        self._folder: Path | None = None
        self.tokens: dict[str, np.ndarray] = {}

    # --- the cache ----------------------------------------------------------------------------
    def tokenizer_settings(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.get("tokenizer_path"):
            from xlab.datamodules.pretrained_tokenizer import tokenizer_folder_fingerprint

            return {"pretrained": tokenizer_folder_fingerprint(hp.tokenizer_path),
                    "extra_special_tokens": list(hp.special_tokens or [])}
        return {"vocab_size": hp.vocab_size, "model_type": hp.tokenizer_type,
                "extra_special_tokens": list(hp.special_tokens or [])}

    def make_tokenizer(self, train_texts: Iterable[str]):
        """The tokenizer the settings ask for: sentencepiece trained on `train_texts` (the train
        split's documents), or the pretrained one of `tokenizer_path`, which ignores them. The
        special tokens of `tokenizer_settings()` are added to either kind."""
        settings = self.tokenizer_settings()
        if self.hparams.get("tokenizer_path"):
            from xlab.datamodules.pretrained_tokenizer import PretrainedTokenizer

            return PretrainedTokenizer.from_folder(self.hparams.tokenizer_path, settings["extra_special_tokens"])
        lines = (line for text in train_texts for line in text.splitlines())
        return Tokenizer.train(lines, **settings)

    @property
    def cache_folder(self) -> Path:
        if self._folder is None:
            self._folder = self._cache_folder()
        return self._folder

    # The cache's subfolder under cache_dir: each kind of data module keeps its own.
    cache_kind = "corpus"

    def cache_settings(self) -> dict[str, Any]:
        """Every setting that changes what the cache holds: its hash names the cache folder."""
        return {"format": CACHE_FORMAT, "sources": [s.fingerprint() for s in self.sources],
                "fractions": self.fractions, "salt": self.hparams.split_salt,
                "max_documents": self.hparams.max_documents, "tokenizer": self.tokenizer_settings(),
                "section_bytes": self.hparams.section_bytes}

    def _cache_folder(self) -> Path:
        root = Path(os.path.expanduser(self.hparams.cache_dir)) if self.hparams.cache_dir else default_cache_root()
        return root / self.cache_kind / settings_key(self.cache_settings())

    def prepare_data(self) -> None:
        """Build the cache if needed: once per process, whichever hook asks first."""
        if self._built:
            return
        # Processes launched by rank 0 (LOCAL_RANK > 0) reuse what it rebuilt instead of rebuilding again.
        rebuild = (self.hparams.reprocess or os.environ.get("REPROCESS") == "1") and int(os.environ.get("LOCAL_RANK", 0)) == 0
        folder = self.cache_folder

        def build(tmp: Path) -> None:
            print(f"xlab: building the {self.cache_kind} cache {folder} ...", flush=True)
            self.build_cache_(tmp)

        build_once_(folder, build, rebuild=rebuild)
        self._built = True

    def build_cache_(self, tmp: Path) -> None:
        """Write the cache's files into `tmp`, which is renamed into place when this returns."""
        build_encoded_corpus_(tmp, self.sources, self.fractions, self.hparams.split_salt,
                              self.make_tokenizer, self.hparams.max_documents,
                              section_bytes=self.hparams.section_bytes)

    @property
    def meta(self) -> dict[str, Any]:
        self.prepare_data()
        return json.loads((self.cache_folder / "meta.json").read_text())

    # --- the tokenizer and what the model needs from it ---------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.prepare_data()
            self._use_tokenizer(load_tokenizer(self.cache_folder / "tokenizer.model"))
        return self._tokenizer

    def _use_tokenizer(self, tokenizer) -> None:
        self._tokenizer, self._token_bytes = tokenizer, None
        if self.hparams.get("tokenizer_path"):
            # A pretrained tokenizer decides the size; the sentencepiece setting would otherwise
            # contradict the model's vocab_size where Lightning merges both modules' hparams
            # (the initial copy is the one loggers receive).
            for hparams in (self.hparams, getattr(self, "_hparams_initial", None)):
                if hparams is not None:
                    hparams["vocab_size"] = len(tokenizer)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    # Special ids come from the tokenizer: fixed for sentencepiece, the folder's for a pretrained one.
    @property
    def sos_id(self) -> int:
        return self.tokenizer.sos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def added_tokens(self) -> int:
        """Ids the special tokens added to a pretrained tokenizer (0 for sentencepiece, which is
        trained with them): a pretrained model grows its embedding by exactly this many rows."""
        return int(getattr(self.tokenizer, "added_tokens", 0))

    @property
    def token_bytes(self) -> np.ndarray:
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes()
        return self._token_bytes

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer_model": self.tokenizer.to_bytes()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = tokenizer_from_bytes(state["tokenizer_model"])
        if self.tokens and self._tokenizer is not None and restored.to_bytes() != self._tokenizer.to_bytes():
            raise XLabError("the checkpoint's tokenizer differs from the one that encoded this data: "
                            "use the data settings the checkpoint was trained with.")
        self._use_tokenizer(restored)

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
        return self._loader(windows, self.eval_batch_size, collate_fn=pad_collate(self.pad_id))
