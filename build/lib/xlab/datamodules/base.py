"""DataModule: what every XLab data module shares, whatever it reads.

A data module builds a cache once per machine (`prepare_data`: read, split, train or load the
tokenizer, encode), into a folder named by a hash of every setting that changes its contents;
`setup()` only opens what the cache holds. The tokenizer is the module's state, so it travels in
every checkpoint and `load_from_checkpoint` restores it.

A subclass says what it reads and how it is cut into examples:
    cache_kind        the subfolder of cache_dir its caches live in
    cache_settings()  every setting that changes what the cache holds (hashed into its name)
    build_cache_(tmp) write the cache's files, the tokenizer's `tokenizer.model` among them
    setup(), *_dataloader()
and may offer the model what it needs beyond batches (`model_resources`), the facts a front end
needs to generate as in training (`generation_facts`), and evaluation by generation at validation
and test (`generation_evaluator`, run by the `GenerationMetrics` callback).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from xlab.common.errors import XLabError
from xlab.common.pretrained_tokenizer import PretrainedTokenizer, tokenizer_folder_fingerprint
from xlab.common.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_bytes
from xlab.datamodules.cache import build_once_, default_cache_root, settings_key
from xlab.datamodules.resumable import resumable_loader, run_seed
from xlab.datamodules.splits import check_fractions


class DataModule(L.LightningDataModule, ABC):
    """The cache, the split, the tokenizer and the loaders every data module shares.

    Args:
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
        batch_size, eval_batch_size: Per-device batch sizes for training and evaluation.
        num_workers: DataLoader worker processes.
        reprocess: Rebuild the cache even if it exists (also REPROCESS=1 in the environment).
    """

    cache_kind = "data"

    def __init__(
        self,
        cache_dir: str | None = None,
        vocab_size: int = 4096,
        tokenizer_type: Literal["bpe", "unigram"] = "bpe",
        special_tokens: list[str] | None = None,
        split_fractions: tuple[float, float, float, float] = (0.9, 0.05, 0.025, 0.025),
        split_salt: int = 0,
        max_documents: int | None = None,
        max_len: int = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        reprocess: bool = False,
        tokenizer_path: str | None = None,
    ):
        super().__init__()
        # Collects the arguments of every __init__ in the chain, the subclass's included.
        self.save_hyperparameters()
        self.fractions = check_fractions(split_fractions)
        if max_len < 1:
            raise XLabError(f"data max_len={max_len} must be positive.")
        self._tokenizer: Tokenizer | PretrainedTokenizer | None = None
        self._token_bytes: np.ndarray | None = None
        self._built = False
        self.built_now = False
        self._folder: Path | None = None

    # --- what a subclass decides ----------------------------------------------------------------
    @abstractmethod
    def cache_settings(self) -> dict[str, Any]:
        """Every setting that changes what the cache holds: its hash names the cache folder."""

    @abstractmethod
    def build_cache_(self, tmp: Path) -> None:
        """Write the cache's files into `tmp`, which is renamed into place when this returns."""

    def model_resources(self) -> dict[str, Any]:
        """What the model is handed beyond batches when a Trainer runs (`LanguageModel.use_resource`)."""
        return {}

    def generation_facts(self) -> dict[str, Any]:
        """Facts, beyond the tokenizer, that generating as in training needs (saved in checkpoints and
        exports: the dialogue module's turn-end token); JSON values only."""
        return {}

    def report(self) -> None:
        """Print what the prepared cache holds (`manage.py prepare-data`); subclasses add their counts."""
        print(f"xlab: cache {self.cache_folder}", flush=True)

    def generation_evaluator(self, model) -> Any | None:
        """What scores `model` by generating at validation and test (None: nothing), with
        `update(model, batch)` per batch and `compute(model, stage) -> {name: value}` per epoch."""
        return None

    # --- the cache ------------------------------------------------------------------------------
    def tokenizer_settings(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.get("tokenizer_path"):
            return {"pretrained": tokenizer_folder_fingerprint(hp.tokenizer_path),
                    "extra_special_tokens": list(hp.special_tokens or [])}
        return {"vocab_size": hp.vocab_size, "model_type": hp.tokenizer_type,
                "extra_special_tokens": list(hp.special_tokens or [])}

    def make_tokenizer(self, train_texts: Iterable[str]) -> Tokenizer | PretrainedTokenizer:
        """The tokenizer the settings ask for: sentencepiece trained on `train_texts` (the train
        split's documents), or the pretrained one of `tokenizer_path`, which ignores them. The
        special tokens of `tokenizer_settings()` are added to either kind."""
        settings = self.tokenizer_settings()
        if self.hparams.get("tokenizer_path"):
            return PretrainedTokenizer.from_folder(self.hparams.tokenizer_path, settings["extra_special_tokens"])
        lines = (line for text in train_texts for line in text.splitlines())
        return Tokenizer.train(lines, **settings)

    @property
    def cache_folder(self) -> Path:
        if self._folder is None:
            root = Path(os.path.expanduser(self.hparams.cache_dir)) if self.hparams.cache_dir else default_cache_root()
            self._folder = root / self.cache_kind / settings_key(self.cache_settings())
        return self._folder

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
            self.built_now = True  # its build printed what it holds

        build_once_(folder, build, rebuild=rebuild)
        self._built = True

    @property
    def meta(self) -> dict[str, Any]:
        self.prepare_data()
        return json.loads((self.cache_folder / "meta.json").read_text())

    # --- the tokenizer and what the model needs from it ---------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | PretrainedTokenizer:
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
        return {"tokenizer_model": self.tokenizer.to_bytes(), "generation_facts": self.generation_facts()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = tokenizer_from_bytes(state["tokenizer_model"])
        if self._opened() and self._tokenizer is not None and restored.to_bytes() != self._tokenizer.to_bytes():
            raise XLabError("the checkpoint's tokenizer differs from the one that encoded this data: "
                            "use the data settings the checkpoint was trained with.")
        self._use_tokenizer(restored)

    def _opened(self) -> bool:
        """Whether `setup` has opened data encoded with the current tokenizer."""
        return False

    # --- loaders --------------------------------------------------------------------------------
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
