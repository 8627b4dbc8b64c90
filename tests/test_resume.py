"""Resuming from a mid-epoch checkpoint continues exactly: the same batches in the same order, so
the same per-step losses as the uninterrupted run (and, for MemoryGPT2, the same memory).

Epochs are cut to EPOCH steps, so the runs cross epoch boundaries: a checkpoint in the second
epoch must resume that epoch's own order, not the first one's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import TOKENIZER_SIZE
from xlab.callbacks import RandomState
from xlab.datamodules.resumable import EpochShuffle
from xlab.datamodules.sources.recall import RecallSource
from xlab.datamodules.streams import StreamDataModule
from xlab.datamodules.text import XLabDataModule
from xlab.memory.model import MemoryGPT2
from xlab.models import XLabModel

STEPS, EPOCH, SAVE_EVERY = 12, 5, 4  # checkpoints at steps 4 (epoch 0) and 8 (epoch 1)


class Losses(L.Callback):
    """Records each training step's loss and the first batch the run trains on."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


def fit(tmp_path: Path, model: L.LightningModule, data: L.LightningDataModule, ckpt_path: Path | None = None):
    losses = Losses()
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=SAVE_EVERY,
                                                save_top_k=-1, filename="{step}")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, limit_train_batches=EPOCH,
                        limit_val_batches=0, deterministic=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[losses, saver, RandomState()], default_root_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    return losses.losses, model


def assert_resumes_exactly(tmp_path: Path, make_model, data: L.LightningDataModule):
    whole, uninterrupted = fit(tmp_path, make_model(), data)
    assert sorted(whole) == list(range(1, STEPS + 1))
    for step in (SAVE_EVERY, 2 * SAVE_EVERY):
        ckpt = tmp_path / "ckpt" / f"step={step}.ckpt"
        rest, resumed = fit(tmp_path / f"from-{step}", make_model(), data, ckpt_path=ckpt)
        assert sorted(rest) == list(range(step + 1, STEPS + 1))
        torch.testing.assert_close(torch.tensor([rest[s] for s in sorted(rest)]),
                                   torch.tensor([whole[s] for s in sorted(rest)]), rtol=0, atol=1e-6)
    return uninterrupted, resumed


def test_xlab_model_resumes_mid_epoch_with_the_same_batches(tmp_path, corpus_dir):
    data = XLabDataModule(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], vocab_size=TOKENIZER_SIZE,
                          max_len=16, batch_size=4, cache_dir=str(tmp_path / "cache"))
    L.seed_everything(7)  # also the shuffle's seed

    def make_model():
        torch.manual_seed(0)
        return XLabModel(vocab_size=data.vocab_size, max_len=16, n_layer=1, n_head=2, n_embd=32, compile=False)

    assert_resumes_exactly(tmp_path, make_model, data)


def test_memory_gpt2_resumes_mid_epoch_with_the_same_batches_and_memory(tmp_path):
    source = {"kind": "recall", "documents": 300, "facts": 4, "keys": 64, "values": 8, "seed": 0}
    vocab = RecallSource(**{k: v for k, v in source.items() if k != "kind"}).tokenizer_vocab_size()
    data = StreamDataModule(sources=[source], cache_dir=str(tmp_path / "cache"), vocab_size=vocab, max_len=12,
                            batch_size=4, split_fractions=(0.8, 0.2, 0.0, 0.0))

    def make_model():
        torch.manual_seed(0)
        # reset_each_epoch off: the memory carries across the epoch boundary, so it must resume too.
        return MemoryGPT2(vocab_size=data.vocab_size, max_len=12, n_layer=1, n_head=2, n_embd=32, memory_size=500,
                          memory_device="cpu", reset_each_epoch=False)

    uninterrupted, resumed = assert_resumes_exactly(tmp_path, make_model, data)
    assert resumed.memory_digest() == uninterrupted.memory_digest()
    assert resumed.state_summary()["memory_entries"] > 0  # the memory holds what training wrote


def test_epoch_shuffle_is_a_function_of_seed_and_epoch_and_resumes_where_it_stopped():
    sampler = EpochShuffle(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert list(EpochShuffle(10, seed=3)) == first  # nothing but (seed, epoch) decides the order
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(10)) and second != first

    iterator = iter(sampler)
    served = [next(iterator) for _ in range(4)]
    state = sampler.state_dict()
    assert state == {"epoch": 1, "served": 4}
    fresh = EpochShuffle(10, seed=3)
    fresh.load_state_dict(state)
    assert served + list(fresh) == second
    fresh.load_state_dict({"epoch": 1, "served": 10})  # saved at the epoch's end: the next pass is whole
    assert list(fresh) == second


@pytest.mark.parametrize("make", ["blocks", "streams"])
def test_train_loaders_are_resumable_and_evaluation_loaders_plain(tmp_path, corpus_dir, make):
    cls = XLabDataModule if make == "blocks" else StreamDataModule
    data = cls(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], vocab_size=TOKENIZER_SIZE, max_len=16,
               batch_size=4, cache_dir=str(tmp_path / "cache"))
    data.setup("fit")
    train = data.train_dataloader()
    assert hasattr(train, "state_dict") and hasattr(train, "load_state_dict")
    assert not hasattr(data.val_dataloader(), "state_dict")
    batches = iter(train)
    for _ in range(3):
        next(batches)
    state = train.state_dict()
    expected = next(batches)["input_ids"]
    again = data.train_dataloader()
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))["input_ids"], expected)
