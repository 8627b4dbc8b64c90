"""The slow, once-per-machine pass: read sources, train the tokenizer, encode splits to memmaps.

Two streaming passes over the sources (one to train the tokenizer on train documents, one to
encode), so memory does not grow with the corpus. Per split the folder holds:
`{split}.bin` (token ids, documents as sos + text + eos, concatenated), `{split}.offsets.npy`
(n_docs + 1 starts), `{split}.ids.txt` (document ids); plus `tokenizer.model` and `meta.json`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlab.common.errors import XLabError
from xlab.common.tokenizer import Tokenizer
from xlab.datamodules.cache import COMPLETE
from xlab.datamodules.progress import BuildProgress, Step
from xlab.datamodules.sections import sectioned
from xlab.datamodules.sources import Document, Source
from xlab.datamodules.split_report import report_splits
from xlab.datamodules.splits import SPLITS, split_of

ENCODE_BATCH = 256


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def documents(sources: Sequence[Source], max_documents: int | None = None) -> Iterator[Document]:
    count = 0
    for source in sources:
        for doc in source:
            if max_documents is not None and count >= max_documents:
                return
            count += 1
            yield doc


def build_encoded_corpus_(out: Path, sources: Sequence[Source], fractions: Sequence[float], salt: int,
                          make_tokenizer: Callable[[Iterable[str]], Any],
                          max_documents: int | None = None, section_bytes: int | None = None,
                          progress: BuildProgress | None = None) -> None:
    """`make_tokenizer(train_texts)` returns the tokenizer (a data module's `make_tokenizer`).
    section_bytes: documents longer than this are cut into sections before the split (see
    sections.py); progress: how each step reports (default: bars on a terminal, else log lines)."""
    with progress or BuildProgress() as shown:
        _build_encoded_corpus_(out, sources, fractions, salt, make_tokenizer, max_documents, section_bytes, shown)


def _build_encoded_corpus_(out: Path, sources: Sequence[Source], fractions: Sequence[float], salt: int,
                           make_tokenizer: Callable[[Iterable[str]], Any], max_documents: int | None,
                           section_bytes: int | None, progress: BuildProgress) -> None:
    started = time.time()
    counts = dict.fromkeys(SPLITS, 0)
    sections = {"section_bytes": section_bytes or 0, "documents_cut": 0, "sections": 0}
    reading = progress.step("reading + tokenizer")

    def corpus(stats: dict[str, int] | None = None) -> Iterator[Document]:
        return sectioned(documents(sources, max_documents), section_bytes, stats)

    def train_texts() -> Iterator[str]:
        for doc in corpus(sections):
            split = split_of(doc.id, fractions, salt)
            counts[split] += 1
            reading.update(1, len(doc.text.encode("utf-8")))
            if split == "train":
                yield doc.text
        reading.describe("training tokenizer")

    texts = train_texts()
    tokenizer = make_tokenizer(texts)
    deque(texts, maxlen=0)  # a pretrained tokenizer reads nothing, but every split must be counted
    reading.finish()
    _check_counts(counts, fractions)
    tokenizer.save_(out / "tokenizer.model")

    dtype = token_dtype(len(tokenizer))
    meta: dict[str, Any] = {"splits": {}, "vocab_size": len(tokenizer), "dtype": dtype.name}
    writers = {s: _SplitWriter(out, s, dtype, tokenizer.sos_id, tokenizer.eos_id) for s in SPLITS}
    encoding = progress.step("encoding", total_items=reading.items, total_bytes=reading.bytes)
    batch: list[Document] = []
    for doc in corpus():
        batch.append(doc)
        if len(batch) == ENCODE_BATCH:
            _encode_batch(batch, tokenizer, writers, fractions, salt)
            encoding.update(len(batch), sum(len(d.text.encode("utf-8")) for d in batch))
            batch = []
    _encode_batch(batch, tokenizer, writers, fractions, salt)
    encoding.update(len(batch), sum(len(d.text.encode("utf-8")) for d in batch))
    encoding.finish()
    for split, writer in writers.items():
        meta["splits"][split] = writer.close()

    train_size = (out / "train.bin").stat().st_size
    baseline = progress.step("unigram baseline", unit="tokens", total_items=train_size // dtype.itemsize,
                             total_bytes=train_size)
    meta["unigram_loss"] = unigram_baseline(out, dtype, len(tokenizer), baseline)
    baseline.finish()
    report_splits(meta["splits"], fractions, sections)  # adds each split's fraction and byte share
    meta["sections"] = sections
    meta["build_seconds"] = round(time.time() - started, 2)
    (out / COMPLETE).write_text(json.dumps(meta, indent=2))


def _check_counts(counts: dict[str, int], fractions: Sequence[float]) -> None:
    total = sum(counts.values())
    if total == 0:
        raise XLabError("the corpus is empty: the configured sources yielded no documents; check data.sources.")
    for split, fraction in zip(SPLITS, fractions):
        if fraction > 0 and counts[split] == 0:
            raise XLabError(f"split {split!r} got none of the corpus's {total} documents: add documents "
                            "(the split is by document) or change data.split_fractions.")


def _encode_batch(batch: list[Document], tokenizer: Tokenizer, writers: dict, fractions, salt) -> None:
    if not batch:
        return
    encoded = tokenizer.encode_batch([d.text for d in batch])
    for doc, ids in zip(batch, encoded):
        writers[split_of(doc.id, fractions, salt)].add(doc, ids)


class _SplitWriter:
    """Appends documents to one split's files, keeping only offsets in memory."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, sos_id: int, eos_id: int):
        self.out, self.split, self.dtype = out, split, dtype
        self.sos_id, self.eos_id = sos_id, eos_id
        self.tokens = open(out / f"{split}.bin", "wb")
        self.ids = open(out / f"{split}.ids.txt", "w", encoding="utf-8")
        self.offsets, self.num_bytes = [0], 0

    def add(self, doc: Document, ids: list[int]) -> None:
        row = np.asarray([self.sos_id, *ids, self.eos_id], dtype=self.dtype)
        self.tokens.write(row.tobytes())
        self.offsets.append(self.offsets[-1] + len(row))
        self.ids.write(doc.id.replace("\n", " ") + "\n")
        self.num_bytes += len(doc.text.encode("utf-8"))

    def close(self) -> dict[str, int]:
        self.tokens.close()
        self.ids.close()
        np.save(self.out / f"{self.split}.offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        return {"documents": len(self.offsets) - 1, "tokens": self.offsets[-1], "bytes": self.num_bytes}


def unigram_baseline(out: Path, dtype: np.dtype, vocab_size: int, progress: Step | None = None) -> float | None:
    """Cross-entropy (nats/token) of val targets under the train split's smoothed unigram.

    The loss a model reaches by learning token frequencies alone; a trained LM must beat it.
    """
    train, val = (open_tokens(out / f"{s}.bin", dtype) for s in ("train", "val"))
    if len(val) < 2:
        return None
    counts = np.ones(vocab_size, dtype=np.float64)  # add-one smoothing
    for start in range(0, len(train), 1 << 24):  # in slices: memory stays flat on large corpora
        piece = train[start:start + (1 << 24)]
        counts += np.bincount(piece, minlength=vocab_size)
        if progress is not None:
            progress.update(len(piece), piece.nbytes)
    log_p = np.log(counts / counts.sum())
    total = sum(float(log_p[val[s:s + (1 << 24)]].sum()) for s in range(1, len(val), 1 << 24))
    return -total / (len(val) - 1)


def open_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    """A read-only memmap of a token file (an empty array for an empty file, which mmap refuses)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
