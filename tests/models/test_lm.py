"""The LM step under a Trainer: the logger still gets each logged step's exact loss while the
progress bar reads a host copy (no device wait per step); `compile` takes the loss as well."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from tests.helpers import xlab_data
from xlab.models import XLabModel


class StepLosses(L.Callback):
    def __init__(self):
        self.losses, self.shown = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.shown.append(trainer.progress_bar_metrics["train/loss_step"])


def test_logged_losses_are_the_steps_and_the_bar_shows_host_copies(tmp_path, corpus_dir):
    data = xlab_data(corpus_dir, tmp_path)
    model = XLabModel(vocab_size=400, max_len=16, n_layer=1, n_head=2, n_embd=32, compile=False)
    seen = StepLosses()
    logger = CSVLogger(tmp_path, name="run")
    L.Trainer(accelerator="cpu", devices=1, max_steps=6, limit_val_batches=0, logger=logger, log_every_n_steps=2,
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
              callbacks=[seen]).fit(model, datamodule=data)
    rows = [line.split(",") for line in (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("train/loss_step")
    logged = {int(r[rows[0].index("step")]): float(r[column]) for r in rows[1:] if r[column]}
    # Lightning logs after steps 2, 4, 6 (0-based 1, 3, 5): each value is that step's loss.
    assert logged and all(abs(value - seen.losses[step]) < 1e-6 for step, value in logged.items())
    assert sorted(logged) == [1, 3, 5]
    # The bar: a fresh value on the logged steps, the last logged one in between.
    for step, shown in enumerate(seen.shown):
        source = step if step in logged else max([s for s in logged if s < step], default=0)
        assert abs(shown - seen.losses[source]) < 1e-6, (step, shown)
    assert isinstance(model._shown_loss, torch.Tensor) and model._shown_loss.device.type == "cpu"


def test_compile_takes_the_loss_too():
    model = XLabModel(vocab_size=48, max_len=16, n_layer=1, n_head=2, n_embd=32, compile=True)
    model.setup("fit")
    assert hasattr(model.forward, "_torchdynamo_orig_callable")
    assert hasattr(model._token_stats, "_torchdynamo_orig_callable")


def test_a_compiled_step_matches_the_eager_one():
    """`compile: true` must train the same model: the loss and every gradient of one step agree
    with eager mode to float tolerance (the kernels fuse differently, so not bit for bit)."""
    settings = dict(vocab_size=64, max_len=16, n_layer=1, n_head=2, n_embd=32, positions="rotary", norm="rmsnorm",
                    activation="swiglu", bias=False, tie_weights=True)
    models = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = XLabModel(**settings, compile=compile)
        model.setup("fit")
        models.append(model)
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "num_bytes": torch.full((2,), 40)}
    losses = []
    for model in models:
        loss, _ = model.loss_and_stats(batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, eager), compiled in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(compiled.grad, eager.grad, rtol=1e-4, atol=1e-5, msg=name)
