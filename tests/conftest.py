"""Shared fixtures: small corpora the tests write, an isolated cache, no network; a tiny model trained
for two steps by a real Lightning Trainer (and by the real `xlab.py fit`), and its export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, TOKENIZER_SIZE, write_corpus

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


@pytest.fixture(scope="session")
def tiny_checkpoint(corpus_dir, tmp_path_factory) -> Path:
    """last.ckpt of two training steps, with a ModelCheckpoint monitoring val/loss."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from xlab.datamodules import XLabDataModule
    from xlab.models import XLabModel

    root = tmp_path_factory.mktemp("tiny")
    L.seed_everything(0, verbose=False)
    data = XLabDataModule(sources=[{"kind": "text_folder", "path": str(corpus_dir)}],
                          cache_dir=str(root / "cache"), vocab_size=TOKENIZER_SIZE, max_len=32, batch_size=4)
    model = XLabModel(vocab_size=data.vocab_size, max_len=32, n_layer=2, n_head=2, n_embd=32)
    checkpoints = ModelCheckpoint(dirpath=root / "ckpts", monitor="val/loss", save_last=True)
    trainer = L.Trainer(max_steps=2, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, callbacks=[checkpoints], enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, data)
    return root / "ckpts" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> Path:
    from xlab.interop.export import export_checkpoint_

    return export_checkpoint_(tiny_checkpoint, tmp_path_factory.mktemp("exports") / "tiny")


@pytest.fixture(scope="session")
def cli_checkpoint(corpus_dir, tmp_path_factory) -> Path:
    """last.ckpt written by the real `xlab.py fit` (LightningCLI: class path, XLab callbacks)."""
    import json

    from xlab.cli import main

    root = tmp_path_factory.mktemp("cli")
    main(["fit", "-c", str(ROOT / "conf" / "defaults.yaml"),
          "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
          "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
          "--trainer.logger.init_args.save_dir", str(root / "runs"),
          "--model.init_args.n_layer", "1", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "32",
          "--model.init_args.max_len", "16", "--model.init_args.compile", "false",
          "--data.init_args.sources", json.dumps([{"kind": "text_folder", "path": str(corpus_dir)}]),
          "--data.init_args.vocab_size", str(TOKENIZER_SIZE), "--data.init_args.cache_dir", str(root / "cache"),
          "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"])
    found = sorted((root / "runs").rglob("last.ckpt"))
    assert found, "xlab fit wrote no last.ckpt"
    return found[-1]
