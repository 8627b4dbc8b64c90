"""xlab/callbacks.py: last.ckpt is the final step, and the random state travels in checkpoints."""

from __future__ import annotations

import io
import random

import lightning as L
import numpy as np
import torch

from tests.helpers import xlab_data
from xlab.callbacks import RandomState, XLabCheckpoint
from xlab.models import XLabModel


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_state_comes_back_at_the_first_training_batch_and_loads_weights_only():
    saved = RandomState().state_dict()
    expected = draws()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    restored = RandomState()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    draws()  # what a trainer does between reading the checkpoint and training draws nothing that counts
    restored.on_train_batch_start(None, None, None, 0)
    assert draws() == expected
    after = draws()
    restored.on_train_batch_start(None, None, None, 1)  # only once: later batches keep drawing on
    assert draws() != after


def test_last_checkpoint_is_the_final_step_even_between_saves(tmp_path, corpus_dir):
    data = xlab_data(corpus_dir, tmp_path)
    data.prepare_data()
    model = XLabModel(vocab_size=data.vocab_size, max_len=16, n_layer=1, n_head=2, n_embd=32, compile=False)
    saver = XLabCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=-1)
    L.Trainer(accelerator="cpu", devices=1, max_steps=3, limit_val_batches=0, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[saver], default_root_dir=str(tmp_path)).fit(model, datamodule=data)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3
