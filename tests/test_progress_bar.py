"""The training bar: step of max_steps, loss, val loss and tokens/s; no epoch count, no v_num."""

from __future__ import annotations

import io
import re
import sys

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from tests.helpers import xlab_data
from xlab.models import XLabModel
from xlab.progress_bar import StepProgressBar


def test_the_bar_counts_steps_and_shows_four_numbers_on_one_line(corpus_dir, tmp_path):
    data = xlab_data(corpus_dir, tmp_path)
    model = XLabModel(vocab_size=data.vocab_size, max_len=16, n_layer=1, n_head=2, n_embd=32)
    stream = io.StringIO()
    bar = StepProgressBar(console_kwargs={"file": stream, "force_terminal": True, "width": 100, "color_system": None})
    # max_epochs -1 (steps decide) and a logger with a version: what printed `Epoch 11/-2` and `v_num`.
    trainer = L.Trainer(max_steps=12, max_epochs=-1, val_check_interval=6, limit_val_batches=1, limit_train_batches=5, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, callbacks=[bar], logger=TensorBoardLogger(tmp_path / "runs"),
                        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, data)
    shown = stream.getvalue()
    assert "Epoch" not in shown and "v_num" not in shown
    assert re.search(r"step .* 12/12", shown)  # counts optimizer steps across the three epochs
    assert list(bar.get_metrics(trainer, model)) == ["loss", "val loss", "tok/s"]
    last = [line for line in shown.splitlines() if "12/12" in line][-1]
    assert re.search(r"loss: \d+\.\d{3} val loss: \d+\.\d{3} tok/s: [\d.]+k?", last), last
    assert bar.tokens_per_second() > 0


def test_xlab_fit_uses_it_on_a_terminal(tmp_path, corpus_dir, monkeypatch):
    from tests.helpers import CONF, tiny
    from xlab.cli import main

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    args = tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=2)
    cli = main(["fit", "-c", str(CONF / "defaults.yaml"), *args, "--trainer.enable_progress_bar", "true"])
    assert isinstance(cli.trainer.progress_bar_callback, StepProgressBar)
