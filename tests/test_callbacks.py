"""xlab/callbacks.py: last.ckpt is the final step, the random state travels in checkpoints, and
GenerationMetrics runs the data module's evaluator at validation and test (never in the sanity
check) and logs what it computes as {stage}/{name}; data without an evaluator adds nothing."""

from __future__ import annotations

import io
import random

import lightning as L
import numpy as np
import torch

from tests.helpers import xlab_data
from xlab.callbacks import GenerationMetrics, RandomState, XLabCheckpoint
from xlab.datamodules import XLabDataModule
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


class CountingEvaluator:
    """An evaluator by the protocol (`update(model, batch)`, `compute(model, stage)`): it counts
    the batches and tokens it saw, and the model's greedy hits on them."""

    def __init__(self, calls: list):
        self.calls, self.batches, self.tokens, self.hits = calls, 0, 0, 0

    def update(self, model, batch) -> None:
        assert not model.training  # it runs inside the evaluation loop
        self.calls.append(("update", int(batch["input_ids"].sum())))
        self.batches += 1
        self.tokens += batch["input_ids"].numel()
        with torch.no_grad():
            self.hits += int((model(batch["input_ids"]).argmax(-1) == batch["labels"]).sum())

    def compute(self, model, stage: str) -> dict[str, float]:
        self.calls.append(("compute", stage))
        return {"batches": float(self.batches), "tokens": float(self.tokens), "hits": float(self.hits)}


class EvaluatedData(XLabDataModule):
    """The text data module with an evaluator, and a record of when the callback asked for one."""

    calls: list = []

    def generation_evaluator(self, model):
        self.calls.append(("offer", model.trainer.state.stage.value))
        return CountingEvaluator(self.calls)


def expected_counts(model, loader, batches: int) -> dict[str, float]:
    counted = {"batches": 0.0, "tokens": 0.0, "hits": 0.0}
    with torch.no_grad():
        for batch, _ in zip(loader, range(batches)):
            counted["batches"] += 1
            counted["tokens"] += batch["input_ids"].numel()
            counted["hits"] += int((model(batch["input_ids"]).argmax(-1) == batch["labels"]).sum())
    return counted


def evaluation_trainer(tmp_path, **settings) -> L.Trainer:
    return L.Trainer(**{**dict(accelerator="cpu", devices=1, max_steps=2, val_check_interval=2, limit_val_batches=2,
                               limit_test_batches=3, num_sanity_val_steps=2, logger=False, enable_progress_bar=False,
                               enable_model_summary=False, enable_checkpointing=False, callbacks=[GenerationMetrics()],
                               default_root_dir=str(tmp_path)), **settings})


def test_generation_metrics_run_the_data_modules_evaluator_and_log_its_numbers(tmp_path, corpus_dir):
    settings = dict(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], cache_dir=str(tmp_path / "cache"),
                    vocab_size=400, max_len=16, batch_size=4)
    data = EvaluatedData(**settings)
    data.calls = calls = []
    model = XLabModel(vocab_size=400, max_len=16, n_layer=1, n_head=2, n_embd=32)
    trainer = evaluation_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    # Two sanity batches ran the loss, but the evaluator was neither asked for nor fed.
    assert [c[0] for c in calls] == ["offer", "update", "update", "compute"] and calls[0][1] == "validate"
    model.eval()
    expected = expected_counts(model, data.val_dataloader(), 2)
    sums = [int(batch["input_ids"].sum()) for batch, _ in zip(data.val_dataloader(), range(2))]
    assert calls == [("offer", "validate"), ("update", sums[0]), ("update", sums[1]), ("compute", "val")]
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {k: logged[f"val/{k}"] for k in expected} == expected and "val/loss" in logged
    assert {"val/batches", "val/tokens", "val/hits"} <= set(trainer.progress_bar_metrics)  # shown while training

    calls.clear()
    trainer.test(model, datamodule=data, verbose=False)
    assert [c[0] for c in calls] == ["offer", "update", "update", "update", "compute"]
    assert calls[0] == ("offer", "test") and calls[-1] == ("compute", "test")
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {k: logged[f"test/{k}"] for k in expected} == expected_counts(model, data.test_dataloader(), 3)


def test_data_without_an_evaluator_costs_nothing(tmp_path, corpus_dir):
    data = xlab_data(corpus_dir, tmp_path)
    model = XLabModel(vocab_size=data.vocab_size, max_len=16, n_layer=1, n_head=2, n_embd=32)
    callback = GenerationMetrics()
    trainer = evaluation_trainer(tmp_path, callbacks=[callback])
    trainer.fit(model, datamodule=data)
    assert callback._evaluator is None
    assert {k for k in trainer.callback_metrics if k.startswith("val/")} == {"val/loss", "val/accuracy",
                                                                             "val/perplexity", "val/bpb"}
    trainer = evaluation_trainer(tmp_path, callbacks=[callback])
    trainer.validate(model, dataloaders=data.val_dataloader(), verbose=False)  # no data module at all
    assert callback._evaluator is None and set(trainer.callback_metrics) == {"val/loss", "val/accuracy",
                                                                             "val/perplexity", "val/bpb"}
