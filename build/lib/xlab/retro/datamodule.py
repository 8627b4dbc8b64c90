"""RetroDataModule: the corpus cache plus a RETRO retrieval database built from the train split.

    prepare_data   corpus cache (XLabDataModule), then the database of the TRAIN split into
                   <corpus cache>/retrieval/<key of the retrieval settings> (the library builds
                   step by step and resumes; its manifest, written last, marks it complete)
    train          the database's own sequences (max_len tokens of one document) with their
                   precomputed neighbours, never from the sequence's own document
    val / test     blocks of the split; each chunk's neighbours are searched in the database
                   once in setup (the splits share no document, so nothing is excluded)
    predict        per-document windows, neighbours searched per batch

Batches: input_ids (B, T), labels (B, T), num_bytes (B,) and retrieved (B, m, k, 2 * chunk_size)
with m = T / chunk_size. Ablations: retrieval "neighbours" | "random" (random database chunks) |
"off" (no `retrieved`: the model skips its cross-attention), and k.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import Dataset

from xlab.common.errors import XLabError
from xlab.common.tokenizer import IGNORE_INDEX, PAD_ID
from xlab.datamodules.cache import settings_key
from xlab.datamodules.datasets import BlockDataset, DocumentWindows, pad_collate
from xlab.datamodules.encode import open_tokens
from xlab.datamodules.text import XLabDataModule
from xlab.retro.database import RetrievalDatabase, build_retrieval_database_

Retrieval = Literal["neighbours", "random", "off"]


class RetroTrainDataset(Dataset):
    """Training sequence i of the database: its m chunks, next-token labels and neighbours."""

    def __init__(self, database, token_bytes: np.ndarray, retrieval: Retrieval, k: int, seed: int = 0):
        self.db, self.token_bytes, self.retrieval, self.k, self.seed = database, token_bytes, retrieval, k, seed
        self.m = database.seq_len // database.chunk_size

    def __len__(self) -> int:
        return self.db.n_sequences

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        db, m = self.db, self.m
        start = int(db.seq_starts[index])
        seq = np.asarray(db.chunks[start:start + m], dtype=np.int64).reshape(-1)  # (T,)
        # The label of the last token is the first token of the next chunk, if the document goes on.
        same_doc = start + m < len(db) and db.chunk_doc_ids[start + m] == db.chunk_doc_ids[start]
        following = int(db.chunks[start + m, 0]) if same_doc else db.pad_id
        labels = np.append(seq[1:], following)
        labels[labels == db.pad_id] = IGNORE_INDEX  # documents are padded to whole chunks
        item = {"input_ids": torch.from_numpy(seq), "labels": torch.from_numpy(labels),
                "num_bytes": torch.tensor(int(self.token_bytes[labels[labels != IGNORE_INDEX]].sum()))}
        if self.retrieval == "neighbours":
            # Precomputed: never from this document (the database excludes the query's document).
            item["retrieved"] = torch.from_numpy(db.neighbours(np.arange(start, start + m))[:, : self.k].astype(np.int64))
        elif self.retrieval == "random":
            item["retrieved"] = torch.from_numpy(_random(db, (m, self.k), self.seed * 1_000_003 + index))
        return item


class RetroEvalDataset(BlockDataset):
    """Non-overlapping blocks of an evaluation split with neighbour chunk ids searched up front."""

    def __init__(self, tokens: np.ndarray, block_size: int, token_bytes: np.ndarray, database,
                 retrieval: Retrieval, k: int, seed: int = 0):
        super().__init__(tokens, block_size, block_size, token_bytes)
        self.db, self.retrieval, self.k, self.seed = database, retrieval, k, seed
        L = database.chunk_size
        self.m = block_size // L
        self.ids = None
        if retrieval == "neighbours" and self.length:
            inputs = np.asarray(tokens[: self.length * block_size], dtype=np.int64)
            ids = [database.search_ids(inputs[r:r + 65536].reshape(-1, L), k) for r in range(0, len(inputs), 65536)]
            self.ids = np.concatenate(ids).reshape(self.length, self.m, k)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        if self.retrieval == "neighbours":
            item["retrieved"] = torch.from_numpy(self.db.tokens_of(self.ids[index]).astype(np.int64))
        elif self.retrieval == "random":
            item["retrieved"] = torch.from_numpy(_random(self.db, (self.m, self.k), self.seed * 1_000_003 + index))
        return item


def _random(database, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return database.tokens_of(rng.integers(0, len(database), size=shape)).astype(np.int64)


class RetroDataModule(XLabDataModule):
    """XLabDataModule plus a retrieval database over the train split (RETRO).

    Args (beyond XLabDataModule's):
        chunk_size: Tokens per chunk; must divide max_len and equal the model's chunk_size.
        k: Neighbours per chunk given to the model (1, 2, 4 for the ablation).
        retrieval: neighbours (real retrieval), random (random database chunks) or off (none).
        num_extra_neighbors: Extra candidates searched so that k remain after dropping the
            query's own document.
        embedder: Frozen chunk embedder spec: {"kind": "hashed", "dim": 256} (offline) or
            {"kind": "hf", "name_or_path": "bert-base-cased"} (as in the paper).
        index_factory: faiss index string (null: chosen to fit max_index_memory_usage).
        max_index_memory_usage: Memory budget of the index, e.g. "1G".
        database_dir: Where the database lives instead of the cache (./manage.py build-retrieval
            --out); built there if missing, and when present it must come from this corpus's train
            split and tokenizer.
        seed: Seed of the random-neighbours ablation.
    """

    def __init__(
        self,
        chunk_size: int = 16,
        k: int = 2,
        retrieval: Retrieval = "neighbours",
        num_extra_neighbors: int = 10,
        embedder: dict[str, Any] | None = None,
        index_factory: str | None = None,
        max_index_memory_usage: str = "1G",
        database_dir: str | None = None,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)  # its save_hyperparameters() records these arguments too
        if chunk_size < 1 or self.hparams.max_len % chunk_size:
            raise XLabError(f"data chunk_size={chunk_size} must divide max_len={self.hparams.max_len} "
                            "(the model's context): choose a chunk size that divides it.")
        if k < 1:
            raise XLabError(f"data k={k} must be at least 1 neighbour per chunk.")
        self.database = None

    # --- the database ---------------------------------------------------------------------------
    def retrieval_settings(self) -> dict[str, Any]:
        hp = self.hparams
        return {"chunk_size": hp.chunk_size, "k": hp.k, "num_extra_neighbors": hp.num_extra_neighbors,
                "embedder": hp.embedder or {"kind": "hashed"}, "index_factory": hp.index_factory,
                "max_index_memory_usage": hp.max_index_memory_usage, "seq_len": hp.max_len}

    @property
    def database_folder(self) -> Path:
        if self.hparams.database_dir:
            return Path(self.hparams.database_dir).expanduser()
        return self.cache_folder / "retrieval" / settings_key(self.retrieval_settings())

    def prepare_data(self) -> None:
        if self._built:
            return
        super().prepare_data()
        folder = self.database_folder
        if (folder / "manifest.json").exists():
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):  # the library locks too; this keeps ranks from all printing
            if (folder / "manifest.json").exists():
                return
            print(f"xlab: building the retrieval database {folder} ...", flush=True)
            s = self.retrieval_settings()
            tokens = open_tokens(self.cache_folder / "train.bin", np.dtype(self.meta["dtype"]))
            build_retrieval_database_(tokens, self.document_offsets("train"), folder, s["chunk_size"], s["embedder"],
                                      s["index_factory"], s["max_index_memory_usage"], s["k"],
                                      s["num_extra_neighbors"], self.tokenizer, progress=False, seq_len=s["seq_len"],
                                      pad_id=PAD_ID)

    def open_database(self) -> RetrievalDatabase:
        self.prepare_data()
        db = RetrievalDatabase(self.database_folder, tokenizer=self.tokenizer)
        hp = self.hparams
        if db.chunk_size != hp.chunk_size or db.seq_len != hp.max_len:
            raise XLabError(f"the retrieval database {db.out_dir} has chunk_size={db.chunk_size}, seq_len={db.seq_len}; "
                            f"the data asks for chunk_size={hp.chunk_size}, max_len={hp.max_len}: rebuild it.")
        if db.k < hp.k:
            raise XLabError(f"the retrieval database {db.out_dir} holds k={db.k} neighbours per chunk, "
                            f"fewer than data k={hp.k}: rebuild it with k >= {hp.k}.")
        if self.hparams.database_dir and db.manifest.get("input", {}).get("sha256") != self._train_signature():
            raise XLabError(f"the retrieval database {db.out_dir} was built from other tokens than this corpus's "
                            "train split (another tokenizer, corpus or split): rebuild it with these data settings.")
        found = db.manifest.get("neighbours", {})
        if found.get("missing_neighbours"):
            print(f"xlab: {found['missing_neighbours']:,} of {found['n'] * found['k']:,} neighbour slots in "
                  f"{db.out_dir} are empty ({found['short_rows']:,} chunks have fewer than k={found['k']} from other "
                  "documents); those rows see padding: raise data num_extra_neighbors or lower k.", flush=True)
        if len(db) == 0 or db.n_sequences == 0:
            raise XLabError(f"the retrieval database {db.out_dir} holds no training sequence: every train document "
                            f"is shorter than max_len={hp.max_len} tokens; lower max_len or use longer documents.")
        return db

    def _train_signature(self) -> str:
        # The same hash the database records of its input: the tokens, then the int64 offsets.
        digest = hashlib.sha256()
        tokens = self.tokens.get("train")
        digest.update(np.ascontiguousarray(tokens).tobytes())
        digest.update(np.ascontiguousarray(self.document_offsets("train"), dtype=np.int64).tobytes())
        return digest.hexdigest()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.database is None:
            self.database = self.open_database()
        self._eval: dict[str, RetroEvalDataset] = getattr(self, "_eval", {})

    def report(self) -> None:
        super().report()
        db = self.database if self.database is not None else self.open_database()
        sizes = db.manifest["sizes"]
        print(f"xlab: retrieval database {db.out_dir}")
        print(f"xlab:   {sizes['n_chunks']:,} chunks of {db.chunk_size} tokens from {sizes['n_docs']:,} documents, "
              f"{sizes['n_seqs']:,} training sequences of {db.seq_len} tokens")
        print(f"xlab:   embedder {db.manifest['embedder']['spec']['kind']} (dim {sizes['dim']}), "
              f"index {db.manifest['index']['factory']} ({sizes['index_bytes'] / 1e6:.1f} MB), k={db.k}", flush=True)

    def model_resources(self) -> dict[str, Any]:
        """The database: RetroModel records which one its weights were trained with, and checks it."""
        return {"retrieval_database": self.database}

    # --- datasets -------------------------------------------------------------------------------
    def _dataset(self, split: str) -> Dataset:
        hp = self.hparams
        if split == "train":
            return RetroTrainDataset(self.database, self.token_bytes, hp.retrieval, hp.k, hp.seed)
        if split not in self._eval:
            self._eval[split] = RetroEvalDataset(self.block_tokens(split), hp.max_len, self.token_bytes, self.database,
                                                 hp.retrieval, hp.k, hp.seed)
        return self._eval[split]

    def train_dataloader(self):
        return self._train_loader(self._dataset("train"), True, self.hparams.batch_size, drop_last=True)

    def val_dataloader(self):
        return self._loader(self._dataset("val"), self.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self._dataset("test"), self.eval_batch_size)

    def predict_dataloader(self):
        windows = DocumentWindows(self.tokens["predict"], self.document_offsets("predict"), self.hparams.max_len,
                                  self.token_bytes)
        if len(windows) == 0:
            raise XLabError("the predict split is empty: give it a share in data.split_fractions.")
        return self._loader(windows, self.eval_batch_size, collate_fn=self._predict_collate())

    def _predict_collate(self):
        pad, hp, db = pad_collate(PAD_ID), self.hparams, self.database

        def collate(items):
            batch = pad(items)
            B, T = batch["input_ids"].shape
            n, L = T // hp.chunk_size, hp.chunk_size
            if hp.retrieval == "off" or n == 0:
                return batch
            chunks = batch["input_ids"][:, : n * L].reshape(B * n, L).numpy()
            if hp.retrieval == "neighbours":
                found = db.search(chunks, hp.k).astype(np.int64)
            else:
                found = _random(db, (B * n, hp.k), hp.seed * 1_000_003 + int(batch["doc_index"][0]))
            batch["retrieved"] = torch.from_numpy(found).reshape(B, n, hp.k, 2 * L)
            return batch

        return collate
