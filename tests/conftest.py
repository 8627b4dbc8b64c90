"""Shared fixtures: small corpora the tests write, an isolated cache, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import write_corpus

# Tests never reach a hub: hub names must fail fast with the offline error users would see.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models gain nothing from threads, and two suites may share the cores

@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XLAB_CACHE", str(tmp_path_factory.getbasetemp() / "xlab-cache"))
    monkeypatch.delenv("REPROCESS", raising=False)
