"""Shared fixtures: small corpora the tests write, an isolated cache, no network."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Tests never reach a hub: hub names must fail fast with the offline error users would see.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models gain nothing from threads, and two suites may share the cores

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "shi", "vo", "pe", "da", "gri", "zu", "an", "el", "or")
WORDS = sorted({a + b + c for a in SYLLABLES for b in SYLLABLES for c in ("", "n", "s", "ta")})[:600]


def write_corpus(folder: Path, documents: int = 200, seed: int = 0, words: int = 60) -> Path:
    """`documents` small text files of pseudo-sentences: enough documents that every split gets some."""
    rng = random.Random(seed)
    # A skewed word distribution, like real text: frequent words give the tokenizer merges to learn.
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        sentences = [" ".join(rng.choices(WORDS, weights, k=rng.randint(5, 12))).capitalize() + "."
                     for _ in range(words // 8)]
        (folder / f"doc{i:04d}.txt").write_text(f"Document {i}.\n" + " ".join(sentences) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XLAB_CACHE", str(tmp_path_factory.getbasetemp() / "xlab-cache"))
    monkeypatch.delenv("REPROCESS", raising=False)
