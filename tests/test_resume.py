"""Resuming continues exactly: the same batches in the same order, so the same per-step losses as the
uninterrupted run (and, for MemoryGPT2, the same memory), from a checkpoint taken mid-epoch, from
the one a run writes when it reaches max_steps (to train longer) and from the one Lightning writes
when training raises; and training past the schedule a run started with never raises the rate
without saying so.

Epochs are cut to EPOCH steps, so the runs cross epoch boundaries: a checkpoint in the second
epoch must resume that epoch's own order, not the first one's.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import CONF, TOKENIZER_SIZE, StepLosses, StepRates, tiny
from xlab.callbacks import RandomState
from xlab.cli import main
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


# --- through the real CLI: the end-of-run checkpoint, the exception checkpoint, the schedule ---------
CLI_STEPS = 10


def cli_args(tmp_path: Path, tag: str, corpus_dir: Path, recipe: str, steps: int, *callbacks: dict) -> list[str]:
    """A recipe shrunk so that 10 steps cross an epoch boundary, with one schedule for every run."""
    source = ({"kind": "recall", "documents": 120, "facts": 4, "keys": 64, "values": 8, "seed": 0}
              if recipe == "memory" else {"kind": "text_folder", "path": str(corpus_dir)})
    args = ["-c", str(CONF / f"{'memory' if recipe == 'memory' else 'defaults'}.yaml"),
            *tiny(tmp_path / tag, [source], steps=steps),
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.limit_train_batches", "7",
            "--trainer.deterministic", "true", "--trainer.log_every_n_steps", "1",
            "--model.init_args.lr_decay_steps", str(CLI_STEPS), "--model.init_args.warmup_steps", "2",
            "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--trainer.callbacks", json.dumps([{"class_path": "tests.helpers.StepLosses"}, *callbacks])]
    if recipe == "memory":
        args += ["--model.init_args.memory_size", "200", "--model.init_args.memory_device", "cpu",
                 "--model.init_args.index_type", "flat", "--model.init_args.reset_each_epoch", "false",
                 "--data.init_args.vocab_size", str(RecallSource(**{k: v for k, v in source.items() if k != "kind"})
                                                    .tokenizer_vocab_size()),
                 "--data.init_args.split_fractions", "[0.8, 0.2, 0.0, 0.0]"]
    return args


def step_losses(cli) -> list[float]:
    return [float.fromhex(x) for x in next(c for c in cli.trainer.callbacks if isinstance(c, StepLosses)).losses]


@pytest.mark.parametrize("recipe", ["text", "memory"])
def test_resuming_from_the_end_of_a_run_or_an_exception_trains_as_if_never_stopped(tmp_path, corpus_dir, recipe):
    whole = step_losses(main(["fit", *cli_args(tmp_path, "whole", corpus_dir, recipe, CLI_STEPS)]))
    assert len(whole) == CLI_STEPS

    # A run that reached its max_steps (in the middle of its second epoch), then trained longer.
    short = cli_args(tmp_path, "short", corpus_dir, recipe, 9)
    first = step_losses(main(["fit", *short]))
    last = next((tmp_path / "short").rglob("last.ckpt"))
    longer = cli_args(tmp_path, "short", corpus_dir, recipe, CLI_STEPS)
    rest = step_losses(main(["fit", *longer, "--ckpt_path", str(last)]))
    assert first + rest == whole

    # A run that failed as step 6 began: Lightning saved a checkpoint on the exception.
    failing = cli_args(tmp_path, "failed", corpus_dir, recipe, CLI_STEPS,
                       {"class_path": "tests.helpers.FailAt", "init_args": {"step": 6}})
    with pytest.raises(RuntimeError, match="stopped on purpose"):
        main(["fit", *failing])
    saved = next((tmp_path / "failed").rglob("last.ckpt"))
    assert torch.load(saved, weights_only=True)["global_step"] == 5
    rest = step_losses(main(["fit", *cli_args(tmp_path, "failed", corpus_dir, recipe, CLI_STEPS),
                             "--ckpt_path", str(saved)]))
    assert rest == whole[5:]


def step_rates(cli) -> list[float]:
    return next(c for c in cli.trainer.callbacks if isinstance(c, StepRates)).rates


@pytest.mark.parametrize("extension", ["keep", "rewarm"])
def test_training_past_the_schedule_never_raises_the_rate_silently(tmp_path, corpus_dir, capsys, extension):
    rates = {"class_path": "tests.helpers.StepRates"}
    short = [*cli_args(tmp_path, "run", corpus_dir, "text", 6, rates), "--model.init_args.lr_decay_steps", "null"]
    first = main(["fit", *short])
    peak, floor = first.model.hparams.learning_rate, first.model.hparams.min_lr_ratio
    assert step_rates(first)[-1] == pytest.approx(peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 3 / 4))))
    last = next((tmp_path / "run").rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["lr_schedulers"][0]["lr_lambdas"][0]["total_steps"] == 6
    capsys.readouterr()
    longer = [*cli_args(tmp_path, "run", corpus_dir, "text", 12, rates), "--model.init_args.lr_decay_steps", "null",
              "--model.init_args.lr_extension", extension, "--ckpt_path", str(last)]
    seen = step_rates(main(["fit", *longer]))
    notice = capsys.readouterr().out
    assert "past its learning-rate schedule (cosine to step 6)" in notice and len(seen) == 6
    if extension == "keep":  # the rate the run ended its schedule on, never higher
        assert "stays at its final" in notice and seen == pytest.approx([peak * floor] * 6)
    else:  # a new warmup over warmup_steps (2), then cosine down to the new last step
        assert "warms up again over 2 steps" in notice
        assert seen[:2] == pytest.approx([peak / 2, peak]) and seen[2] > seen[3] > seen[-1] > peak * floor
